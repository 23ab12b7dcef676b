"""One interface over the models we evaluate: our checkpoints and ``transformers`` directories.

Both are driven with our token ids (ESM-2's for MLM, ours with the ``1``/``2`` terminus tokens for
CLM — what ``export-hf`` writes), and return log-probabilities over that vocabulary.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Literal

import torch

from megatron_plm.data.tokenizers.protein import ESM2_VOCAB, VOCAB, ProteinTokenizer

Objective = Literal["clm", "mlm"]


@dataclass(frozen=True, kw_only=True)
class ModelTask:
    """What every ``megatron-plm evaluate`` task takes: the model, a seed, and whether to show progress."""

    model: str
    """Our checkpoint, a transformers directory or a Hugging Face Hub id (owner/name)."""
    seed: int = 0
    """Random seed (masking, sampling)."""
    progress: bool = True
    """Progress bars (transformers' included) and periodic lines."""


@dataclass
class ScoringModel:
    name: str
    objective: Objective
    context: int
    """Most tokens per forward pass, specials included."""
    reverse: bool
    """CLM trained on reversed proteins too: variant scores average both orientations."""
    vocab_size: int
    forward_logits: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    """``(ids [b, s], real [b, s]) -> logits [b, s, >= vocab_size]``; ``real`` marks non-padding."""
    device: torch.device = torch.device("cpu")
    tokenizer: ProteinTokenizer = ProteinTokenizer()
    """The residue tokenizer, or the :class:`~megatron_plm.data.tokenizers.subword.SubwordTokenizer` it was trained with."""
    causal_lm: Callable[[], Any] | None = None
    """CLM: the same weights as a ``transformers`` causal LM (built on first use), which generation samples
    from with ``transformers``' own ``generate``."""

    hidden_states: Callable[[torch.Tensor, torch.Tensor], list[torch.Tensor]] | None = None
    """``(ids, real) -> [embeddings, layer 1, ..., final]``, each ``[b, s, h]``: the input to the first
    layer, each layer's output, and the last one after the final LayerNorm (``transformers``'
    ``hidden_states`` convention)."""
    saved_run: Any = None
    """Our checkpoint's :class:`~megatron_plm.checkpoint.saved_run.SavedRun` (None for a ``transformers`` model):
    what the run trained on, e.g. its corpus split for ``evaluate perplexity --corpus``."""

    @torch.no_grad()
    def log_probs(self, ids: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        logits = self.forward_logits(ids.to(self.device), real.to(self.device))[..., : self.vocab_size]
        return torch.log_softmax(logits.float(), dim=-1).cpu()


def pad_batch(rows: list, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token rows: ``(ids [b, s], real [b, s])``, on the host (the model moves them)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # host
    real = torch.zeros((len(rows), width), dtype=torch.long)  # host
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.as_tensor(row, dtype=torch.long)  # host
        real[i, : len(row)] = 1
    return ids, real


def _from_transformers(path: Path) -> ScoringModel:
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    from megatron_plm.checkpoint import hf

    config = hf.load_config(path)
    tokenizer = ProteinTokenizer()
    if config.vocab_size > len(VOCAB) and (path / "tokenizer.json").exists():  # a subword export
        from megatron_plm.data.tokenizers.subword import SubwordTokenizer

        tokenizer = SubwordTokenizer.load(path)
        if tokenizer.vocab_size != config.vocab_size:
            raise ValueError(f"{path}: tokenizer.json has {tokenizer.vocab_size} tokens, the model {config.vocab_size}")
        objective = "mlm" if config.model_type == "esm" else "clm"
        auto = AutoModelForMaskedLM if objective == "mlm" else AutoModelForCausalLM
        vocab = tokenizer.vocab_size
        context = int(config.max_position_embeddings) - (2 if objective == "mlm" else 0)
    elif config.model_type == "esm":
        objective, vocab, auto = "mlm", len(ESM2_VOCAB), AutoModelForMaskedLM
        context = int(config.max_position_embeddings) - 2  # ESM counts 2 positions beyond its context
    elif config.vocab_size == len(VOCAB):
        objective, vocab, auto = "clm", len(VOCAB), AutoModelForCausalLM
        context = int(getattr(config, "max_position_embeddings", 1024))
    else:
        raise ValueError(
            f"{path}: a {config.model_type} model with a {config.vocab_size}-token vocabulary; evaluation needs an ESM "
            f"masked LM or a causal LM on our {len(VOCAB)}-token protein vocabulary (as export-hf writes)"
        )
    if vocab > config.vocab_size:
        raise ValueError(f"{path}: vocabulary of {config.vocab_size} tokens, expected {vocab}")
    model = hf.load_pretrained(auto, path, dtype=torch.float32).eval()

    def forward(ids: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        return model(input_ids=ids, attention_mask=real).logits

    def hidden(ids: torch.Tensor, real: torch.Tensor) -> list[torch.Tensor]:
        return list(model(input_ids=ids, attention_mask=real, output_hidden_states=True).hidden_states)

    return ScoringModel(
        name=str(path),
        objective=objective,
        context=context,
        reverse=False,
        vocab_size=vocab,
        forward_logits=forward,
        causal_lm=(lambda: model) if objective == "clm" else None,
        hidden_states=hidden,
        tokenizer=tokenizer,
    )


def _from_checkpoint(path: Path, runtime) -> ScoringModel:
    from megatron_plm.checkpoint.saved_run import SavedRun
    from megatron_plm.data.samples.batch import Batch, cu_seqlens_from_segments
    from megatron_plm.models.mcore import PACKED_BACKENDS
    from megatron_plm.models.build import build_model_chunk, runnable_model_config

    if runtime is None or runtime.world_size != 1:
        raise ValueError(
            "scoring one of our checkpoints needs a single-process runtime (megatron_plm.runtime.distributed.initialize)"
        )
    run = SavedRun.open(path)
    objective, model = run.objective, runnable_model_config(run.model, runtime)
    chunk = build_model_chunk(model, runtime, objective=objective)
    packed = model.attention_backend in PACKED_BACKENDS
    run.load_weights(chunk)
    chunk.eval()  # (on the runtime's device already)

    def forward(ids: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        segments = torch.where(real.bool(), 0, -1).to(torch.int32)
        positions = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)
        batch = Batch(
            tokens=ids,
            labels=ids,
            loss_mask=real.float(),
            position_ids=positions,
            causal=objective == "clm",
            segment_ids=segments,
        )
        if packed:
            cu, longest = cu_seqlens_from_segments(segments.cpu().numpy())
            batch = replace(batch, cu_seqlens=torch.from_numpy(cu).to(ids.device), max_seqlen=longest).pack()
        return chunk(**batch.model_inputs()).reshape(*ids.shape, -1)

    def hidden(ids: torch.Tensor, real: torch.Tensor) -> list[torch.Tensor]:
        # Hooks catch the first layer's input (after ESM-2's token dropout), each layer's output and the
        # final LayerNorm's; [s, b, h] (or [b * s, 1, h] packed) -> [b, s, h].
        captured: list[torch.Tensor] = []
        layers = chunk.decoder.layers
        handles = [
            layers[0].register_forward_pre_hook(
                lambda _m, args, kwargs: captured.append(kwargs.get("hidden_states", args[0] if args else None)),
                with_kwargs=True,
            )
        ]
        for module in [*layers, chunk.decoder.final_layernorm]:
            handles.append(
                module.register_forward_hook(
                    lambda _m, _in, out: captured.append(out[0] if isinstance(out, tuple) else out)
                )
            )
        try:
            forward(ids, real)
        finally:
            for handle in handles:
                handle.remove()
        del captured[-2]  # the last layer's output before the final LayerNorm
        return [h.transpose(0, 1).reshape(*ids.shape, -1) for h in captured]

    hf_model = None

    def causal_lm():  # generation samples through transformers' GPT-NeoX, of the same weights
        nonlocal hf_model
        if hf_model is None:
            hf_model = _as_transformers(chunk, model).to(runtime.device)
        return hf_model

    subword = run.subword_tokenizer
    vocab = subword.vocab_size if subword else len(ESM2_VOCAB) if objective == "mlm" else len(VOCAB)
    return ScoringModel(
        name=str(path),
        objective=objective,
        context=model.seq_length,
        reverse=run.reverse,
        vocab_size=vocab,
        forward_logits=forward,
        device=runtime.device,
        causal_lm=causal_lm if objective == "clm" else None,
        hidden_states=hidden,
        tokenizer=subword or ProteinTokenizer(),
        saved_run=run,
    )


def _as_transformers(chunk, model):
    """Our CLM's weights in ``transformers``' GPT-NeoX (the export's conversion, in memory)."""
    from transformers import GPTNeoXForCausalLM

    from megatron_plm.checkpoint import hf

    state = {
        k: v.detach() for k, v in chunk.state_dict().items() if isinstance(v, torch.Tensor) and "_extra_state" not in k
    }
    converted = GPTNeoXForCausalLM(hf.hf_config("clm", model)).float().eval()
    tensors = hf.to_hf(state, "clm", model)
    tensors.update(hf.hf_extra_tensors("clm", model, set(tensors)))
    converted.load_state_dict(tensors, strict=True)
    return converted


def load_scoring_model(path: str | os.PathLike, runtime=None) -> ScoringModel:
    """Our checkpoint (a run's save directory or one ``iter_*``), a ``transformers`` model directory or a Hub id."""
    from megatron_plm.checkpoint.export import resolve_hf_source
    from megatron_plm.checkpoint.saved_run import SavedRun

    path = resolve_hf_source(path)  # a Hub id is fetched (or refused in one line)
    if not path.exists():
        raise FileNotFoundError(f"model {path} does not exist")
    if SavedRun.holds_one(path):
        return _from_checkpoint(path, runtime)
    if (path / "config.json").exists():
        return _from_transformers(path)
    raise ValueError(f"{path} is neither one of our checkpoints nor a transformers model directory")
