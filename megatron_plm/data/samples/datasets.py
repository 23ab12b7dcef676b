"""Samples from a corpus split: CLM packing, ESM-2 MLM (single protein or packed).

Every sample is a pure function of (seed, index): the document order comes from
:mod:`megatron_plm.data.samples.sampling`, packing from megatron-core's ``build_sample_idx``
(greedy, so extending a run never changes earlier samples), and every random draw
(crop, masks, reversal) from a generator keyed by the sample or document position.

A sample is a dict of numpy arrays of length ``seq_length``:

- ``tokens``, ``labels`` (int64): model input and targets (CLM: the next token; MLM: the
  original token);
- ``loss_mask`` (float32): 1 where the label is supervised;
- ``segment_ids`` (int32): which protein of the sample each position belongs to (0, 1, ...),
  -1 for padding; attention must never cross segments;
- ``position_ids`` (int64): position within the protein piece (restarting at each segment).
"""

from __future__ import annotations


import numpy as np
import torch

from megatron_plm.data.corpus import Corpus
from megatron_plm.data.samples.config import SampleConfig
from megatron_plm.data.samples.masking import mask_tokens
from megatron_plm.data.samples.sampling import (
    STREAM_MASK,
    STREAM_REVERSE,
    STREAM_SAMPLE,
    STREAM_SAMPLE_SHUFFLE,
    DocumentOrder,
    SamplingUnits,
    random_bits,
    rng,
    uniform_fields,
    uniform_noise,
)
from megatron_plm.data.samples.splits import Split
from megatron_plm.data.tokenizers.protein import ProteinTokenizer

SHUFFLE_BLOCK = 1024
"""Packed samples are shuffled within blocks of this many, so pieces of one long protein do not
sit in the same global batch, while the order stays prefix-stable."""


def segment_positions(segment_ids: np.ndarray) -> np.ndarray:
    """Position of each token within its segment, restarting at every segment change and at the
    start of every row (``segment_ids`` is ``[s]`` or ``[b, s]``)."""
    shape = segment_ids.shape
    flat = segment_ids.reshape(-1)
    change = np.empty(flat.size, dtype=bool)
    change[0] = True
    change[1:] = flat[1:] != flat[:-1]
    change[:: shape[-1]] = True
    starts = np.flatnonzero(change)
    run_lengths = np.diff(np.r_[starts, flat.size])
    return (np.arange(flat.size, dtype=np.int64) - np.repeat(starts, run_lengths)).reshape(shape)


class ProteinDataset(torch.utils.data.Dataset):
    """The samples of one corpus restricted to ``documents`` (a split, optionally one source).

    Duck-compatible with megatron-core's ``BlendedDataset`` (``unique_identifiers``,
    ``index_split``), which mixes several of these by weight.
    """

    def __init__(
        self,
        corpus: Corpus,
        documents: np.ndarray,
        *,
        config: SampleConfig,
        num_samples: int,
        seed: int,
        split: Split,
        name: str,
        tokenizer: ProteinTokenizer | None = None,
        index: dict[str, np.ndarray] | None = None,
    ):
        """``index``: the arrays of :func:`build_index` for these arguments (e.g. memory-mapped from the
        index cache); built here when None."""
        config.validate()
        if len(documents) == 0:
            raise ValueError(f"{name}: no documents in the {split.name.lower()} split")
        self.config = config
        self.tokenizer = tokenizer or ProteinTokenizer()
        self.seed = seed
        self.split = split
        self.name = name
        self.corpus = corpus
        self.indexed = corpus.indexed_dataset()
        self._is_residue = np.zeros(self.tokenizer.vocab_size, dtype=bool)
        self._is_residue[self.tokenizer.residue_ids] = True
        self._replacements = self.tokenizer.standard_amino_acid_ids
        if index is None:
            index = build_index(corpus, documents, config=config, num_samples=num_samples, seed=seed)
        units = SamplingUnits(documents=index["units_documents"], unit_starts=index["unit_starts"])
        self.order = DocumentOrder(units, seed)
        self.residue_lengths = self.indexed.sequence_lengths  # int32, a view of the memory-mapped .idx
        self.doc_order = index["doc_order"]
        if config.packed:
            self._extra = 1 if config.objective == "clm" else 0
            self.sample_index = index["sample_index"]
            self.shuffle = index["shuffle"]
            self.reversed = index["reversed"]
        self.num_samples = num_samples
        self.index_split = _megatron_split(split)
        self.unique_identifiers = {
            "class": type(self).__name__,
            "name": name,
            "split": split.name,
            "seed": seed,
            "num_samples": num_samples,
            "config": repr(config),
            "documents": int(len(documents)),
        }

    def __len__(self) -> int:
        return self.num_samples

    def epochs_at(self, samples: int) -> float:
        """Epochs of this dataset's sampling units consumed by its first ``samples`` samples."""
        samples = min(samples, self.num_samples)
        position = int(self.sample_index[samples][0]) if self.config.packed else samples
        return self.order.epochs_spanned(position)

    # ---- samples -------------------------------------------------------------------------------------
    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return {key: value[0] for key, value in self.samples([index]).items()}

    def samples(self, indices) -> dict[str, np.ndarray]:
        """Samples ``indices`` stacked into ``[b, seq_length]`` arrays, all vectorised over the batch.
        The result equals stacking ``self[i]`` for each index (randomness is keyed by index and position)."""
        return self.finish(self.read(indices))

    def read(self, indices) -> dict[str, np.ndarray]:
        """First half of :meth:`samples`: the proteins of samples ``indices`` read from the corpus and
        framed. Its cost grows with the corpus (each document is a random access into gigabytes), so
        :class:`~megatron_plm.data.samples.loader.BatchLoader` runs it for the next step on a helper thread."""
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        if indices.size and not (0 <= indices.min() and indices.max() < self.num_samples):
            raise IndexError(f"samples {indices.tolist()} out of range for {self.name} ({self.num_samples} samples)")
        if self.config.packed:
            windows, segments = self._packed_windows(indices)
        else:
            windows, segments = self._single_protein_windows(indices)
        return {"indices": indices, "windows": windows, "segments": segments}

    def finish(self, read: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Second half of :meth:`samples`: targets, loss mask and positions (MLM: the masking)."""
        if self.config.objective == "clm":
            return self._clm_samples(read["windows"], read["segments"])
        return self._mlm_samples(read["windows"], read["segments"], read["indices"])

    def _frame(self, position: int) -> np.ndarray:
        residues = self.indexed[int(self.doc_order[position])]
        if self.config.objective == "clm":
            return self.tokenizer.frame_clm(residues, reverse=bool(self.reversed[position]))
        return self.tokenizer.frame_mlm(residues)

    def _packed_pieces(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        """The pieces of samples ``indices``, one per document each sample touches, in order: sample
        ``i`` is the slice of the framed-document stream from ``sample_index[i]`` to ``sample_index[i + 1]``."""
        samples = np.asarray(self.shuffle[indices], dtype=np.int64)
        first, first_offset = (np.asarray(self.sample_index[samples, k], dtype=np.int64) for k in (0, 1))
        last, last_offset = (np.asarray(self.sample_index[samples + 1, k], dtype=np.int64) for k in (0, 1))
        pieces_per_row = last - first + 1
        row = np.repeat(np.arange(len(indices)), pieces_per_row)
        segment = np.arange(len(row)) - np.repeat(np.cumsum(pieces_per_row) - pieces_per_row, pieces_per_row)
        position = first[row] + segment
        documents = np.asarray(self.doc_order[position], dtype=np.int64)
        lengths = self.residue_lengths[documents].astype(np.int64)
        start = np.where(segment == 0, first_offset[row], 0)
        stop = np.where(position == last[row], last_offset[row] + self._extra, lengths + 2)
        return dict(position=position, segment=segment, documents=documents, lengths=lengths, start=start, stop=stop)

    def _packed_windows(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """All pieces of the batch are listed at once and their tokens read with one gather, so the
        cost is per token, not per Python call per document (``_frame`` is the per-document
        reference the tests hold this to)."""
        width = self.config.seq_length + self._extra
        p = self._packed_pieces(indices)
        reverse = np.asarray(self.reversed[p["position"]], dtype=bool) if self.config.objective == "clm" else None
        count = p["stop"] - p["start"]
        windows = self._framed_tokens(p["documents"], p["lengths"], p["start"], count, reverse=reverse)
        segments = np.repeat(p["segment"].astype(np.int32), count)
        if windows.size != len(indices) * width:
            raise RuntimeError(f"{self.name}: packed samples {indices.tolist()} do not hold {width} tokens each")
        return windows.reshape(len(indices), width), segments.reshape(len(indices), width)

    def _framed_tokens(self, documents, lengths, start, count, *, reverse=None, first_residue=None) -> np.ndarray:
        """Framed tokens ``[start, start + count)`` of each document, concatenated, read with one
        gather from the memory-mapped ``.bin``. A document of ``length`` residues frames as
        ``<cls> residues <eos>`` (CLM: ``1 residues 2``, or ``2 reversed-residues 1`` where
        ``reverse``); ``first_residue`` shifts the residues read (an MLM crop)."""
        piece = np.repeat(np.arange(len(documents)), count)
        k = np.arange(len(piece)) - np.repeat(np.cumsum(count) - count, count) + np.repeat(start, count)
        length = lengths[piece]
        residue = k - 1  # framed position k holds residue k - 1, or residue length - k when reversed
        if reverse is not None and reverse.any():
            residue = np.where(reverse[piece], length - k, residue)
        if first_residue is not None:
            residue = residue + first_residue[piece]
        tokens_bin = self.corpus.token_array()
        where = self.corpus.token_starts(documents)[piece] + np.maximum(residue, 0)
        tokens = np.take(tokens_bin, np.minimum(where, len(tokens_bin) - 1)).astype(np.int64)
        opens, closes = k == 0, k == length + 1  # their gathered values are placeholders
        tok = self.tokenizer
        if self.config.objective == "mlm":
            tokens[opens], tokens[closes] = tok.cls, tok.eos
        else:
            flipped = reverse[piece] if reverse is not None else np.zeros(len(piece), dtype=bool)
            tokens[opens] = np.where(flipped[opens], tok.c_terminus, tok.n_terminus)
            tokens[closes] = np.where(flipped[closes], tok.n_terminus, tok.c_terminus)
        return tokens

    def _single_protein_windows(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        S, tok = self.config.seq_length, self.tokenizer
        room = S - 2  # ESM-2: a random crop that leaves space for <cls> and <eos>
        documents = np.asarray(self.doc_order[indices], dtype=np.int64)
        lengths = self.residue_lengths[documents].astype(np.int64)
        starts = np.zeros(len(indices), dtype=np.int64)
        long = lengths > room
        if long.any():
            noise = uniform_noise(self.seed, STREAM_SAMPLE, indices[long])
            starts[long] = (noise * (lengths[long] - room + 1)).astype(np.int64)
        kept = np.minimum(lengths, room)  # the crop, framed as if it were the whole protein
        framed = self._framed_tokens(documents, kept, np.zeros_like(kept), kept + 2, first_residue=starts)
        windows = np.full((len(indices), S), tok.pad, dtype=np.int64)
        segments = np.full((len(indices), S), -1, dtype=np.int32)
        real = np.arange(S) < (kept + 2)[:, None]
        windows[real] = framed
        segments[real] = 0
        return windows, segments

    def _clm_samples(self, windows: np.ndarray, segments: np.ndarray) -> dict[str, np.ndarray]:
        # Position t predicts window[t + 1]; a label that opens the next protein is not predictable
        # from this one (attention stops at the boundary), so it carries no loss.
        inputs = np.ascontiguousarray(segments[:, :-1])
        return {
            "tokens": np.ascontiguousarray(windows[:, :-1]),
            "labels": np.ascontiguousarray(windows[:, 1:]),
            "loss_mask": (segments[:, 1:] == segments[:, :-1]).astype(np.float32),
            "segment_ids": inputs,
            "position_ids": segment_positions(inputs),
        }

    def _mlm_samples(self, windows: np.ndarray, segments: np.ndarray, indices: np.ndarray) -> dict[str, np.ndarray]:
        real = segments >= 0
        rows, columns = np.nonzero(real)
        body = windows[rows, columns]
        draws = uniform_fields(random_bits(self.seed, STREAM_MASK, indices[rows], columns))
        corrupted, selected = mask_tokens(
            body,
            self._is_residue[body],
            self.config.masking,
            mask_id=self.tokenizer.mask,
            replacement_ids=self._replacements,
            draws=draws,
        )
        tokens = windows.copy()
        tokens[rows, columns] = corrupted
        loss_mask = np.zeros(windows.shape, dtype=np.float32)
        loss_mask[rows, columns] = selected
        positions = segment_positions(segments)
        positions[~real] = 0
        return {
            "tokens": tokens,
            "labels": windows,
            "loss_mask": loss_mask,
            "segment_ids": segments,
            "position_ids": positions,
        }


def build_index(
    corpus: Corpus, documents: np.ndarray, *, config: SampleConfig, num_samples: int, seed: int
) -> dict[str, np.ndarray]:
    """Everything a :class:`ProteinDataset` precomputes, as arrays (what the index cache stores):
    sampling units, the document order and, when packed, megatron-core's sample index, the
    block shuffle and the per-document reversal flags."""
    clusters = corpus.cluster_index() if config.cluster_sampling else None
    units = SamplingUnits.by_cluster(documents, clusters) if clusters is not None else SamplingUnits.uniform(documents)
    order = DocumentOrder(units, seed)
    index = {"units_documents": units.documents, "unit_starts": units.unit_starts}
    if not config.packed:
        index["doc_order"] = order.documents(num_samples)
        return index
    S = config.seq_length
    extra = 1 if config.objective == "clm" else 0
    built = -(-num_samples // SHUFFLE_BLOCK) * SHUFFLE_BLOCK
    framed = (np.asarray(corpus.indexed_dataset().sequence_lengths) + 2).astype(np.int32)  # + terminus/cls and eos
    doc_order = order.documents_until_tokens(built * S + extra, framed).astype(np.int32)
    from megatron.core.datasets.helpers import build_sample_idx

    total = int(framed[doc_order].sum())
    index["doc_order"] = doc_order
    index["sample_index"] = build_sample_idx(framed, doc_order, S, 1, total, True, extra)[: built + 1]
    index["shuffle"] = np.concatenate(
        [
            b * SHUFFLE_BLOCK + rng(seed, STREAM_SAMPLE_SHUFFLE, b).permutation(SHUFFLE_BLOCK)
            for b in range(built // SHUFFLE_BLOCK)
        ]
    )
    index["reversed"] = (
        rng(seed, STREAM_REVERSE, 0).random(len(doc_order)) < config.reverse_prob
        if config.objective == "clm" and config.reverse_prob > 0
        else np.zeros(len(doc_order), dtype=bool)
    )
    return index


def _megatron_split(split: Split):
    from megatron.core.datasets.utils import Split as McoreSplit

    return {Split.TRAIN: McoreSplit.train, Split.VALID: McoreSplit.valid, Split.TEST: McoreSplit.test}[split]
