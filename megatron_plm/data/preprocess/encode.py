"""Chunk -> tokens: the preprocessing hot loop, in C++ with a pure-Python reference.

Both implementations take a chunk of whole FASTA records and return the same
:class:`EncodedChunk` (tokens of every kept record, per-record lengths, status and
ids), or the first :class:`~megatron_plm.data.preprocess.fasta.ChunkProblem`. Tests require the
two to agree byte for byte. The C++ extension (``csrc/fasta/fasta_encode.cpp``) is
imported lazily; without it the reference runs, with a warning.
"""

from __future__ import annotations

import enum
import importlib
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np

from megatron_plm.data.preprocess.fasta import (
    BAD_RESIDUE,
    NO_SEQUENCE,
    ChunkError,
    ChunkProblem,
    parse_jsonl_line,
    split_fasta_records,
)


class Unknown(enum.IntEnum):
    """What to do with a record holding a character outside the residue alphabet."""

    ERROR = 0
    UNK = 1
    SKIP = 2


class RecordStatus(enum.IntEnum):
    OK = 0
    SKIPPED_INVALID = 1
    """Dropped: an invalid character under ``Unknown.SKIP``."""
    MAPPED_UNK = 2
    """Kept, with invalid characters mapped to ``<unk>``."""


@dataclass
class EncodedChunk:
    tokens: np.ndarray
    """uint8 token ids of the records not skipped, concatenated."""
    lengths: np.ndarray
    """int64 tokens per record (0 for a skipped record)."""
    status: np.ndarray
    """uint8 :class:`RecordStatus` per record."""
    ids: bytes
    """Record ids, each followed by ``\\n``."""
    problem: ChunkProblem | None = None
    """The first problem; a chunk with a problem carries no records (the run stops at it)."""

    @classmethod
    def failed(cls, problem: ChunkProblem) -> "EncodedChunk":
        empty = np.zeros(0, dtype=np.uint8)
        return cls(tokens=empty, lengths=np.zeros(0, dtype=np.int64), status=empty, ids=b"", problem=problem)


class _ChunkBuilder:
    """Accumulates encoded records; the per-record rules both reference encoders share."""

    def __init__(self, lookup: np.ndarray, unknown: Unknown, unk_id: int):
        self.lookup, self.unknown, self.unk_id = lookup, unknown, unk_id
        self.tokens: list[np.ndarray] = []
        self.lengths: list[int] = []
        self.status: list[int] = []
        self.ids: list[bytes] = []

    def add(self, line: int, record_id: str, residues: bytes) -> ChunkProblem | None:
        body = residues.rstrip(b"*")
        if not body:
            return ChunkProblem(NO_SEQUENCE, line, record_id)
        encoded = self.lookup[np.frombuffer(body, dtype=np.uint8)]
        bad = np.flatnonzero(encoded == 255)
        state = RecordStatus.OK
        if bad.size:
            if self.unknown == Unknown.ERROR:
                first = int(bad[0])
                return ChunkProblem(BAD_RESIDUE, line, record_id, body[first], first + 1)
            if self.unknown == Unknown.UNK:
                encoded[bad] = self.unk_id
                state = RecordStatus.MAPPED_UNK
            else:
                encoded = encoded[:0]
                state = RecordStatus.SKIPPED_INVALID
        self.tokens.append(encoded)
        self.lengths.append(encoded.size)
        self.status.append(state)
        self.ids.append(record_id.encode("utf-8") + b"\n")
        return None

    def result(self, problem: ChunkProblem | None = None) -> EncodedChunk:
        if problem is not None:
            return EncodedChunk.failed(problem)
        return EncodedChunk(
            tokens=np.concatenate(self.tokens) if self.tokens else np.zeros(0, dtype=np.uint8),
            lengths=np.array(self.lengths, dtype=np.int64),
            status=np.array(self.status, dtype=np.uint8),
            ids=b"".join(self.ids),
            problem=problem,
        )


def encode_fasta_chunk_reference(chunk: bytes, lookup: np.ndarray, unknown: Unknown, unk_id: int) -> EncodedChunk:
    """Pure Python/NumPy: split records, drop trailing ``*``, map bytes through ``lookup`` (255 = invalid)."""
    builder = _ChunkBuilder(lookup, unknown, unk_id)
    try:
        for line, record_id, residues in split_fasta_records(chunk):
            if (problem := builder.add(line, record_id, residues)) is not None:
                return builder.result(problem)
    except ChunkError as error:
        return builder.result(error.problem)
    return builder.result()


def encode_jsonl_chunk(
    chunk: bytes,
    lookup: np.ndarray,
    unknown: Unknown,
    unk_id: int,
    *,
    path: str,
    first_line: int,
    sequence_key: str,
    id_key: str | None,
) -> EncodedChunk:
    """JSON lines -> the same result as the FASTA encoders. Malformed JSON raises
    :class:`~megatron_plm.data.preprocess.fasta.InputFormatError` (it needs no C++ counterpart)."""
    builder = _ChunkBuilder(lookup, unknown, unk_id)
    for offset, line in enumerate(chunk.split(b"\n")):
        if not line.strip():
            continue
        record_id, sequence = parse_jsonl_line(
            line, first_line + offset, path, sequence_key=sequence_key, id_key=id_key
        )
        if (problem := builder.add(offset, record_id, sequence)) is not None:
            return builder.result(problem)
    return builder.result()


def _encode_fasta_chunk_native(chunk: bytes, lookup: np.ndarray, unknown: Unknown, unk_id: int) -> EncodedChunk:
    tokens, n_tokens, lengths, status, ids, problem = _native().encode_fasta_chunk(chunk, lookup, int(unknown), unk_id)
    if problem is not None:
        kind, line, record, character, position = problem
        if kind != BAD_RESIDUE:
            character = position = None
        return EncodedChunk.failed(ChunkProblem(kind, line, record, character, position))
    return EncodedChunk(tokens=tokens[:n_tokens], lengths=lengths, status=status, ids=ids)


_NATIVE_MODULE = "megatron_plm.data._fasta_ext"


def _native():
    return importlib.import_module(_NATIVE_MODULE)


def native_available() -> bool:
    try:
        _native()
    except ImportError:
        return False
    return True


FastaChunkEncoder = Callable[[bytes, np.ndarray, Unknown, int], EncodedChunk]


def fasta_chunk_encoder(implementation: str = "auto") -> tuple[str, FastaChunkEncoder]:
    """``("native"|"reference", encoder)``. ``auto`` prefers C++ and warns when it is missing."""
    if implementation not in ("auto", "native", "reference"):
        raise ValueError(f"implementation must be auto, native or reference, got {implementation!r}")
    if implementation == "reference":
        return "reference", encode_fasta_chunk_reference
    if native_available():
        return "native", _encode_fasta_chunk_native
    if implementation == "native":
        raise ImportError(
            f"{_NATIVE_MODULE} is not built; reinstall with a C++ compiler: pip install --no-build-isolation -e ."
        )
    warnings.warn(
        f"{_NATIVE_MODULE} is not built; using the pure-Python FASTA encoder (much slower). "
        "Reinstall with a C++ compiler to build it.",
        RuntimeWarning,
        stacklevel=2,
    )
    return "reference", encode_fasta_chunk_reference
