"""Training state: this rank's model chunk (built by :mod:`megatron_plm.models.build`) wrapped in
megatron-core DDP, its optimizer and its LR schedule."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from megatron_plm.models.build import build_model_chunk, effective_backend, precision_settings
from megatron_plm.models.config import ModelConfig
from megatron_plm.runtime.distributed import Runtime
from megatron_plm.training.config import OptimizerConfig


@dataclass
class TrainingState:
    """What a training step needs: this rank's model chunks, the optimizer, and the model config."""

    model: list  # megatron-core DistributedDataParallel chunks (one unless interleaved PP)
    optimizer: object  # megatron-core MegatronOptimizer
    transformer_config: object  # megatron-core TransformerConfig
    scheduler: object | None = None  # megatron-core OptimizerParamScheduler
    packed_sequences: bool = False
    """The attention backend takes packed (thd) batches: each microbatch is flattened to one row."""

    def unwrapped(self) -> list[torch.nn.Module]:
        return [chunk.module for chunk in self.model]


def build_scheduler(optimizer, optim_cfg: OptimizerConfig, train_iters: int):
    """megatron-core's LR scheduler: linear warm-up, then ``decay_style`` to ``min_lr`` at the last step."""
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    decay_steps = max(train_iters, optim_cfg.warmup_iters + 1)
    return OptimizerParamScheduler(
        optimizer,
        init_lr=0.0 if optim_cfg.warmup_iters else optim_cfg.lr,
        max_lr=optim_cfg.lr,
        min_lr=optim_cfg.min_lr,
        lr_warmup_steps=optim_cfg.warmup_iters,
        lr_decay_steps=decay_steps,
        lr_decay_style=optim_cfg.decay_style,
        start_wd=optim_cfg.weight_decay,
        end_wd=optim_cfg.weight_decay,
        wd_incr_steps=decay_steps,
        wd_incr_style="constant",
    )


def build_run(config, runtime: Runtime, *, allow_cpu_bf16: bool = False) -> TrainingState:
    """The model, optimizer and LR schedule of a run config (a :class:`~megatron_plm.training.config.TrainConfig`),
    as ``megatron-plm train`` builds them; benchmarks and tests call this too."""
    config, t = config.resolve(), config.training
    return build_training_state(
        config.model,
        config.optimizer,
        runtime,
        objective=config.objective,
        precision=t.precision,
        train_iters=t.train_iters,
        fp8=config.fp8,
        allow_cpu_bf16=allow_cpu_bf16,
    )


def build_training_state(
    model_cfg: ModelConfig,
    optim_cfg: OptimizerConfig,
    runtime: Runtime,
    *,
    objective: str = "clm",
    precision: str = "fp32",
    train_iters: int | None = None,
    fp8=None,
    allow_cpu_bf16: bool = False,
) -> TrainingState:
    from megatron.core.distributed import (
        DistributedDataParallel,
        DistributedDataParallelConfig,
        finalize_model_grads,
    )
    from megatron.core.optimizer import OptimizerConfig as McoreOptimizerConfig
    from megatron.core.optimizer import get_megatron_optimizer

    optim_cfg.validate()
    if runtime.parallel.sequence_parallel and not (
        runtime.accelerators.transformer_engine or runtime.accelerators.apex
    ):
        raise ValueError(
            "parallel.sequence_parallel needs Transformer Engine or apex (megatron-core's torch LayerNorm "
            "does not support it); use the NGC container or set it to false"
        )
    params_dtype, precision_fields, backend = precision_settings(precision, runtime, fp8, allow_cpu_bf16=allow_cpu_bf16)
    parallel = runtime.parallel
    config = model_cfg.to_transformer_config(parallel, params_dtype=params_dtype, **precision_fields)
    # Grads are summed over tokens and divided once by the global token count (per-token loss).
    config.finalize_model_grads_func = finalize_model_grads
    module = build_model_chunk(
        model_cfg, runtime, objective=objective, params_dtype=params_dtype, config=config, backend=backend
    )
    if params_dtype == torch.bfloat16:
        from megatron.core.transformer.module import Float16Module

        module = Float16Module(config, module)
    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True,
        use_distributed_optimizer=parallel.use_distributed_optimizer,
        average_in_collective=False,
    )
    chunk = DistributedDataParallel(config, ddp_config, module)
    optimizer = get_megatron_optimizer(
        McoreOptimizerConfig(
            optimizer="adam",
            lr=optim_cfg.lr,
            min_lr=optim_cfg.min_lr,
            weight_decay=optim_cfg.weight_decay,
            adam_beta1=optim_cfg.adam_beta1,
            adam_beta2=optim_cfg.adam_beta2,
            adam_eps=optim_cfg.adam_eps,
            clip_grad=optim_cfg.clip_grad,
            bf16=config.bf16,
            params_dtype=config.params_dtype,
            use_distributed_optimizer=parallel.use_distributed_optimizer,
        ),
        [chunk],
    )
    scheduler = build_scheduler(optimizer, optim_cfg, train_iters) if train_iters else None
    from megatron_plm.models.mcore import PACKED_BACKENDS

    return TrainingState(
        model=[chunk],
        optimizer=optimizer,
        transformer_config=config,
        scheduler=scheduler,
        packed_sequences=effective_backend(model_cfg, backend) in PACKED_BACKENDS,
    )
