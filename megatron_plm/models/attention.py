"""A PyTorch-native core attention for megatron-core's layer spec: ``scaled_dot_product_attention``.

Drop-in for megatron-core's ``DotProductAttention`` (same constructor and forward signature, same
``[s, b, heads, head_dim]`` inputs and ``[s, b, hidden]`` output), so it runs on any PyTorch >= 2.0,
including GPUs without Transformer Engine, and lets PyTorch pick its fused kernels. Protein
boundaries come in the boolean mask (True = masked) that :meth:`Batch.attention_mask` builds from
segment ids; with no mask, causal layers use SDPA's own causal masking.
"""

from __future__ import annotations

import math

import torch
from megatron.core import tensor_parallel
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule


class SDPAAttention(MegatronModule):
    def __init__(self, config, layer_number: int, attn_mask_type: AttnMaskType, attention_type: str,
                 attention_dropout: float | None = None, softmax_scale: float | None = None,
                 cp_comm_type: str | None = None, pg_collection=None):  # fmt: skip
        super().__init__(config=config)
        if config.context_parallel_size != 1:
            raise ValueError("the sdpa attention backend does not support context parallelism; use te")
        tp = pg_collection.tp.size() if pg_collection is not None else tensor_parallel.get_tensor_model_parallel_world_size()
        self.heads = config.num_attention_heads // tp
        self.query_groups = config.num_query_groups // tp
        self.head_dim = config.kv_channels
        self.attn_mask_type = attn_mask_type
        self.softmax_scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(self.head_dim)
        self.dropout = config.attention_dropout if attention_dropout is None else attention_dropout

    def forward(self, query, key, value, attention_mask, attn_mask_type=None, attention_bias=None,
                packed_seq_params=None):  # fmt: skip
        if attention_bias is not None or packed_seq_params is not None:
            raise ValueError("the sdpa attention backend takes protein boundaries as a mask, not packed_seq_params")
        if self.heads > self.query_groups:  # grouped-query attention: share each key/value head
            key = key.repeat_interleave(self.heads // self.query_groups, dim=2)
            value = value.repeat_interleave(self.heads // self.query_groups, dim=2)
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))  # [b, heads, s, head_dim]
        mask_type = attn_mask_type or self.attn_mask_type
        causal = attention_mask is None and mask_type == AttnMaskType.causal
        allowed = None if attention_mask is None else ~attention_mask  # SDPA: True = take part
        dropout = self.dropout if self.training else 0.0
        with tensor_parallel.get_cuda_rng_tracker().fork():
            context = torch.nn.functional.scaled_dot_product_attention(
                q, k, v, attn_mask=allowed, dropout_p=dropout, is_causal=causal, scale=self.softmax_scale
            )
        s, b = query.shape[0], query.shape[1]
        return context.permute(2, 0, 1, 3).reshape(s, b, self.heads * self.head_dim)
