"""PyTorch-native core attentions for megatron-core's layer spec.

``SDPAAttention`` (``scaled_dot_product_attention`` with a mask) is a drop-in for megatron-core's
``DotProductAttention`` (same constructor and forward signature, same ``[s, b, heads, head_dim]``
inputs and ``[s, b, hidden]`` output), so it runs on any PyTorch >= 2.0,
including GPUs without Transformer Engine, and lets PyTorch pick its fused kernels. Protein
boundaries come in the boolean mask (True = masked) that :meth:`Batch.attention_mask` builds from
segment ids; with no mask, causal layers use SDPA's own causal masking.

``VarlenAttention`` takes packed (``thd``) batches instead: the proteins' boundaries as
``cu_seqlens``, no padding and no mask, as Transformer Engine does.
"""

from __future__ import annotations

import inspect
import math
from typing import Callable

import torch
from megatron.core import parallel_state, tensor_parallel
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule

from megatron_plm.models.config import ROTARY_BASE
from megatron_plm.kernels.rotary import apply_rotary_thd, inv_frequencies


class _CoreAttention(MegatronModule):
    """What both core attentions take from megatron-core's DotProductAttention constructor: this TP
    rank's heads and key/value groups, head size, mask type, softmax scale and dropout."""

    backend = "core"

    def __init__(
        self,
        config,
        layer_number: int,
        attn_mask_type: AttnMaskType,
        attention_type: str,
        attention_dropout: float | None = None,
        softmax_scale: float | None = None,
        cp_comm_type: str | None = None,
        pg_collection=None,
    ):
        super().__init__(config=config)
        if config.context_parallel_size != 1:
            raise ValueError(f"the {self.backend} attention backend does not support context parallelism; use te")
        tp = (
            pg_collection.tp.size()
            if pg_collection is not None
            else parallel_state.get_tensor_model_parallel_world_size()
        )
        self.heads = config.num_attention_heads // tp
        self.query_groups = config.num_query_groups // tp
        self.head_dim = config.kv_channels
        self.attn_mask_type = attn_mask_type
        self.softmax_scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(self.head_dim)
        self.dropout = config.attention_dropout if attention_dropout is None else attention_dropout


class SDPAAttention(_CoreAttention):
    backend = "sdpa"

    def forward(
        self, query, key, value, attention_mask, attn_mask_type=None, attention_bias=None, packed_seq_params=None
    ):
        if attention_bias is not None or packed_seq_params is not None:
            raise ValueError("the sdpa attention backend takes protein boundaries as a mask, not packed_seq_params")
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))  # [b, heads or groups, s, head_dim]
        mask_type = attn_mask_type or self.attn_mask_type
        causal = attention_mask is None and mask_type == AttnMaskType.causal
        allowed = None if attention_mask is None else ~attention_mask  # SDPA: True = take part
        dropout = self.dropout if self.training else 0.0
        with tensor_parallel.get_cuda_rng_tracker().fork():
            context = torch.nn.functional.scaled_dot_product_attention(
                q,
                k,
                v,
                attn_mask=allowed,
                dropout_p=dropout,
                is_causal=causal,
                scale=self.softmax_scale,
                enable_gqa=self.heads > self.query_groups,  # key/value heads shared without copies
            )
        s, b = query.shape[0], query.shape[1]
        return context.permute(2, 0, 1, 3).reshape(s, b, self.heads * self.head_dim)


def _varlen_kernel():
    """PyTorch's flash-attention varlen entry point, or None where this torch has none (< 2.9)."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn


def _varlen_kernel_kwargs(kernel) -> Callable[[bool, bool], dict]:
    """``(causal, grouped) -> kwargs`` for ``kernel``, read once from its signature: torch 2.9 and 2.10 take
    ``is_causal``, 2.11 and later a ``window_size`` ((-1, 0) causal, (-1, -1) full); 2.13 asks for
    ``enable_gqa`` when keys and values have fewer heads than queries (earlier releases take them as given)."""
    parameters = inspect.signature(kernel).parameters
    window, gqa_flag = "window_size" in parameters, "enable_gqa" in parameters

    def kwargs(causal: bool, grouped: bool = False) -> dict:
        chosen = {"window_size": (-1, 0) if causal else (-1, -1)} if window else {"is_causal": causal}
        if grouped and gqa_flag:
            chosen["enable_gqa"] = True
        return chosen

    return kwargs


def varlen_reference(q, k, v, cu_seqlens: torch.Tensor, *, causal: bool, scale: float) -> torch.Tensor:
    """What the varlen kernel computes, in plain PyTorch: ``[t, heads, d]`` queries and ``[t, groups, d]``
    keys and values (grouped-query attention when groups < heads), each segment of ``cu_seqlens``
    attending to itself only. Quadratic in ``t``: for CPU runs and tests."""
    t = q.shape[0]
    segment = torch.bucketize(torch.arange(t, device=q.device), cu_seqlens[1:].to(q.device), right=True)
    allowed = segment[:, None] == segment[None, :]
    if causal:
        allowed &= torch.ones(t, t, dtype=torch.bool, device=q.device).tril()
    q, k, v = (x.transpose(0, 1).unsqueeze(0) for x in (q, k, v))  # [1, heads, t, d]
    grouped = k.shape[1] != q.shape[1]
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=scale, enable_gqa=grouped)
    return out.squeeze(0).transpose(0, 1)


class VarlenAttention(_CoreAttention):
    """Core attention over packed (``thd``) sequences: no padding, no mask, one flash-attention call.

    megatron-core hands it ``[t, heads, head_dim]`` tensors and the proteins' ``cu_seqlens`` in
    ``packed_seq_params`` (see :meth:`Batch.pack`). It applies rotary embeddings itself, positions
    restarting at every protein (the model is built without megatron-core's RoPE), with the fused
    kernel of ``csrc/rotary`` on a GPU. On a GPU with bf16/fp16 attention is PyTorch's
    ``varlen_attn``; elsewhere (the CPU, fp32) both steps run their PyTorch references
    (:func:`rotary_reference`, :func:`varlen_reference`), so the packed path is tested where no GPU is.
    Causal or bidirectional follows the layer's mask type (``no_mask`` for MLM, see ``layer_spec``).
    """

    backend = "varlen"

    def __init__(self, config, layer_number: int, attn_mask_type: AttnMaskType, *args, **kwargs):
        super().__init__(config, layer_number, attn_mask_type, *args, **kwargs)
        if self.dropout:
            raise ValueError("the varlen attention backend has no attention dropout; set model.attention_dropout: 0")
        self.kernel = _varlen_kernel()
        self.kernel_kwargs = _varlen_kernel_kwargs(self.kernel) if self.kernel is not None else None
        self._inv_freq: dict[torch.device, torch.Tensor] = {}  # fp32 per device; not a buffer (bf16 casts)

    def inv_freq(self, device: torch.device) -> torch.Tensor:
        if device not in self._inv_freq:
            self._inv_freq[device] = inv_frequencies(self.head_dim, ROTARY_BASE, device=device)
        return self._inv_freq[device]

    def forward(
        self, query, key, value, attention_mask, attn_mask_type=None, attention_bias=None, packed_seq_params=None
    ):
        if packed_seq_params is None or packed_seq_params.qkv_format != "thd":
            raise ValueError(
                "the varlen attention backend needs packed batches (Batch.pack) with thd packed_seq_params"
            )
        if attention_mask is not None or attention_bias is not None:
            raise ValueError("the varlen attention backend takes protein boundaries as cu_seqlens, not a mask")
        cu = packed_seq_params.cu_seqlens_q
        query = apply_rotary_thd(query, cu, self.inv_freq(query.device))
        key = apply_rotary_thd(key, cu, self.inv_freq(key.device))
        # Grouped-query attention (groups < heads): the flash kernel and the reference share key/value heads.
        causal = (attn_mask_type or self.attn_mask_type) in (AttnMaskType.causal, AttnMaskType.padding_causal)
        if query.is_cuda and query.dtype in (torch.bfloat16, torch.float16):
            if self.kernel is None:
                raise RuntimeError(
                    f"torch {torch.__version__} has no torch.nn.attention.varlen (needs >= 2.9); use sdpa"
                )
            context = self.kernel(
                query,
                key,
                value,
                cu,
                cu,
                packed_seq_params.max_seqlen_q,
                packed_seq_params.max_seqlen_kv,
                scale=self.softmax_scale,
                **self.kernel_kwargs(causal, grouped=self.heads > self.query_groups),
            )
        else:
            context = varlen_reference(query, key, value, cu, causal=causal, scale=self.softmax_scale)
        return context.reshape(query.shape[0], self.heads * self.head_dim)
