"""The only module that imports megatron-core model classes.

megatron-core moves these between releases (0.19 deprecates ``GPTModel`` for
``HybridModel``); keeping every import here means such a move touches one file.

One transformer body serves both objectives (megatron-core's ``GPTModel`` on its local
layer spec: pre-LayerNorm blocks, rotary embeddings over the whole head, GELU MLP with
biases, a final LayerNorm — the ESM-2 block). The heads differ:

- CLM: a plain output projection, untied (``GPTNeoXForCausalLM``'s ``embed_out``).
- MLM: ESM-2's head, dense -> GELU -> LayerNorm (megatron-core's ``BertLMHead``), then the
  decoder tied to the embedding plus a bias (``EsmForMaskedLM``'s ``lm_head``).

Whether attention is causal is decided by the mask each batch passes (an explicit mask
always wins in megatron-core's local attention), so CLM -> MLM transfer is a copy of the body.
"""

from __future__ import annotations

from typing import Literal

import torch
from megatron.core.models.bert.bert_lm_head import BertLMHead
from megatron.core.models.gpt import GPTModel
from megatron.core.models.gpt.gpt_layer_specs import (
    get_gpt_layer_local_spec,
    get_gpt_layer_with_transformer_engine_spec,
)
from megatron.core.transformer import TransformerConfig
from megatron.core.transformer.enums import AttnMaskType

from megatron_plm.models.config import ROTARY_BASE

__all__ = ["GPTModel", "ProteinMaskedLM", "build_protein_model", "layer_spec", "BODY_PREFIXES", "PACKED_BACKENDS"]

BODY_PREFIXES = ("embedding.", "decoder.")
"""State-dict prefixes of the shared body (embedding, layers, final LayerNorm): what CLM -> MLM transfers."""


ESM2_MASK_RATIO_TRAIN = 0.15 * 0.8
"""The masked share of tokens ESM-2's token dropout assumes at training time."""


class ProteinMaskedLM(GPTModel):
    """GPTModel with ESM-2's masked-LM head on the last pipeline stage, and optionally ESM-2's
    token dropout on the first."""

    def __init__(
        self,
        config: TransformerConfig,
        *,
        token_dropout: bool = False,
        mask_token_id: int | None = None,
        pad_token_id: int | None = None,
        **kwargs,
    ):
        super().__init__(config=config, share_embeddings_and_output_weights=True, **kwargs)
        if token_dropout and (mask_token_id is None or pad_token_id is None):
            raise ValueError("token dropout needs the mask and pad token ids")
        self.token_dropout = token_dropout
        self.mask_token_id, self.pad_token_id = mask_token_id, pad_token_id
        if self.post_process:
            self.lm_head = BertLMHead(config.hidden_size, config)
            # ESM-2's decoder bias, sharded over the vocabulary like the output layer's weight.
            tp = self.output_layer.output_size_per_partition
            bias = torch.nn.Parameter(torch.zeros(tp, dtype=config.params_dtype))
            bias.tensor_model_parallel = True
            bias.partition_dim = 0
            bias.partition_stride = 1
            self.output_layer.bias = bias
            self.output_layer.skip_bias_add = False

    def forward(self, input_ids, position_ids, attention_mask, decoder_input=None, **kwargs):
        if self.token_dropout and self.pre_process and decoder_input is None:
            decoder_input = self._embed_with_token_dropout(input_ids, position_ids)
        return super().forward(input_ids, position_ids, attention_mask, decoder_input=decoder_input, **kwargs)

    def _embed_with_token_dropout(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        embeddings = self.embedding(input_ids=input_ids, position_ids=position_ids)  # [s, b, h]
        is_mask = input_ids == self.mask_token_id  # [b, s]
        lengths = (input_ids != self.pad_token_id).sum(-1).clamp(min=1)
        observed = is_mask.sum(-1).to(embeddings.dtype) / lengths
        scale = (1 - ESM2_MASK_RATIO_TRAIN) / (1 - observed)  # [b]
        embeddings = embeddings.masked_fill(is_mask.t().unsqueeze(-1), 0.0)
        return (embeddings * scale[None, :, None]).to(embeddings.dtype)

    def _postprocess(self, hidden_states, **kwargs):
        if self.post_process:
            hidden_states = self.lm_head(hidden_states)
        return super()._postprocess(hidden_states=hidden_states, **kwargs)


PACKED_BACKENDS = ("varlen", "te")
"""Attention backends that take packed (``thd``) batches -- boundaries as cu_seqlens, see ``Batch.pack``.
Transformer Engine ignores a dense mask under a causal mask type (cross-talk between proteins,
cf. Megatron-LM#2357), so it is always given packed batches."""


def layer_spec(backend: Literal["local", "sdpa", "varlen", "te"] = "local", *, objective: str = "clm"):
    """megatron-core's layer spec: its own modules (local attention, the reference), the same with
    PyTorch's scaled_dot_product_attention (sdpa) or varlen flash attention (varlen) as core
    attention and the fused bias + GELU of ``csrc/bias_gelu`` in the MLP, or Transformer Engine's
    layers (te).

    Mask-based backends take causality from each batch's mask; packed ones from the layer's mask
    type, so MLM layers are built bidirectional (``no_mask``; TE turns it into ``padding`` for thd).
    """
    if backend == "te":
        spec = get_gpt_layer_with_transformer_engine_spec()
    elif backend in ("local", "sdpa", "varlen"):
        spec = get_gpt_layer_local_spec()
    else:
        raise ValueError(f"model.attention_backend must be local, sdpa, varlen or te, got {backend!r}")
    if backend in ("sdpa", "varlen"):  # the PyTorch-native GPU paths: our attention, and our fused MLP activation
        from megatron_plm.models.attention import SDPAAttention, VarlenAttention
        from megatron_plm.models.mlp import BiasGeluMLP

        attention = SDPAAttention if backend == "sdpa" else VarlenAttention
        spec.submodules.self_attention.submodules.core_attention = attention
        spec.submodules.mlp = BiasGeluMLP
    if backend in PACKED_BACKENDS and objective == "mlm":
        spec.submodules.self_attention.params = {
            **spec.submodules.self_attention.params,
            "attn_mask_type": AttnMaskType.no_mask,
        }
    return spec


def build_protein_model(
    config: TransformerConfig,
    *,
    objective: Literal["clm", "mlm"],
    vocab_size: int,
    max_sequence_length: int,
    pre_process: bool,
    post_process: bool,
    token_dropout: bool = False,
    mask_token_id: int | None = None,
    pad_token_id: int | None = None,
    backend: Literal["local", "sdpa", "varlen", "te"] = "local",
) -> GPTModel:
    """This rank's chunk of the CLM or MLM model (see the module docstring)."""
    if objective not in ("clm", "mlm"):
        raise ValueError(f"objective must be 'clm' or 'mlm', got {objective!r}")
    if token_dropout and objective == "clm":
        raise ValueError("model.token_dropout applies to MLM only")
    body = dict(
        transformer_layer_spec=layer_spec(backend, objective=objective),
        vocab_size=vocab_size,
        max_sequence_length=max_sequence_length,
        pre_process=pre_process,
        post_process=post_process,
        # varlen's core attention applies RoPE itself (one fused kernel over the packed batch).
        position_embedding_type="none" if backend == "varlen" else "rope",
        rotary_percent=1.0,
        rotary_base=ROTARY_BASE,
    )
    if objective == "clm":
        return GPTModel(config=config, share_embeddings_and_output_weights=False, **body)
    return ProteinMaskedLM(
        config, token_dropout=token_dropout, mask_token_id=mask_token_id, pad_token_id=pad_token_id, **body
    )
