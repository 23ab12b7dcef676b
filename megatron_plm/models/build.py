"""A model chunk for this rank, built from a :class:`ModelConfig`: what training wraps in DDP, and what
conversion and evaluation load weights into. Also the precision guards that choose its dtype and layers."""

from __future__ import annotations

from dataclasses import replace

import torch

from megatron_plm.models.config import ModelConfig
from megatron_plm.runtime.distributed import Runtime


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
    from megatron_plm.data.tokenizers.protein import ProteinTokenizer
    from megatron_plm.models.mcore import build_protein_model

    if model_cfg.seq_length is None or model_cfg.vocab_size is None:
        raise ValueError(
            "model.seq_length and model.vocab_size are unset: build from a resolved run config "
            "(TrainConfig.resolve: data.seq_length and the tokenizer's size) or a saved run's model"
        )
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
