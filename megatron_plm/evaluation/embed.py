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
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from megatron_plm.data.tokenizer import ProteinTokenizer
from megatron_plm.evaluation.model import ScoringModel, pad_batch

Pool = Literal["mean", "cls", "per-token"]
TOK = ProteinTokenizer()


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
        tmp = f"{os.fspath(path)}.tmp.npz"
        np.savez(tmp, ids=np.array(self.ids), **arrays)
        os.replace(tmp, path)


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
    return TOK.frame_mlm(residues) if model.objective == "mlm" else TOK.frame_clm(residues)


@torch.no_grad()
def embed(
    model: ScoringModel,
    records: list[tuple[str, np.ndarray]],
    *,
    layers: list[int] = (-1,),
    pool: Pool = "mean",
    batch_size: int = 16,
) -> Embeddings:
    """Embeddings of ``(record id, residue token ids)`` records (see the module docstring)."""
    if model.hidden_states is None:
        raise ValueError(f"{model.name}: this model does not expose hidden states")
    if pool not in ("mean", "cls", "per-token"):
        raise ValueError(f"--pool must be mean, cls or per-token, got {pool!r}")
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
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        rows = [_frame(model, windows[w][2]) for w in batch]
        ids, real = pad_batch(rows, TOK.pad)
        hidden = model.hidden_states(ids.to(model.device), real.to(model.device))
        if selected is None:
            selected = resolve_layers(list(layers), len(hidden))
        for i, w in enumerate(batch):
            n = len(windows[w][2])
            residue_rows[w] = {k: hidden[k][i, 1 : n + 1].float().cpu().numpy() for k in selected}
            last = 0 if model.objective == "mlm" else n + 1
            cls_rows[w] = {k: hidden[k][i, last].float().cpu().numpy() for k in selected}
    if selected is None:
        raise ValueError("no sequences to embed")
    by_record: list[list[int]] = [[] for _ in records]
    for w, (r, _, _) in enumerate(windows):
        by_record[r].append(w)
    out: dict[int, np.ndarray] = {}
    offsets = None
    for k in selected:
        per_record = [np.concatenate([residue_rows[w][k] for w in ws]) for ws in by_record]
        if pool == "per-token":
            out[k] = np.concatenate(per_record).astype(np.float32)
            offsets = np.r_[0, np.cumsum([len(p) for p in per_record])].astype(np.int64)
        elif pool == "mean":
            out[k] = np.stack([p.mean(axis=0) for p in per_record]).astype(np.float32)
        else:
            out[k] = np.stack([cls_rows[ws[0]][k] for ws in by_record]).astype(np.float32)
    return Embeddings(ids=[record_id for record_id, _ in records], layers=out, offsets=offsets)
