"""A tokenized protein corpus on disk: megatron ``.bin/.idx`` plus per-sequence metadata.

Files for a prefix ``P`` (one document per sequence, in input order):

- ``P.bin``, ``P.idx``: residue token ids (uint8), readable by megatron-core's ``IndexedDataset``;
  per-sequence lengths live in the ``.idx``.
- ``P.ids.txt``: the record id of document *i* on line *i*.
- ``P.source.npy``: uint16 index of each document's source label (labels in ``P.meta.json``).
- ``P.cluster.npy`` + ``P.clusters.txt``: when a cluster mapping was given, each document's cluster
  index (-1 = not in the mapping) and the cluster names (representative ids) by index.
- ``P.meta.json``: labels, counts, tokenizer identity and the preprocessing summary.

:class:`CorpusWriter` streams all of it with memory independent of corpus size: it
writes megatron's index layout itself (megatron-core's ``IndexedDatasetBuilder``
keeps two Python ints per sequence in lists, ~70 bytes per sequence, and is fed one
document per call). Tests check its ``.idx`` is byte-identical to the builder's.
Everything goes to temporary names first and is renamed into place only by
:meth:`CorpusWriter.finalize`, the ``.idx`` last, so an interrupted run never leaves
a pair that looks valid.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

META_FORMAT_VERSION = 1
_COPY_BLOCK = 1 << 22  # elements per streamed block when finalising the index


def corpus_paths(prefix: str | os.PathLike) -> dict[str, Path]:
    prefix = os.fspath(prefix)
    return {
        "bin": Path(prefix + ".bin"),
        "idx": Path(prefix + ".idx"),
        "ids": Path(prefix + ".ids.txt"),
        "source": Path(prefix + ".source.npy"),
        "cluster": Path(prefix + ".cluster.npy"),
        "clusters": Path(prefix + ".clusters.txt"),
        "meta": Path(prefix + ".meta.json"),
    }


def _write_npy_from_raw(target, raw_path: Path, dtype: np.dtype, count: int) -> None:
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": (count,)}
    np.lib.format.write_array_header_1_0(target, header)
    with open(raw_path, "rb") as raw:
        while block := raw.read(1 << 24):
            target.write(block)


class CorpusWriter:
    """Append chunks of encoded sequences; :meth:`finalize` makes the corpus appear atomically."""

    def __init__(self, prefix: str | os.PathLike, *, with_clusters: bool, token_dtype=np.uint8):
        self.prefix = os.fspath(prefix)
        self.token_dtype = np.dtype(token_dtype)
        """uint8 for the residue tokenizer; uint16 for subword vocabularies beyond 256 tokens."""
        self.final = corpus_paths(prefix)
        Path(self.prefix).parent.mkdir(parents=True, exist_ok=True)
        tag = f".tmp-{os.getpid()}"
        self.staging = {name: path.with_name(path.name + tag) for name, path in self.final.items()}
        self._lengths_raw = Path(self.prefix + ".lengths" + tag)
        self._source_raw = Path(self.prefix + ".source" + tag)
        self._cluster_raw = Path(self.prefix + ".cluster" + tag)
        self.with_clusters = with_clusters
        self._bin = open(self.staging["bin"], "wb")
        self._ids = open(self.staging["ids"], "wb")
        self._lengths = open(self._lengths_raw, "wb")
        self._source = open(self._source_raw, "wb")
        self._cluster = open(self._cluster_raw, "wb") if with_clusters else None
        self.num_documents = 0
        self.num_tokens = 0

    def add(self, tokens: np.ndarray, lengths: np.ndarray, ids: bytes, source: int, clusters: np.ndarray | None):
        """``tokens`` (ids, stored as ``token_dtype``) of ``len(lengths)`` documents; ``ids`` one
        ``\\n``-terminated id each."""
        self._bin.write(np.ascontiguousarray(tokens, dtype=self.token_dtype).data)
        self._lengths.write(np.asarray(lengths, dtype=np.int32).tobytes())
        self._ids.write(ids)
        self._source.write(np.full(len(lengths), source, dtype=np.uint16).tobytes())
        if self._cluster is not None:
            self._cluster.write(np.asarray(clusters, dtype=np.int64).tobytes())
        self.num_documents += len(lengths)
        self.num_tokens += int(tokens.size)

    def _write_index(self, path: Path) -> None:
        # megatron-core's index layout: header, version, dtype code, counts, then
        # lengths (int32), byte pointers (int64), document boundaries (int64).
        from megatron.core.datasets.indexed_dataset import _INDEX_HEADER, DType

        n = self.num_documents
        with open(path, "wb") as out, open(self._lengths_raw, "rb") as lengths_file:
            out.write(_INDEX_HEADER)
            out.write(struct.pack("<Q", 1))
            out.write(struct.pack("<B", DType.code_from_dtype(self.token_dtype.type)))
            out.write(struct.pack("<Q", n))
            out.write(struct.pack("<Q", n + 1))
            while block := lengths_file.read(_COPY_BLOCK * 4):
                out.write(block)
            lengths_file.seek(0)
            offset, size = 0, self.token_dtype.itemsize  # byte pointers
            while block := lengths_file.read(_COPY_BLOCK * 4):
                lengths = np.frombuffer(block, dtype=np.int32).astype(np.int64) * size
                ends = np.cumsum(lengths) + offset
                out.write((ends - lengths).tobytes())
                offset = int(ends[-1])
            for start in range(0, n + 1, _COPY_BLOCK):
                out.write(np.arange(start, min(start + _COPY_BLOCK, n + 1), dtype=np.int64).tobytes())

    def finalize(self, meta: dict, cluster_names: list[str] | None = None) -> dict[str, Path]:
        """Write index and metadata, then rename everything into place (index last)."""
        for handle in (self._bin, self._ids, self._lengths, self._source, self._cluster):
            if handle is not None:
                handle.close()
        self._write_index(self.staging["idx"])
        with open(self.staging["source"], "wb") as target:
            _write_npy_from_raw(target, self._source_raw, np.uint16, self.num_documents)
        written = ["bin", "ids", "source", "meta"]
        if self.with_clusters:
            with open(self.staging["cluster"], "wb") as target:
                _write_npy_from_raw(target, self._cluster_raw, np.int64, self.num_documents)
            self.staging["clusters"].write_text("".join(f"{name}\n" for name in cluster_names or []))
            written += ["cluster", "clusters"]
        meta = {"format_version": META_FORMAT_VERSION, "num_documents": self.num_documents,
                "num_tokens": self.num_tokens, **meta}  # fmt: skip
        self.staging["meta"].write_text(json.dumps(meta, indent=2) + "\n")
        # A previous corpus at this prefix: drop its index first, so that its .idx can never
        # pair with the new .bin if we are interrupted between renames.
        self.final["idx"].unlink(missing_ok=True)
        if not self.with_clusters:
            self.final["cluster"].unlink(missing_ok=True)
            self.final["clusters"].unlink(missing_ok=True)
        for name in written:
            os.replace(self.staging[name], self.final[name])
        os.replace(self.staging["idx"], self.final["idx"])
        self._remove_scratch()
        return {name: self.final[name] for name in written + ["idx"]}

    def _remove_scratch(self) -> None:
        for path in (self._lengths_raw, self._source_raw, self._cluster_raw):
            path.unlink(missing_ok=True)

    def abort(self) -> None:
        """Remove every temporary file; the final paths are left as they were."""
        for handle in (self._bin, self._ids, self._lengths, self._source, self._cluster):
            if handle is not None and not handle.closed:
                handle.close()
        for path in self.staging.values():
            path.unlink(missing_ok=True)
        self._remove_scratch()


@dataclass
class Corpus:
    """Read side: the megatron dataset and the metadata columns of a preprocessed corpus."""

    prefix: str
    meta: dict
    _indexed: object = field(default=None, repr=False, compare=False)

    @classmethod
    def open(cls, prefix: str | os.PathLike) -> "Corpus":
        paths = corpus_paths(prefix)
        for name in ("bin", "idx", "meta"):
            if not paths[name].exists():
                raise FileNotFoundError(f"{paths[name]} not found: is {os.fspath(prefix)!r} a preprocessed corpus?")
        return cls(prefix=os.fspath(prefix), meta=json.loads(paths["meta"].read_text()))

    def indexed_dataset(self):
        """megatron-core's ``IndexedDataset`` (one per Corpus). Arrays it returns view its memory map,
        which it closes when garbage-collected: keep the Corpus alive while you use them."""
        if self._indexed is None:
            from megatron.core.datasets.indexed_dataset import IndexedDataset

            self._indexed = IndexedDataset(self.prefix)
        return self._indexed

    def __len__(self) -> int:
        return int(self.meta["num_documents"])

    @property
    def source_labels(self) -> list[str]:
        return list(self.meta["sources"])

    def source_index(self) -> np.ndarray:
        return np.load(corpus_paths(self.prefix)["source"], mmap_mode="r")

    def cluster_index(self) -> np.ndarray | None:
        path = corpus_paths(self.prefix)["cluster"]
        return np.load(path, mmap_mode="r") if path.exists() else None

    def record_ids(self) -> list[str]:
        return corpus_paths(self.prefix)["ids"].read_text(encoding="utf-8").splitlines()
