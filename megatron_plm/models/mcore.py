"""The only module that imports megatron-core model classes.

megatron-core moves these between releases (0.19 deprecates ``GPTModel`` for
``HybridModel``); keeping every import here means such a move touches one file.
"""

from __future__ import annotations

from megatron.core.models.gpt import GPTModel
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from megatron.core.transformer import TransformerConfig

__all__ = ["GPTModel", "build_gpt_model"]


def build_gpt_model(
    config: TransformerConfig,
    *,
    vocab_size: int,
    max_sequence_length: int,
    pre_process: bool,
    post_process: bool,
    share_embeddings_and_output_weights: bool = False,
) -> GPTModel:
    """A decoder on megatron-core's local (no Transformer Engine) layer spec, rotary positions."""
    return GPTModel(
        config=config,
        transformer_layer_spec=get_gpt_layer_local_spec(),
        vocab_size=vocab_size,
        max_sequence_length=max_sequence_length,
        pre_process=pre_process,
        post_process=post_process,
        share_embeddings_and_output_weights=share_embeddings_and_output_weights,
        position_embedding_type="rope",
        rotary_percent=1.0,
    )
