"""Embeddings out of a model: per-sequence (mean over residues, or the ``<cls>`` token) or
per-residue, from any layers, for our checkpoints and ``transformers`` models alike.

Layers follow ``transformers``' ``hidden_states``: 0 is the input to the first layer, ``i`` the
output of layer ``i``, and the last (``num_layers``, or -1) is after the final LayerNorm, which is
what fair-esm's ``extract.py`` returns for its last layer. Sequences are framed as the model was
trained (``<cls> ... <eos>`` for MLMs, ``1 ... 2`` for CLMs); proteins longer than the context are
cut into consecutive windows whose residue embeddings are concatenated. ``cls`` is the ``<cls>``
token for an MLM and the closing ``2`` token for a CLM (the one position that has seen the whole
protein), of the first window.

The ``.npz`` file: ``ids`` (record ids), and per layer ``layer_<k>`` -- ``[sequences, hidden]``
pooled, or ``[residues, hidden]`` per-token with ``offsets`` (``[sequences + 1]``) marking where
each sequence's rows start.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from megatron_plm.data.tokenizers.protein import RESIDUES_TOKENIZER
from megatron_plm.evaluation.model import ModelTask, ScoringModel, pad_batch
from megatron_plm.outputs import replacing
from megatron_plm.progress import track

INCLUDE = {"mean": "mean", "per_tok": "per-token", "bos": "bos", "cls": "cls"}
"""``evaluate embed --include`` names (fair-esm's, and our ``cls``) -> :data:`POOLS`."""


@dataclass(frozen=True, kw_only=True)
class EmbedTask(ModelTask):
    """``megatron-plm evaluate embed``: per-sequence or per-residue embeddings of a FASTA file."""

    fasta: Path
    """Proteins to embed (plain or .gz)."""
    output: Path
    """.npz: ids, layer_<k> (and offsets for per-token); a directory with --format fair-esm."""
    pool: Literal["mean", "cls", "per-token"] = "mean"
    """Mean over residues, the <cls> token (CLM: the closing 2), or every residue."""
    layers: list[int] = field(default_factory=lambda: [-1])
    """0 = embeddings, i = layer i's output, -1 = final (after the last LayerNorm)."""
    include: list[Literal["mean", "per_tok", "bos", "cls"]] | None = None
    """Several representations in one pass, as fair-esm's extract.py names them (replaces --pool)."""
    format: Literal["npz", "fair-esm"] = "npz"
    """fair-esm: --output is a directory of <label>.pt files in fair-esm's extract.py layout."""
    batch_size: int = 16
    """Sequences per forward pass."""
    toks_per_batch: int | None = None
    """Batch by tokens instead (fair-esm's option): sequences x padded length."""
    limit: int = 0
    """First N sequences only (0: all)."""


Pool = Literal["mean", "cls", "per-token"]


@dataclass
class Embeddings:
    ids: list[str]
    layers: dict[int, np.ndarray]
    """Layer index (non-negative) -> ``[sequences, h]`` pooled or ``[residues, h]`` per-token."""
    offsets: np.ndarray | None
    """Per-token only: row offsets of each sequence, ``[sequences + 1]``."""

    def per_sequence(self, layer: int) -> list[np.ndarray]:
        """Per-token embeddings split by sequence."""
        return np.split(self.layers[layer], self.offsets[1:-1])

    def save(self, path: str | os.PathLike) -> None:
        arrays = {f"layer_{k}": v for k, v in self.layers.items()}
        if self.offsets is not None:
            arrays["offsets"] = self.offsets
        with replacing(path, suffix=".npz") as staging:
            np.savez(staging, ids=np.array(self.ids), **arrays)


def resolve_layers(layers: list[int], num_hidden: int) -> list[int]:
    """Negative indices count from the end (-1: the final, normalised output)."""
    resolved = []
    for layer in layers:
        index = layer + num_hidden if layer < 0 else layer
        if not 0 <= index < num_hidden:
            raise ValueError(
                f"--layers {layer}: the model has layers 0..{num_hidden - 1} (0: embeddings, "
                f"{num_hidden - 1}: the final output)"
            )
        resolved.append(index)
    return list(dict.fromkeys(resolved))


def _frame(model: ScoringModel, residues: np.ndarray) -> np.ndarray:
    return (
        RESIDUES_TOKENIZER.frame_mlm(residues) if model.objective == "mlm" else RESIDUES_TOKENIZER.frame_clm(residues)
    )


POOLS: tuple[str, ...] = ("mean", "cls", "per-token", "bos")
"""What ``embed_all`` computes: ``bos`` is position 0 (fair-esm's ``bos_representations``: ``<cls>`` for an
MLM, the opening ``1`` for a CLM); ``cls`` is the position that summarises the protein (``<cls>``, or a
CLM's closing ``2``)."""


def _batches(lengths: list[int], order: list[int], batch_size: int, toks_per_batch: int | None) -> list[list[int]]:
    """Windows in ``order`` (longest first) grouped ``batch_size`` at a time, or, with ``toks_per_batch``, as
    fair-esm batches: as many as keep (sequences x padded length, framing included) within the budget."""
    if not toks_per_batch:
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    batches: list[list[int]] = []
    current: list[int] = []
    for w in order:
        longest = max([lengths[v] for v in current] + [lengths[w]]) + 2
        if current and (len(current) + 1) * longest > toks_per_batch:
            batches.append(current)
            current = []
        current.append(w)
    return batches + ([current] if current else [])


@torch.no_grad()
def embed_all(
    model: ScoringModel,
    records: list[tuple[str, np.ndarray]],
    *,
    layers: list[int] = (-1,),
    pools: tuple[str, ...] = ("mean",),
    batch_size: int = 16,
    toks_per_batch: int | None = None,
    show_progress: bool = False,
) -> dict[str, Embeddings]:
    """Embeddings of ``(record id, residue token ids)`` records for each of ``pools``, in one pass over
    the model (see the module docstring); ``toks_per_batch`` batches by tokens instead of ``batch_size``."""
    if model.hidden_states is None:
        raise ValueError(f"{model.name}: this model does not expose hidden states")
    unknown = [p for p in pools if p not in POOLS]
    if unknown or not pools:
        raise ValueError(f"pools must be some of {list(POOLS)}, got {list(pools)}")
    room = model.context - 2
    # Windows of every record, longest first so batches pad little.
    windows = [
        (r, start, ids[start : start + room])
        for r, (_, ids) in enumerate(records)
        for start in range(0, max(len(ids), 1), room)
    ]
    order = sorted(range(len(windows)), key=lambda w: -len(windows[w][2]))
    selected: list[int] | None = None
    residue_rows: dict[int, dict[int, np.ndarray]] = {}  # window -> layer -> [residues, h]
    cls_rows: dict[int, dict[int, np.ndarray]] = {}
    bos_rows: dict[int, dict[int, np.ndarray]] = {}
    batches = _batches([len(w[2]) for w in windows], order, batch_size, toks_per_batch)
    for batch in track(batches, "embed", total=len(windows), unit="windows", enabled=show_progress, weight=len):
        rows = [_frame(model, windows[w][2]) for w in batch]
        ids, real = pad_batch(rows, RESIDUES_TOKENIZER.pad)
        hidden = model.hidden_states(ids.to(model.device), real.to(model.device))
        if selected is None:
            selected = resolve_layers(list(layers), len(hidden))
        for i, w in enumerate(batch):
            n = len(windows[w][2])
            residue_rows[w] = {k: hidden[k][i, 1 : n + 1].float().cpu().numpy() for k in selected}
            last = 0 if model.objective == "mlm" else n + 1
            cls_rows[w] = {k: hidden[k][i, last].float().cpu().numpy() for k in selected}
            bos_rows[w] = {k: hidden[k][i, 0].float().cpu().numpy() for k in selected}
    if selected is None:
        raise ValueError("no sequences to embed")
    by_record: list[list[int]] = [[] for _ in records]
    for w, (r, _, _) in enumerate(windows):
        by_record[r].append(w)
    ids = [record_id for record_id, _ in records]
    out: dict[str, Embeddings] = {}
    for pool in pools:
        layers_out: dict[int, np.ndarray] = {}
        offsets = None
        for k in selected:
            if pool in ("cls", "bos"):
                rows_of = cls_rows if pool == "cls" else bos_rows
                layers_out[k] = np.stack([rows_of[ws[0]][k] for ws in by_record]).astype(np.float32)
                continue
            per_record = [np.concatenate([residue_rows[w][k] for w in ws]) for ws in by_record]
            if pool == "per-token":
                layers_out[k] = np.concatenate(per_record).astype(np.float32)
                offsets = np.r_[0, np.cumsum([len(p) for p in per_record])].astype(np.int64)
            else:
                layers_out[k] = np.stack([p.mean(axis=0) for p in per_record]).astype(np.float32)
        out[pool] = Embeddings(ids=ids, layers=layers_out, offsets=offsets)
    return out


def embed(
    model: ScoringModel,
    records: list[tuple[str, np.ndarray]],
    *,
    layers: list[int] = (-1,),
    pool: Pool = "mean",
    batch_size: int = 16,
    toks_per_batch: int | None = None,
    show_progress: bool = False,
) -> Embeddings:
    """Embeddings of ``(record id, residue token ids)`` records pooled one way (see :func:`embed_all`)."""
    if pool not in ("mean", "cls", "per-token"):
        raise ValueError(f"--pool must be mean, cls or per-token, got {pool!r}")
    return embed_all(
        model,
        records,
        layers=layers,
        pools=(pool,),
        batch_size=batch_size,
        toks_per_batch=toks_per_batch,
        show_progress=show_progress,
    )[pool]


FAIR_ESM_KEYS = {"per-token": "representations", "mean": "mean_representations", "bos": "bos_representations"}
"""Our pools -> the keys of fair-esm's ``extract.py`` output."""


def save_fair_esm(embeddings: dict[str, Embeddings], directory: str | os.PathLike) -> int:
    """Write fair-esm's ``extract.py`` layout: one ``{label}.pt`` per sequence, ``{"label": ...,
    "representations" | "mean_representations" | "bos_representations": {layer: tensor}}`` for the pools
    computed (``per-token``, ``mean``, ``bos``), so downstream scripts written for fair-esm read it unchanged.
    Returns the number of files."""
    from pathlib import Path

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    present = [pool for pool in FAIR_ESM_KEYS if pool in embeddings]
    if not present:
        raise ValueError(f"the fair-esm layout holds {list(FAIR_ESM_KEYS)}; compute at least one of them")
    ids = embeddings[present[0]].ids
    split = {pool: {k: e.per_sequence(k) for k in e.layers} for pool, e in embeddings.items() if pool == "per-token"}
    for i, label in enumerate(ids):
        result: dict = {"label": label}
        for pool in present:
            layers = embeddings[pool].layers
            if pool == "per-token":
                result[FAIR_ESM_KEYS[pool]] = {k: torch.from_numpy(split[pool][k][i].copy()) for k in layers}
            else:
                result[FAIR_ESM_KEYS[pool]] = {k: torch.from_numpy(layers[k][i].copy()) for k in layers}
        path = directory / f"{str(label).replace(os.sep, '_')}.pt"
        with replacing(path) as staging:
            torch.save(result, staging)
    return len(ids)


def save_npz(embeddings: dict[str, Embeddings], path: str | os.PathLike) -> None:
    """One pool: :meth:`Embeddings.save`'s keys (``ids``, ``layer_<k>``, ``offsets``); several: each layer
    under ``<pool>_layer_<k>`` (``per-token`` as ``per_tok``) beside one ``ids`` and ``offsets``."""
    if len(embeddings) == 1:
        next(iter(embeddings.values())).save(path)
        return
    arrays: dict[str, np.ndarray] = {}
    for pool, e in embeddings.items():
        arrays.update({f"{pool.replace('per-token', 'per_tok')}_layer_{k}": v for k, v in e.layers.items()})
        if e.offsets is not None:
            arrays["offsets"] = e.offsets
    ids = next(iter(embeddings.values())).ids
    with replacing(path, suffix=".npz") as staging:
        np.savez(staging, ids=np.array(ids), **arrays)
