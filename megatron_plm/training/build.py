"""Build the model chunk for this rank, wrap it in megatron-core DDP, and make its optimizer."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from megatron_plm.models.config import ModelConfig
from megatron_plm.runtime import Runtime


@dataclass(kw_only=True)
class OptimizerConfig:
    """Adam with decoupled weight decay, as ESM-2 and the reference study train."""

    lr: float = 4e-4
    min_lr: float = 4e-5
    weight_decay: float = 0.01
    adam_beta1: float = 0.9
    adam_beta2: float = 0.98
    adam_eps: float = 1e-8
    clip_grad: float = 1.0
    """Global gradient-norm clip; 0 disables clipping."""

    def validate(self) -> None:
        if not self.lr > 0:
            raise ValueError(f"optimizer.lr must be > 0, got {self.lr}")
        if self.clip_grad < 0:
            raise ValueError(f"optimizer.clip_grad must be >= 0 (0 disables clipping), got {self.clip_grad}")


@dataclass
class TrainingState:
    """What a training step needs: this rank's model chunks, the optimizer, and the model config."""

    model: list  # megatron-core DistributedDataParallel chunks (one unless interleaved PP)
    optimizer: object  # megatron-core MegatronOptimizer
    transformer_config: object  # megatron-core TransformerConfig

    def unwrapped(self) -> list[torch.nn.Module]:
        return [chunk.module for chunk in self.model]


def build_training_state(model_cfg: ModelConfig, optim_cfg: OptimizerConfig, runtime: Runtime) -> TrainingState:
    from megatron.core.distributed import (
        DistributedDataParallel,
        DistributedDataParallelConfig,
        finalize_model_grads,
    )
    from megatron.core.optimizer import OptimizerConfig as McoreOptimizerConfig
    from megatron.core.optimizer import get_megatron_optimizer

    from megatron_plm.models.mcore import build_gpt_model

    optim_cfg.validate()
    parallel = runtime.parallel
    config = model_cfg.to_transformer_config(parallel)
    # Grads are summed over tokens and divided once by the global token count (per-token loss).
    config.finalize_model_grads_func = finalize_model_grads
    module = build_gpt_model(
        config,
        vocab_size=model_cfg.padded_vocab_size(parallel.tensor_model_parallel_size),
        max_sequence_length=model_cfg.seq_length,
        pre_process=runtime.is_first_pipeline_stage,
        post_process=runtime.is_last_pipeline_stage,
    )
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
    return TrainingState(model=[chunk], optimizer=optimizer, transformer_config=config)
