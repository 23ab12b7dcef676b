"""Build the model chunk for this rank, wrap it in megatron-core DDP, and make its optimizer."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

import torch

from megatron_plm.models.config import ModelConfig
from megatron_plm.runtime import Runtime


@dataclass(kw_only=True)
class OptimizerConfig:
    """Adam with decoupled weight decay, as ESM-2 and the reference study train."""

    lr: float = 4e-4
    """Peak learning rate, reached at the end of warm-up."""
    min_lr: float = 4e-5
    """Learning rate at the last step."""
    weight_decay: float = 0.01
    """Decoupled (AdamW) weight decay."""
    adam_beta1: float = 0.9
    """Adam's first-moment decay."""
    adam_beta2: float = 0.98
    """Adam's second-moment decay."""
    adam_eps: float = 1e-8
    """Adam's denominator epsilon."""
    clip_grad: float = 1.0
    """Global gradient-norm clip; 0 disables clipping."""
    warmup_iters: int = 0
    """Linear warm-up from 0 to ``lr`` over this many steps."""
    decay_style: Literal["cosine", "linear", "constant"] = "cosine"
    """Decay from ``lr`` to ``min_lr`` between the end of warm-up and the last step."""

    def validate(self) -> None:
        for name in ("lr", "min_lr", "weight_decay", "adam_beta1", "adam_beta2", "adam_eps", "clip_grad"):
            if not math.isfinite(getattr(self, name)):  # an infinite lr trains NaN weights
                raise ValueError(f"optimizer.{name} must be a finite number, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"optimizer.lr must be > 0, got {self.lr}")
        if not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"optimizer.min_lr must be in [0, optimizer.lr], got {self.min_lr}")
        if self.clip_grad < 0:
            raise ValueError(f"optimizer.clip_grad must be >= 0 (0 disables clipping), got {self.clip_grad}")
        if self.warmup_iters < 0:
            raise ValueError(f"optimizer.warmup_iters must be >= 0, got {self.warmup_iters}")


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


def build_model_chunk(
    model_cfg: ModelConfig,
    runtime: Runtime,
    *,
    objective: str,
    params_dtype: torch.dtype = torch.float32,
    config=None,
    backend: str = "local",
):
    """This rank's model chunk (no DDP, no optimizer) on the runtime's device: what training wraps and
    conversion loads into. (Weights are initialised on the host when ``model.cpu_initialization``.)"""
    from megatron_plm.data.tokenizer import ProteinTokenizer
    from megatron_plm.models.mcore import build_protein_model

    config = config or model_cfg.to_transformer_config(runtime.parallel, params_dtype=params_dtype)
    backend = effective_backend(model_cfg, backend)
    if backend == "te" and not runtime.accelerators.transformer_engine:
        raise ValueError("model.attention_backend te needs Transformer Engine (the NGC container); use sdpa or local")
    tokenizer = ProteinTokenizer()
    chunk = build_protein_model(
        config,
        objective=objective,
        vocab_size=model_cfg.padded_vocab_size(runtime.parallel.tensor_model_parallel_size),
        max_sequence_length=model_cfg.seq_length,
        pre_process=runtime.is_first_pipeline_stage,
        post_process=runtime.is_last_pipeline_stage,
        token_dropout=model_cfg.token_dropout,
        mask_token_id=tokenizer.mask,
        pad_token_id=tokenizer.pad,
        backend=backend,
    )
    if any(p.is_meta for p in chunk.parameters()):  # built under torch.device("meta") to count, not to run
        return chunk
    return chunk.to(runtime.device)


def runnable_model_config(model_cfg: ModelConfig, runtime: Runtime) -> ModelConfig:
    """``model_cfg`` with an attention backend this machine runs, for loading a checkpoint to evaluate:
    a run trained with Transformer Engine is scored with megatron-core's local attention where TE is
    missing. The weights are the same, and so are the checkpoint keys (megatron-core's local layer spec
    saves its LayerNorms under the names of TE's fused LayerNorm-linear layers)."""
    if model_cfg.attention_backend == "te" and not runtime.accelerators.transformer_engine:
        return replace(model_cfg, attention_backend="local")
    return model_cfg


def effective_backend(model_cfg: ModelConfig, precision_backend: str = "local") -> str:
    """The attention backend a chunk is built with: FP8 forces ``te``, else ``model.attention_backend``."""
    return model_cfg.attention_backend if precision_backend == "local" else precision_backend


def precision_settings(
    precision: str, runtime: Runtime, fp8=None, *, allow_cpu_bf16: bool = False
) -> tuple[torch.dtype, dict, str]:
    """``(params dtype, extra TransformerConfig fields, layer backend)`` for a precision, after its guards.
    ``allow_cpu_bf16`` lets tools (the step profiler) run bf16 on the CPU, which training refuses."""
    if precision == "fp32":
        return torch.float32, {}, "local"
    if precision == "bf16" and allow_cpu_bf16:
        return torch.bfloat16, {}, "local"
    if not runtime.on_gpu:
        raise ValueError(f"training.precision {precision} needs a GPU; use fp32 on the CPU")
    if precision == "bf16":
        return torch.bfloat16, {}, "local"
    if precision != "fp8":
        raise ValueError(f"training.precision must be fp32, bf16 or fp8, got {precision!r}")
    from megatron_plm.models.precision import FP8Config, check_fp8_supported

    fp8 = fp8 or FP8Config()
    capability = torch.cuda.get_device_capability(runtime.device) if runtime.on_gpu else None
    check_fp8_supported(fp8, transformer_engine=runtime.accelerators.transformer_engine, gpu_capability=capability)
    return torch.bfloat16, fp8.transformer_config_kwargs(), "te"


def build_run(config, runtime: Runtime, *, allow_cpu_bf16: bool = False) -> TrainingState:
    """The model, optimizer and LR schedule of a run config (a :class:`~megatron_plm.config.TrainConfig`),
    as ``megatron-plm train`` builds them; benchmarks and tests call this too."""
    t = config.training
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
