"""HuggingFace ``transformers`` export and import: MLM <-> EsmForMaskedLM, CLM <-> GPTNeoXForCausalLM.

The body is one transformer (see ``models/mcore.py``); ``shared/notes/hf-layouts.md`` records
the measured correspondence. Conversion is a key map per direction plus three named
transforms: splitting/merging megatron-core's fused QKV (per head: q, k, v), slicing/padding
the vocabulary (ours is padded to a multiple of 64), and the tied MLM decoder (stored once,
as the embedding). State dicts here are full (TP=1, PP=1) tensors; loading a checkpoint saved
at any layout into a TP=1 model is megatron-core's resharding.
"""

from __future__ import annotations

from typing import Literal

import torch

from megatron_plm.data.tokenizers.protein import ESM2_VOCAB, VOCAB
from megatron_plm.models.config import ROTARY_BASE, ModelConfig

Objective = Literal["clm", "mlm"]
LAYER = "decoder.layers.{i}."

# ---- ours -> HF, per layer (QKV is a transform) ------------------------------------------------------
ESM_LAYER = {
    "input_layernorm": "attention.LayerNorm",
    "self_attention.linear_proj": "attention.output.dense",
    "pre_mlp_layernorm": "LayerNorm",
    "mlp.linear_fc1": "intermediate.dense",
    "mlp.linear_fc2": "output.dense",
}
NEOX_LAYER = {
    "input_layernorm": "input_layernorm",
    "self_attention.linear_qkv": "attention.query_key_value",  # same per-head (q, k, v) fusion as ours
    "self_attention.linear_proj": "attention.dense",
    "pre_mlp_layernorm": "post_attention_layernorm",
    "mlp.linear_fc1": "mlp.dense_h_to_4h",
    "mlp.linear_fc2": "mlp.dense_4h_to_h",
}
ESM_GLOBAL = {
    "decoder.final_layernorm": "esm.encoder.emb_layer_norm_after",
    "lm_head.dense": "lm_head.dense",
    "lm_head.layer_norm": "lm_head.layer_norm",
}
NEOX_GLOBAL = {"decoder.final_layernorm": "gpt_neox.final_layer_norm"}
# Vocabulary-sized tensors: ours -> HF, sliced to the HF vocabulary (named transform).
ESM_VOCAB = {
    "embedding.word_embeddings.weight": "esm.embeddings.word_embeddings.weight",
    "output_layer.bias": "lm_head.bias",
}
NEOX_VOCAB = {"embedding.word_embeddings.weight": "gpt_neox.embed_in.weight", "output_layer.weight": "lm_head.weight"}
HF_PREFIX = {"mlm": "esm.encoder.layer.{i}.", "clm": "gpt_neox.layers.{i}."}
FILE_NAMES = {"lm_head.weight": "embed_out.weight"}
"""Names an export's ``model.safetensors`` uses where ``transformers`` versions differ: GPT-NeoX's output
projection is ``embed_out`` in 4.x and ``lm_head`` in 5.x, which still loads ``embed_out`` checkpoints (as
Pythia's on the Hub), so the file uses the name both load."""


def to_file_names(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {FILE_NAMES.get(k, k): v for k, v in tensors.items()}


ALLOWED_MISSING_IN_HF = {"mlm": ("esm.contact_head.", "lm_head.decoder.weight"), "clm": ()}
"""HF tensors the key maps do not provide: ESM's contact head (not trained here), the tied decoder;
:func:`hf_extra_tensors` fills the first (and rotary buffers) so that an export loads without a report."""


def hf_vocab_size(objective: Objective, model: ModelConfig | None = None) -> int:
    """ESM-2's 33 tokens (MLM) or ours with the terminus markers (CLM); a model trained with a subword
    tokenizer (a vocabulary beyond our 35 tokens) keeps all of it under either objective."""
    if model is not None and model.vocab_size > len(VOCAB):
        return model.vocab_size
    return len(ESM2_VOCAB) if objective == "mlm" else len(VOCAB)


# ---- named transforms --------------------------------------------------------------------------------
def split_qkv(fused: torch.Tensor, heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """megatron-core's fused QKV ``[heads * 3 * d, ...]`` (per head: q, k, v) -> q, k, v ``[heads * d, ...]``."""
    grouped = fused.reshape(heads, 3, -1, *fused.shape[1:])
    return tuple(grouped[:, j].reshape(-1, *fused.shape[1:]).contiguous() for j in range(3))


def merge_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    parts = [t.reshape(heads, 1, -1, *t.shape[1:]) for t in (q, k, v)]
    return torch.cat(parts, dim=1).reshape(-1, *q.shape[1:]).contiguous()


def slice_vocab(tensor: torch.Tensor, size: int) -> torch.Tensor:
    return tensor[:size].contiguous()


def pad_vocab(tensor: torch.Tensor, padded: int) -> torch.Tensor:
    out = torch.zeros((padded, *tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device)
    out[: tensor.shape[0]] = tensor
    return out


# ---- the maps ----------------------------------------------------------------------------------------
def to_hf(state: dict[str, torch.Tensor], objective: Objective, model: ModelConfig) -> dict[str, torch.Tensor]:
    layer_map, global_map, vocab_map = (
        (ESM_LAYER, ESM_GLOBAL, ESM_VOCAB) if objective == "mlm" else (NEOX_LAYER, NEOX_GLOBAL, NEOX_VOCAB)
    )
    vocab = hf_vocab_size(objective, model)
    out: dict[str, torch.Tensor] = {}
    for i in range(model.num_layers):
        ours, theirs = LAYER.format(i=i), HF_PREFIX[objective].format(i=i)
        for src, dst in layer_map.items():
            for kind in ("weight", "bias"):
                out[f"{theirs}{dst}.{kind}"] = state[f"{ours}{src}.{kind}"]
        if objective == "mlm":
            for kind in ("weight", "bias"):
                q, k, v = split_qkv(state[f"{ours}self_attention.linear_qkv.{kind}"], model.num_attention_heads)
                for name, tensor in zip(("query", "key", "value"), (q, k, v)):
                    out[f"{theirs}attention.self.{name}.{kind}"] = tensor
    for src, dst in global_map.items():
        for kind in ("weight", "bias"):
            out[f"{dst}.{kind}"] = state[f"{src}.{kind}"]
    for src, dst in vocab_map.items():
        out[dst] = slice_vocab(state[src], vocab)
    return out


def from_hf(hf: dict[str, torch.Tensor], objective: Objective, model: ModelConfig) -> dict[str, torch.Tensor]:
    """The inverse of :func:`to_hf`, vocabulary padded back to ours (padding rows are zero)."""
    layer_map, global_map, vocab_map = (
        (ESM_LAYER, ESM_GLOBAL, ESM_VOCAB) if objective == "mlm" else (NEOX_LAYER, NEOX_GLOBAL, NEOX_VOCAB)
    )
    padded = model.padded_vocab_size()
    out: dict[str, torch.Tensor] = {}
    for i in range(model.num_layers):
        ours, theirs = LAYER.format(i=i), HF_PREFIX[objective].format(i=i)
        for src, dst in layer_map.items():
            for kind in ("weight", "bias"):
                out[f"{ours}{src}.{kind}"] = hf[f"{theirs}{dst}.{kind}"]
        if objective == "mlm":
            for kind in ("weight", "bias"):
                q, k, v = (hf[f"{theirs}attention.self.{name}.{kind}"] for name in ("query", "key", "value"))
                out[f"{ours}self_attention.linear_qkv.{kind}"] = merge_qkv(q, k, v, model.num_attention_heads)
    for src, dst in global_map.items():
        for kind in ("weight", "bias"):
            out[f"{src}.{kind}"] = hf[f"{dst}.{kind}"]
    for src, dst in vocab_map.items():
        out[src] = pad_vocab(hf[dst], padded)
    return out


def hf_extra_tensors(objective: Objective, model: ModelConfig, written: set[str]) -> dict[str, torch.Tensor]:
    """Tensors the installed ``transformers`` expects beyond the key map, so loading reports none missing.

    Which they are changes between versions (4.x stores ESM's rotary ``inv_freq`` once per layer, 5.x once
    per model), so they are read off the model class itself, built on the meta device: rotary inverse
    frequencies (computed as the model computes them) and ESM's contact head, untrained here and written
    as zeros."""
    import transformers

    cls = transformers.EsmForMaskedLM if objective == "mlm" else transformers.GPTNeoXForCausalLM
    with torch.device("meta"):
        expected = cls(hf_config(objective, model)).state_dict()
    head_dim = model.hidden_size // model.num_attention_heads
    extras = {}
    for key, tensor in expected.items():
        if key in written or key == "lm_head.decoder.weight":  # (tied to the embedding)
            continue
        if key.endswith("inv_freq"):
            exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim  # host: saved
            extras[key] = 1.0 / (ROTARY_BASE**exponents)
        elif key.startswith("esm.contact_head."):
            extras[key] = torch.zeros(tensor.shape, dtype=torch.float32)  # host: saved
        else:
            raise ValueError(
                f"transformers {transformers.__version__} expects {key}, which the conversion does not "
                "write; megatron_plm.checkpoint.hf needs updating for this version"
            )
    return extras


# ---- configs -----------------------------------------------------------------------------------------
def hf_config(objective: Objective, model: ModelConfig):
    """The ``transformers`` config that expresses our model exactly."""
    from megatron_plm.data.tokenizers.protein import ProteinTokenizer

    tok = ProteinTokenizer()
    ffn = model.ffn_size
    if objective == "mlm":
        from transformers import EsmConfig

        return EsmConfig(
            vocab_size=hf_vocab_size("mlm", model),
            hidden_size=model.hidden_size,
            num_hidden_layers=model.num_layers,
            num_attention_heads=model.num_attention_heads,
            intermediate_size=ffn,
            hidden_act="gelu",
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
            max_position_embeddings=model.seq_length + 2,
            position_embedding_type="rotary",
            layer_norm_eps=model.layernorm_epsilon,
            emb_layer_norm_before=False,
            token_dropout=model.token_dropout,
            mask_token_id=tok.mask,
            pad_token_id=tok.pad,
            initializer_range=model.init_method_std,
            tie_word_embeddings=True,
            architectures=["EsmForMaskedLM"],
        )
    from transformers import GPTNeoXConfig

    return GPTNeoXConfig(
        vocab_size=hf_vocab_size("clm", model),
        hidden_size=model.hidden_size,
        num_hidden_layers=model.num_layers,
        num_attention_heads=model.num_attention_heads,
        intermediate_size=ffn,
        hidden_act="gelu",
        rotary_pct=1.0,
        rotary_emb_base=ROTARY_BASE,
        max_position_embeddings=model.seq_length,
        layer_norm_eps=model.layernorm_epsilon,
        use_parallel_residual=False,
        attention_bias=True,
        attention_dropout=0.0,
        hidden_dropout=0.0,
        tie_word_embeddings=False,
        initializer_range=model.init_method_std,
        bos_token_id=tok.n_terminus,
        eos_token_id=tok.c_terminus,
        pad_token_id=tok.pad,
        architectures=["GPTNeoXForCausalLM"],
    )


def _require(condition: bool, what: str, source: str) -> None:
    if not condition:
        raise ValueError(f"{source}: {what}; megatron_plm's model cannot express it")


def model_config_from_hf(config, source: str) -> tuple[Objective, ModelConfig]:
    """Our objective and model config for a ``transformers`` config, refusing what we cannot express."""
    kind = getattr(config, "model_type", None)
    if kind == "esm":
        # ESM's layers apply exact GELU whatever the config says; configs saved from EsmConfig's defaults
        # (transformers 5.x) have no hidden_act at all.
        _require(getattr(config, "hidden_act", "gelu") == "gelu", "hidden_act must be 'gelu'", source)
        _require(
            config.position_embedding_type == "rotary",
            f"position_embedding_type must be 'rotary' (got {config.position_embedding_type!r}; ESM-2 uses rotary)",
            source,
        )
        _require(not config.emb_layer_norm_before, "emb_layer_norm_before must be false", source)
        _require(
            config.vocab_size == len(ESM2_VOCAB),
            f"vocab_size must be ESM-2's {len(ESM2_VOCAB)} (got {config.vocab_size})",
            source,
        )
        objective: Objective = "mlm"
        eps, ffn, seq = config.layer_norm_eps, config.intermediate_size, config.max_position_embeddings - 2
        token_dropout = bool(config.token_dropout)
    elif kind == "gpt_neox":
        _require(not config.use_parallel_residual, "use_parallel_residual must be false", source)
        rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
        fraction = rope.get("partial_rotary_factor", getattr(config, "rotary_pct", 1.0))  # 5.x, 4.x
        base = rope.get("rope_theta", getattr(config, "rotary_emb_base", ROTARY_BASE))
        _require(float(fraction) == 1.0, f"the rotary fraction (rotary_pct) must be 1.0, got {fraction}", source)
        _require(
            float(base) == ROTARY_BASE, f"the rotary base (rotary_emb_base) must be {ROTARY_BASE}, got {base}", source
        )
        _require(rope.get("rope_type", "default") == "default", "rotary scaling is not supported", source)
        _require(getattr(config, "hidden_act", "gelu") == "gelu", "hidden_act must be 'gelu'", source)
        _require(getattr(config, "attention_bias", True), "attention_bias must be true", source)
        _require(config.vocab_size == len(VOCAB), f"vocab_size must be {len(VOCAB)} (our CLM vocabulary)", source)
        objective = "clm"
        eps, ffn, seq, token_dropout = (
            config.layer_norm_eps,
            config.intermediate_size,
            config.max_position_embeddings,
            False,
        )
    else:
        raise ValueError(f"{source}: model_type {kind!r} is not one we convert (esm or gpt_neox)")
    model = ModelConfig(
        num_layers=config.num_hidden_layers,
        hidden_size=config.hidden_size,
        num_attention_heads=config.num_attention_heads,
        ffn_hidden_size=ffn,
        seq_length=seq,
        vocab_size=len(VOCAB),
        layernorm_epsilon=eps,
        init_method_std=config.initializer_range,
        token_dropout=token_dropout,
    )
    model.validate()
    return objective, model


def load_pretrained(auto, path, **kwargs):
    """``auto.from_pretrained(path)`` with a damaged or refused weights file (a ``pytorch_model.bin``
    whose pickle holds code, a truncated ``model.safetensors``) reported as ``PATH: problem``."""
    from megatron_plm.safe_io import reading

    with reading(path, "loading refused or failed; use a model directory you trust (model.safetensors)"):
        return auto.from_pretrained(path, **kwargs)


def load_config(path):
    """``AutoConfig.from_pretrained(path)`` with a damaged ``config.json`` reported as ``PATH: problem``."""
    from transformers import AutoConfig

    from megatron_plm.safe_io import reading

    with reading(path, "config.json must be a transformers model config"):
        return AutoConfig.from_pretrained(path)
