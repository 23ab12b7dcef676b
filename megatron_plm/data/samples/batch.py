"""Samples -> a microbatch the model consumes, with the attention boundaries made explicit.

The boundaries travel as ``segment_ids`` (and, for packed-sequence / varlen kernels,
cumulative sequence lengths over the flattened batch). The dense mask that
megatron-core's local attention needs is built by :meth:`Batch.attention_mask` on the
device at step time, not in the data pipeline: ``[b, 1, s, s]`` booleans are cheap to
compare on a GPU and expensive to build and ship from a CPU worker.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch


@dataclass(frozen=True)
class Batch:
    """A microbatch. Shapes ``[b, s]``; ``loss_mask`` is 1 where a label is supervised."""

    tokens: torch.Tensor
    labels: torch.Tensor
    loss_mask: torch.Tensor
    position_ids: torch.Tensor
    causal: bool = True
    segment_ids: torch.Tensor | None = None
    """int32 ``[b, s]``: protein index within each sample, -1 for padding. None: one protein per
    row, right-padded, causal (megatron-core's own causal mask is then exact)."""
    cu_seqlens: torch.Tensor | None = None
    """int32 ``[n + 1]``: segment boundaries over the flattened ``b * s`` tokens (padding is a segment)."""
    max_seqlen: int | None = None
    packed: bool = False
    """One row holding the whole microbatch (``[1, b * s]``, see :meth:`pack`): boundaries go to the
    model as ``thd`` packed-sequence parameters, not as a mask."""

    def attention_mask(self) -> torch.Tensor | None:
        """Bool mask, True = masked, for megatron-core's local attention, or None for its causal default.

        A query sees keys of its own segment only (and only earlier ones when causal); padding
        keys are never seen; padding queries see themselves, so no softmax row is empty. For
        bidirectional rows holding one protein each, the key-padding mask ``[b, 1, 1, s]`` is exact.
        """
        if self.segment_ids is None:
            return None
        seg = self.segment_ids
        if not self.causal and bool((seg.max(dim=1).values <= 0).all()):
            return (seg < 0)[:, None, None, :]
        s = seg.shape[1]
        allowed = (seg[:, :, None] == seg[:, None, :]) & (seg[:, None, :] >= 0)
        if self.causal:
            allowed &= torch.ones(s, s, dtype=torch.bool, device=seg.device).tril()
        allowed |= torch.eye(s, dtype=torch.bool, device=seg.device)
        return ~allowed[:, None]

    def pack(self) -> "Batch":
        """The same tokens as one ``[1, b * s]`` row for packed (``thd``) attention kernels.

        ``cu_seqlens`` already runs over the flattened batch, with every row starting a segment, so
        nothing is recomputed: per-token outputs reshape back to ``[b, s]`` in the same order.
        """
        if self.packed:
            return self
        if self.cu_seqlens is None:
            raise ValueError("packing needs segment ids and cu_seqlens (batches from collate/batch_from_arrays)")
        flat = {
            name: getattr(self, name).reshape(1, -1)
            for name in ("tokens", "labels", "loss_mask", "position_ids", "segment_ids")
        }
        return replace(self, packed=True, **flat)

    def packed_seq_params(self):
        """megatron-core's ``PackedSeqParams`` (``thd``) for a packed batch."""
        from megatron.core.packed_seq_params import PackedSeqParams

        return PackedSeqParams(
            qkv_format="thd",
            cu_seqlens_q=self.cu_seqlens,
            cu_seqlens_kv=self.cu_seqlens,
            max_seqlen_q=self.max_seqlen,
            max_seqlen_kv=self.max_seqlen,
        )

    def model_inputs(self) -> dict:
        """Keyword arguments for a GPTModel forward: a mask, or packed-sequence parameters when packed."""
        if self.packed:
            return dict(
                input_ids=self.tokens,
                position_ids=self.position_ids,
                attention_mask=None,
                packed_seq_params=self.packed_seq_params(),
            )
        return dict(input_ids=self.tokens, position_ids=self.position_ids, attention_mask=self.attention_mask())

    def to(self, device: torch.device) -> "Batch":
        moved = {
            name: getattr(self, name).to(device, non_blocking=True)
            for name in ("tokens", "labels", "loss_mask", "position_ids", "segment_ids", "cu_seqlens")
            if getattr(self, name) is not None
        }
        return replace(self, **moved)


def cu_seqlens_from_segments(segment_ids: np.ndarray) -> tuple[np.ndarray, int]:
    """Cumulative lengths of the runs of equal segment id in each row, over the flattened batch."""
    b, s = segment_ids.shape
    flat = segment_ids.reshape(-1)
    change = np.empty(flat.size, dtype=bool)
    change[0] = True
    change[1:] = flat[1:] != flat[:-1]
    change[::s] = True  # every row starts a segment
    cu = np.r_[np.flatnonzero(change), flat.size].astype(np.int32)
    return cu, int(np.diff(cu).max())


SAMPLE_KEYS = ("tokens", "labels", "loss_mask", "position_ids", "segment_ids")


def collate(samples: list[dict], *, causal: bool) -> Batch:
    """Stack single samples (``dataset[i]``) into a :class:`Batch`."""
    return batch_from_arrays({key: np.stack([sample[key] for sample in samples]) for key in SAMPLE_KEYS}, causal=causal)


def batch_from_arrays(stack: dict[str, np.ndarray], *, causal: bool) -> Batch:
    """A :class:`Batch` from stacked ``[b, s]`` sample arrays (``ProteinDataset.samples``)."""
    cu, max_seqlen = cu_seqlens_from_segments(stack["segment_ids"])
    return Batch(
        tokens=torch.from_numpy(stack["tokens"]),
        labels=torch.from_numpy(stack["labels"]),
        loss_mask=torch.from_numpy(stack["loss_mask"]),
        position_ids=torch.from_numpy(stack["position_ids"]),
        causal=causal,
        segment_ids=torch.from_numpy(stack["segment_ids"]),
        cu_seqlens=torch.from_numpy(cu),
        max_seqlen=max_seqlen,
    )
