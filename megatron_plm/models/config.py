"""Typed model configuration and its mapping onto megatron-core's TransformerConfig."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

ROTARY_BASE = 10000
"""RoPE's base: ESM-2's and megatron-core's default, and what the HF classes we export to must use."""

if TYPE_CHECKING:
    import torch
    from megatron.core.transformer import TransformerConfig

    from megatron_plm.runtime.parallel import ParallelConfig


def layer_parameters(hidden_size: int, ffn_hidden_size: int) -> int:
    """Parameters of one transformer layer: two LayerNorms (2h each), fused QKV (3h^2 + 3h), output
    projection (h^2 + h) and MLP (2hf + f + h). 12h^2 + 13h at the default f = 4h."""
    h, f = hidden_size, ffn_hidden_size
    return 4 * h + 3 * h * h + 3 * h + h * h + h + 2 * h * f + f + h


@dataclass(kw_only=True)
class ModelConfig:
    """Shape of the transformer body shared by the CLM and MLM objectives."""

    num_layers: int
    """Transformer layers."""
    hidden_size: int
    """Width of the residual stream."""
    num_attention_heads: int
    """Attention heads per layer (must divide hidden_size)."""
    ffn_hidden_size: int | None = None
    """MLP inner width; None means 4 x hidden_size (ESM-2's ratio)."""
    seq_length: int | None = None
    """Maximum tokens per sample, specials included. In a run config leave it unset: it is
    ``data.seq_length`` (:meth:`~megatron_plm.training.config.TrainConfig.resolve`)."""
    vocab_size: int | None = None
    """Tokenizer vocabulary size before padding for tensor parallelism. In a run config leave it unset:
    it is the tokenizer's."""
    make_vocab_size_divisible_by: int = 64
    """The embedding is padded to a multiple of this, independent of the parallel layout, so a
    checkpoint saved at one TP size loads at another (it must be divisible by the TP size)."""
    layernorm_epsilon: float = 1e-5
    """Added to the variance in every LayerNorm."""
    hidden_dropout: float = 0.0
    """Dropout after attention and MLP outputs (ESM-2 and ProGen2 pretrain without)."""
    attention_dropout: float = 0.0
    """Dropout on attention probabilities."""
    init_method_std: float = 0.02
    """Standard deviation of the normal weight initialisation."""
    attention_backend: Literal["local", "sdpa", "varlen", "te"] = "local"
    """Core attention: megatron-core's own (the reference), PyTorch's scaled_dot_product_attention
    with a block-diagonal mask, PyTorch's varlen flash attention over packed batches (GPU, torch >= 2.9;
    a plain-PyTorch equivalent on CPU), or Transformer Engine's over packed batches (the NGC container;
    FP8 always uses it). All honour protein boundaries."""
    cpu_initialization: bool = True
    """Initialise each full weight matrix on the CPU and give every TP rank its slice: the same weights
    at any TP size, but minutes of CPU work per billion parameters. False initialises each rank's shard
    on its GPU (megatron-core's default; fast, but the initial weights then depend on the TP size)."""
    token_dropout: bool = False
    """MLM: ESM-2's token dropout -- ``<mask>`` embeddings are zeroed and the rest rescaled by
    (1 - 0.15 x 0.8) / (1 - observed mask ratio). ESM-2's published models use it."""

    @property
    def ffn_size(self) -> int:
        """The MLP width in effect: ``ffn_hidden_size``, or 4 x ``hidden_size``."""
        return self.ffn_hidden_size or 4 * self.hidden_size

    def layer_parameters(self) -> int:
        return layer_parameters(self.hidden_size, self.ffn_size)

    def validate(self) -> None:
        for name in ("num_layers", "hidden_size", "num_attention_heads", "seq_length", "vocab_size"):
            value = getattr(self, name)
            if value is None and name in ("seq_length", "vocab_size"):  # derived by the run config
                continue
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"model.{name} must be a positive integer, got {value!r}")
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"model.hidden_size ({self.hidden_size}) must be divisible by model.num_attention_heads "
                f"({self.num_attention_heads})"
            )

    def padded_vocab_size(self, tensor_model_parallel_size: int = 1) -> int:
        multiple = self.make_vocab_size_divisible_by
        if multiple % tensor_model_parallel_size != 0:
            raise ValueError(
                f"model.make_vocab_size_divisible_by ({multiple}) must be divisible by "
                f"parallel.tensor_model_parallel_size ({tensor_model_parallel_size})"
            )
        return -(-self.vocab_size // multiple) * multiple

    def to_transformer_config(
        self, parallel: "ParallelConfig", *, params_dtype: "torch.dtype | None" = None, **extra
    ) -> "TransformerConfig":
        """megatron-core's config for this model; ``extra`` adds fields (e.g. FP8 settings)."""
        import torch
        from megatron.core.transformer import TransformerConfig

        params_dtype = params_dtype or torch.float32
        self.validate()
        if self.num_layers % parallel.pipeline_model_parallel_size != 0:
            raise ValueError(
                f"model.num_layers ({self.num_layers}) must be divisible by "
                f"parallel.pipeline_model_parallel_size ({parallel.pipeline_model_parallel_size})"
            )
        if self.num_attention_heads % parallel.tensor_model_parallel_size != 0:
            raise ValueError(
                f"model.num_attention_heads ({self.num_attention_heads}) must be divisible by "
                f"parallel.tensor_model_parallel_size ({parallel.tensor_model_parallel_size})"
            )
        recompute = {
            "none": {},
            "selective": {"recompute_granularity": "selective"},
            "full": {"recompute_granularity": "full", "recompute_method": "uniform", "recompute_num_layers": 1},
        }[parallel.activation_recompute]
        return TransformerConfig(
            num_layers=self.num_layers,
            hidden_size=self.hidden_size,
            num_attention_heads=self.num_attention_heads,
            ffn_hidden_size=self.ffn_size,
            layernorm_epsilon=self.layernorm_epsilon,
            hidden_dropout=self.hidden_dropout,
            attention_dropout=self.attention_dropout,
            init_method_std=self.init_method_std,
            tensor_model_parallel_size=parallel.tensor_model_parallel_size,
            pipeline_model_parallel_size=parallel.pipeline_model_parallel_size,
            sequence_parallel=parallel.sequence_parallel,
            params_dtype=params_dtype,
            pipeline_dtype=params_dtype,
            bf16=params_dtype == torch.bfloat16,
            use_cpu_initialization=self.cpu_initialization,
            calculate_per_token_loss=True,
            # The erf GELU, as ESM-2 uses (megatron's default is also exact GELU).
            gated_linear_unit=False,
            add_bias_linear=True,
            bias_activation_fusion=False,
            masked_softmax_fusion=False,
            bias_dropout_fusion=False,
            apply_rope_fusion=False,
            gradient_accumulation_fusion=False,
            **recompute,
            **extra,
        )
