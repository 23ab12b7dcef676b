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
a pair that looks valid. A corpus already at the prefix is hard-linked to
``*.previous-<pid>`` before the renames and restored if the swap does not finish (by
:meth:`CorpusWriter.abort`, or by the next writer after a ``kill -9``).

:meth:`Corpus.open` checks ``.bin``/``.idx`` against ``meta.json`` (sizes, index header,
dtype, document count, and a sampled SHA-256 of both files), so a truncated, swapped or
rewritten file is named instead of read.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from megatron_plm.safe_io import PREVIOUS, TMP, leftovers, pid_alive, reading

META_FORMAT_VERSION = 1
INDEX_HEADER = b"MMIDIDX\x00\x00"
"""megatron-core's ``.idx`` magic (``indexed_dataset._INDEX_HEADER``); written here so that
preprocessing never imports megatron-core (and torch): it starts in a fraction of a second."""
INDEX_VERSION = 1
TOKEN_DTYPE_CODES = {"uint8": 1, "uint16": 8}
"""megatron-core's ``DType`` codes in the index header for the token dtypes written here: uint8 for
residues, uint16 for subword vocabularies (tests pin them against megatron-core)."""
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


_FINGERPRINT_BLOCKS, _FINGERPRINT_BLOCK = 64, 1 << 16


def fingerprint(path: Path) -> str:
    """SHA-256 of the size and 64 blocks of 64 KiB spread evenly over the file: reads 4 MiB
    whatever the size, and changes when a file is truncated, reordered or rewritten in place."""
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as handle:
        last = max(0, size - _FINGERPRINT_BLOCK)
        for offset in sorted({last * i // (_FINGERPRINT_BLOCKS - 1) for i in range(_FINGERPRINT_BLOCKS)}):
            handle.seek(offset)
            digest.update(handle.read(_FINGERPRINT_BLOCK))
    return digest.hexdigest()


def _index_size(documents: int) -> int:
    # header, version, dtype code, two counts; lengths (int32), pointers (int64), boundaries (int64)
    return 9 + 8 + 1 + 8 + 8 + documents * 12 + (documents + 1) * 8


def _restore(backup: Path, final: Path) -> None:
    # rename() between two hard links of one file does nothing: drop the backup instead
    if final.exists() and os.path.samefile(backup, final):
        backup.unlink()
    else:
        os.replace(backup, final)


def _scratch_paths(prefix: str) -> list[Path]:
    """The raw columns :class:`CorpusWriter` streams before :meth:`~CorpusWriter.finalize` (``.tmp-<pid>``)."""
    return [Path(prefix + suffix) for suffix in (".lengths", ".source", ".cluster")]


@dataclass
class InterruptedSwap:
    """What a preprocess run killed at a prefix left: its temporary files and the corpus it was replacing."""

    pid: int
    temporary: list[Path]
    previous: dict[str, Path]
    """Corpus file name -> ``NAME.previous-<pid>``, the hard link kept of the corpus being replaced."""
    restore: bool
    """The kill came inside the swap (the final ``.idx`` is gone): the previous files must be put back.
    Otherwise the swap had not begun or had finished, and they are only extra links, to drop."""

    def kept_as(self) -> str:
        return ", ".join(str(path) for path in self.previous.values())


def interrupted_swaps(prefix: str | os.PathLike) -> list[InterruptedSwap]:
    """The leftovers of killed preprocess runs at exactly ``prefix`` (never a neighbour such as
    ``prefix.v2``), by process id; reads only."""
    prefix = os.fspath(prefix)
    final = corpus_paths(prefix)
    temporary = leftovers([*final.values(), *_scratch_paths(prefix)], TMP)
    previous = leftovers(final.values(), PREVIOUS)
    swaps = []
    for pid in sorted(set(temporary) | set(previous)):
        kept = {name.name: path for path, name in previous.get(pid, [])}
        idx = final["idx"]
        restore = bool(kept) and not idx.exists()
        swaps.append(InterruptedSwap(pid, [p for p, _ in temporary.get(pid, [])], kept, restore))
    return swaps


def recover_interrupted(prefix: str | os.PathLike) -> None:
    """Clean up after a preprocess run killed at ``prefix``: restore the corpus it was replacing
    (``*.previous-<pid>``) and remove its temporary files; refuse if that run is still alive.
    Only files named ``<prefix><corpus suffix>.tmp-<pid>`` / ``.previous-<pid>`` are touched."""
    prefix = os.fspath(prefix)
    for swap in interrupted_swaps(prefix):
        if pid_alive(swap.pid):
            first = (swap.temporary or list(swap.previous.values()))[0]
            raise FileExistsError(
                f"{first}: another process (pid {swap.pid}) is writing a corpus at {prefix}; "
                "wait for it or choose another --output-prefix"
            )
        where = ""
        if swap.restore:  # the old corpus, whole: put it back, and drop what the killed run had moved in
            backed_up = set(swap.previous)
            for path in corpus_paths(prefix).values():
                if path.name not in backed_up:
                    path.unlink(missing_ok=True)
            where = (
                ", restored the corpus it was replacing (kept as "
                + ", ".join(p.name for p in swap.previous.values())
                + ")"
            )
        for name, path in swap.previous.items():
            if swap.restore:
                _restore(path, path.with_name(name))
            else:
                path.unlink(missing_ok=True)
        size = sum(p.stat().st_size for p in swap.temporary if p.exists())
        for path in swap.temporary:
            path.unlink(missing_ok=True)
        print(
            f"note: a preprocess run (pid {swap.pid}) was interrupted at {prefix}: removed {len(swap.temporary)} "
            f"temporary files ({size / 1e6:.1f} MB){where}",
            file=sys.stderr,
        )


def _write_npy_from_raw(target, raw_path: Path, dtype: np.dtype, count: int) -> None:
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": (count,)}
    np.lib.format.write_array_header_1_0(target, header)
    with open(raw_path, "rb") as raw:
        while block := raw.read(1 << 24):
            target.write(block)


class CorpusWriteError(ValueError):
    """The corpus could not be written (a full disk, a read-only folder): names the prefix and the cause."""


def _output_errors(method):
    """An ``OSError`` while writing (ENOSPC, EROFS, EACCES) becomes one line naming the prefix; the caller's
    :meth:`CorpusWriter.abort` then leaves the prefix as it was."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except FileExistsError:  # another live writer at this prefix: its own message
            raise
        except OSError as error:
            where = f" ({error.filename})" if error.filename else ""
            raise CorpusWriteError(
                f"cannot write the corpus at {self.prefix}: {error.strerror or error}{where}; free space or choose "
                "a writable --output-prefix (what was at the prefix is kept)"
            ) from error

    return wrapper


class CorpusWriter:
    """Append chunks of encoded sequences; :meth:`finalize` makes the corpus appear atomically."""

    @_output_errors
    def __init__(self, prefix: str | os.PathLike, *, with_clusters: bool, token_dtype=np.uint8):
        self.prefix = os.fspath(prefix)
        self.token_dtype = np.dtype(token_dtype)
        """uint8 for the residue tokenizer; uint16 for subword vocabularies beyond 256 tokens."""
        self.final = corpus_paths(prefix)
        Path(self.prefix).parent.mkdir(parents=True, exist_ok=True)
        recover_interrupted(self.prefix)
        self._backups: dict[str, Path] = {}
        tag = f".tmp-{os.getpid()}"
        self.staging = {name: path.with_name(path.name + tag) for name, path in self.final.items()}
        self._lengths_raw, self._source_raw, self._cluster_raw = (
            p.with_name(p.name + tag) for p in _scratch_paths(self.prefix)
        )
        self.with_clusters = with_clusters
        self._bin = self._ids = self._lengths = self._source = self._cluster = None
        try:
            self._bin = open(self.staging["bin"], "wb")
            self._ids = open(self.staging["ids"], "wb")
            self._lengths = open(self._lengths_raw, "wb")
            self._source = open(self._source_raw, "wb")
            self._cluster = open(self._cluster_raw, "wb") if with_clusters else None
        except BaseException:  # a read-only folder: remove what was created
            self.abort()
            raise
        self.num_documents = 0
        self.num_tokens = 0

    @_output_errors
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

    @_output_errors
    def repeated_ids(self) -> tuple[int, str | None]:
        """How many documents so far repeat an earlier document's record id, and the first such id. Reads
        the staged ids back in blocks; memory: 8 bytes per document (a 64-bit hash each), while it runs."""
        from megatron_plm.data.hashing import hash_lines

        self._ids.flush()
        keys, rest = [], b""
        with open(self.staging["ids"], "rb") as handle:
            while block := handle.read(1 << 24):
                block = rest + block
                cut = block.rfind(b"\n") + 1
                keys.append(hash_lines(block[:cut])[0])
                rest = block[cut:]
        key = np.concatenate(keys) if keys else np.zeros(0, dtype=np.uint64)
        del keys
        order = np.argsort(key, kind="stable")
        key = key[order]
        repeated = order[1:][key[1:] == key[:-1]]  # each later document of an id seen before
        del key, order
        if not len(repeated):
            return 0, None
        first = int(repeated.min())
        with open(self.staging["ids"], "rb") as handle:
            for number, line in enumerate(handle):
                if number == first:
                    return len(repeated), line.rstrip(b"\n").decode("utf-8", errors="replace")
        return len(repeated), None

    def _write_index(self, path: Path) -> None:
        # megatron-core's index layout: header, version, dtype code, counts, then
        # lengths (int32), byte pointers (int64), document boundaries (int64).
        n = self.num_documents
        with open(path, "wb") as out, open(self._lengths_raw, "rb") as lengths_file:
            out.write(INDEX_HEADER)
            out.write(struct.pack("<Q", INDEX_VERSION))
            out.write(struct.pack("<B", TOKEN_DTYPE_CODES[self.token_dtype.name]))
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

    @_output_errors
    def finalize(self, meta: dict, cluster_names: Iterable[str] | None = None) -> dict[str, Path]:
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
            with open(self.staging["clusters"], "w", encoding="utf-8") as names:
                names.writelines(f"{name}\n" for name in cluster_names or ())
            written += ["cluster", "clusters"]
        meta = {
            "format_version": META_FORMAT_VERSION,
            "num_documents": self.num_documents,
            "num_tokens": self.num_tokens,
            **meta,
            "fingerprints": {name: fingerprint(self.staging[name]) for name in ("bin", "idx")},
        }
        self.staging["meta"].write_text(json.dumps(meta, indent=2) + "\n")
        # A previous corpus at this prefix: keep it whole under hard links until the swap is done
        # (abort, or the next writer after a kill, puts it back), and drop its index first, so
        # that its .idx can never pair with the new .bin.
        for name, path in self.final.items():
            if path.exists():
                backup = path.with_name(f"{path.name}.previous-{os.getpid()}")
                backup.unlink(missing_ok=True)
                os.link(path, backup)
                self._backups[name] = backup
        self.final["idx"].unlink(missing_ok=True)
        if not self.with_clusters:
            self.final["cluster"].unlink(missing_ok=True)
            self.final["clusters"].unlink(missing_ok=True)
        for name in written:
            os.replace(self.staging[name], self.final[name])
        os.replace(self.staging["idx"], self.final["idx"])
        for backup in self._backups.values():
            backup.unlink()
        self._backups = {}
        self._remove_scratch()
        return {name: self.final[name] for name in written + ["idx"]}

    def _remove_scratch(self) -> None:
        for path in (self._lengths_raw, self._source_raw, self._cluster_raw):
            path.unlink(missing_ok=True)

    def abort(self) -> None:
        """Remove every temporary file and restore a corpus the swap had started to replace."""
        for handle in (self._bin, self._ids, self._lengths, self._source, self._cluster):
            if handle is not None and not handle.closed:
                try:
                    handle.close()
                except OSError:  # flushing on a full disk fails: the file is removed below anyway
                    pass
        for path in self.staging.values():
            path.unlink(missing_ok=True)
        self._remove_scratch()
        if self._backups:
            for name, path in self.final.items():
                if name not in self._backups:
                    path.unlink(missing_ok=True)
            for name, backup in self._backups.items():
                _restore(backup, self.final[name])
            self._backups = {}


@dataclass
class Corpus:
    """Read side: the megatron dataset and the metadata columns of a preprocessed corpus."""

    prefix: str
    meta: dict
    _indexed: object = field(default=None, repr=False, compare=False)
    _tokens: np.ndarray | None = field(default=None, repr=False, compare=False)

    @classmethod
    def open(cls, prefix: str | os.PathLike) -> "Corpus":
        paths = corpus_paths(prefix)
        for swap in interrupted_swaps(prefix):
            if swap.restore:
                raise FileNotFoundError(
                    f"{paths['idx']} not found: a preprocess run (pid {swap.pid}) was killed while replacing the "
                    f"corpus at {os.fspath(prefix)}; the previous corpus is kept whole as {swap.kept_as()}. "
                    "Rerun preprocess at this --output-prefix (it puts the previous corpus back first), or "
                    "rename those files back without their '.previous-" + str(swap.pid) + "' suffix"
                )
        for name in ("bin", "idx", "meta"):
            if not paths[name].exists():
                raise FileNotFoundError(f"{paths[name]} not found: is {os.fspath(prefix)!r} a preprocessed corpus?")
        try:
            meta = json.loads(paths["meta"].read_text())
            if not isinstance(meta, dict):
                raise ValueError("not a JSON object")
        except (ValueError, UnicodeDecodeError) as error:
            raise ValueError(f"{paths['meta']} is corrupt ({error}); rerun preprocess for this corpus") from error
        check_files(paths, meta)
        return cls(prefix=os.fspath(prefix), meta=meta)

    def indexed_dataset(self):
        """megatron-core's ``IndexedDataset`` (one per Corpus). Arrays it returns view its memory map,
        which it closes when garbage-collected: keep the Corpus alive while you use them."""
        if self._indexed is None:
            from megatron.core.datasets.indexed_dataset import IndexedDataset

            self._indexed = IndexedDataset(self.prefix)
        return self._indexed

    def token_array(self) -> np.ndarray:
        """The whole ``.bin`` as one read-only memory-mapped array of token ids, so that a batch's
        documents are read with one vectorised gather instead of one ``IndexedDataset`` call each."""
        if self._tokens is None:
            dtype = np.dtype(self.meta.get("token_dtype", "uint8"))
            self._tokens = np.memmap(corpus_paths(self.prefix)["bin"], dtype=dtype, mode="r")
        return self._tokens

    def token_starts(self, documents: np.ndarray) -> np.ndarray:
        """Position in :meth:`token_array` of each document's first token (int64)."""
        index = self.indexed_dataset().index
        return index.sequence_pointers[documents] // np.int64(index.dtype_size)

    def __len__(self) -> int:
        return int(self.meta["num_documents"])

    @property
    def source_labels(self) -> list[str]:
        return list(self.meta["sources"])

    def _column(self, name: str, dtype) -> np.ndarray:
        """A per-document ``.npy`` column, checked: a damaged one is ``FILE: problem``, never misread."""
        path = corpus_paths(self.prefix)[name]
        with reading(path, "rerun preprocess for this corpus"):
            array = np.load(path, mmap_mode="r", allow_pickle=False)
            if array.shape != (len(self),) or array.dtype != np.dtype(dtype):
                raise ValueError(f"holds {array.dtype}{list(array.shape)}, expected {np.dtype(dtype)}[{len(self)}]")
        return array

    def source_index(self) -> np.ndarray:
        return self._column("source", np.uint16)

    def cluster_index(self) -> np.ndarray | None:
        return self._column("cluster", np.int64) if corpus_paths(self.prefix)["cluster"].exists() else None

    def record_ids(self) -> list[str]:
        path = corpus_paths(self.prefix)["ids"]
        with reading(path, "rerun preprocess for this corpus"):
            # split on "\n" only: ids may hold characters str.splitlines() would also break at
            ids = path.read_bytes().decode("utf-8").split("\n")[:-1]
            if len(ids) != len(self):
                raise ValueError(f"{len(ids):,} ids for {len(self):,} documents")
        return ids


def check_files(paths: dict[str, Path], meta: dict) -> None:
    """``.bin`` and ``.idx`` are the files ``meta.json`` describes (sizes, header, dtype, counts,
    fingerprints); raise naming the file that is not."""
    fix = "; rerun preprocess for this corpus"
    try:
        documents, tokens = int(meta["num_documents"]), int(meta["num_tokens"])
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{paths['meta']} lacks num_documents/num_tokens ({error}){fix}") from error
    dtype = meta.get("token_dtype", "uint8")
    if dtype not in TOKEN_DTYPE_CODES:
        raise ValueError(f"{paths['meta']}: token_dtype {dtype!r}, this version reads {sorted(TOKEN_DTYPE_CODES)}{fix}")
    idx, size = paths["idx"], paths["idx"].stat().st_size
    with open(idx, "rb") as handle:
        head = handle.read(34)
    if head[:9] != INDEX_HEADER:
        raise ValueError(f"{idx} is not a megatron index (bad header){fix}")
    version, code, sequences, boundaries = struct.unpack("<QBQQ", head[9:34]) if len(head) == 34 else (0, 0, -1, -1)
    if version != INDEX_VERSION or code != TOKEN_DTYPE_CODES[dtype]:
        raise ValueError(
            f"{idx}: index version {version}, dtype code {code}; expected version {INDEX_VERSION}, "
            f"{dtype} tokens (code {TOKEN_DTYPE_CODES[dtype]}) as {paths['meta']} says{fix}"
        )
    if sequences != documents or boundaries != documents + 1:
        raise ValueError(f"{idx} indexes {sequences:,} documents, {paths['meta']} says {documents:,}{fix}")
    if size != _index_size(documents):
        raise ValueError(
            f"{idx} is {size:,} bytes, expected {_index_size(documents):,} for {documents:,} documents "
            f"(truncated?){fix}"
        )
    width = np.dtype(dtype).itemsize
    if paths["bin"].stat().st_size != tokens * width:
        raise ValueError(
            f"{paths['bin']} is {paths['bin'].stat().st_size:,} bytes, {paths['meta']} says "
            f"{tokens:,} tokens of {width} byte(s) (truncated or replaced?){fix}"
        )
    for name, expected in meta.get("fingerprints", {}).items():  # absent in corpora of older versions
        if name in ("bin", "idx") and fingerprint(paths[name]) != expected:
            raise ValueError(
                f"{paths[name]} differs from the file preprocess wrote (sampled sha256 in "
                f"{paths['meta']}): corrupt or replaced{fix}"
            )
