"""UniRef-style cluster mappings (``representative<TAB>member`` per line), as MMseqs2 writes them.

The mapping is joined to record ids by 64-bit hashes held in NumPy arrays, sorted once,
never by Python objects: 16 bytes per member (key, check word, cluster) plus a sort's
scratch while loading, so a 939M-member mapping does not need a dict of 939M strings.
Ids are hashed in vectorised 8-byte words (:func:`hash_fields`); a second, independent
32-bit check word makes a false match between a record id and a member ~2^-96 per pair.
Two distinct members with the same 64-bit key are reported (file, both lines) rather than
silently merged. Cluster names are not kept in memory: :meth:`ClusterMap.names` streams
them from the file again, in order of first appearance.

That in-memory join peaks at ~30 bytes per member (~27 GiB at 939M). Given a memory bound
(``memory_bytes``; preprocess: ``--cluster-memory-gb``, default 4) that the mapping would exceed,
:meth:`ClusterMap.load` joins out of core instead, with the same arrays as a result: hashes are
partitioned by their top bits into temporary files (so partitions, taken in order, are in key
order), each partition is sorted alone, and the per-line arrays between the two sorts are memory
maps. The result is memory-mapped from a temporary directory the map owns and removes on
:meth:`ClusterMap.close` (on an error, on SIGTERM through the caller's clean-up, at exit at the
latest); about 72 bytes per member of disk at its peak.
"""

from __future__ import annotations

import gzip
import os
import shutil
import weakref
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from megatron_plm.data.hashing import hash_fields, hash_lines
from megatron_plm.data.preprocess.fasta import InputFormatError, iter_chunks, open_binary
from megatron_plm.safe_io import TMP, check_free_space, leftovers, pid_alive

_HEADERS = {(b"cluster_representative", b"member"), (b"representative", b"member")}
_CHUNK_BYTES = 1 << 20  # ~60k lines: the parser's per-line temporaries (~150 bytes each) stay ~10 MB
IN_MEMORY_BYTES_PER_LINE = 48
"""What the in-memory join may need per line at its peak (~30 measured, with margin): above the bound, out of core."""
_PARTITION_BYTES_PER_LINE = 80
"""Peak bytes per record while one partition is sorted: the 20-byte records, the argsort, sorted copies."""
_FIXED_BYTES = 64 << 20
"""The parser's chunk temporaries and the interpreter, outside the partitions."""
_RECORD = np.dtype([("key", "<u8"), ("check", "<u4"), ("line", "<i8")])
JOIN_DISK_BYTES_PER_LINE = 72
"""Temporary disk of the out-of-core join at its peak, per line (partitions 2 x 20, per-line maps 12, result 16)."""
_WORKDIR = ".cluster-join"


@dataclass
class _Lines:
    """The data lines of one chunk of the mapping: field spans into ``buffer`` and file line numbers."""

    buffer: np.ndarray
    line_numbers: np.ndarray
    rep_starts: np.ndarray
    rep_lengths: np.ndarray
    member_starts: np.ndarray
    member_lengths: np.ndarray

    def field(self, which: str, i: int) -> bytes:
        start, length = getattr(self, f"{which}_starts")[i], getattr(self, f"{which}_lengths")[i]
        return self.buffer[start : start + length].tobytes()


def _iter_lines(path: str | os.PathLike, chunk_bytes: int = _CHUNK_BYTES) -> Iterator[_Lines]:
    """Parse the mapping chunk by chunk (vectorised); blank lines and a header line are skipped."""
    for first_line, chunk in iter_chunks(path, boundary=b"\n", chunk_bytes=chunk_bytes):
        if not chunk.endswith(b"\n"):
            chunk += b"\n"
        buffer = np.frombuffer(chunk, dtype=np.uint8)
        ends = np.flatnonzero(buffer == ord("\n"))
        starts = np.r_[0, ends[:-1] + 1]
        numbers = first_line + np.arange(len(ends))
        ends = ends - ((ends > starts) & (buffer[ends - 1] == ord("\r")))
        keep = ends > starts
        starts, ends, numbers = starts[keep], ends[keep], numbers[keep]
        tabs = np.flatnonzero(buffer == ord("\t"))
        first_tab = np.searchsorted(tabs, starts)
        fields = np.searchsorted(tabs, ends) - first_tab + 1
        if np.any(fields != 2):
            bad = int(np.argmax(fields != 2))
            raise InputFormatError(
                path, int(numbers[bad]), f"expected 'representative<TAB>member', got {fields[bad]} tab-separated fields"
            )
        tab = tabs[np.minimum(first_tab, len(tabs) - 1)] if len(tabs) else starts
        lines = _Lines(buffer, numbers, starts, tab - starts, tab + 1, ends - tab - 1)
        if len(numbers) and numbers[0] == 1 and (lines.field("rep", 0), lines.field("member", 0)) in _HEADERS:
            lines = _Lines(buffer, numbers[1:], starts[1:], (tab - starts)[1:], (tab + 1)[1:], (ends - tab - 1)[1:])
        yield lines


def _find(path, data_lines: np.ndarray) -> dict[int, tuple[int, bytes, bytes]]:
    """(file line, representative, member) of the given data-line indices, by reading the file again."""
    wanted = np.unique(np.asarray(data_lines, dtype=np.int64))
    found: dict[int, tuple[int, bytes, bytes]] = {}
    base = 0
    for lines in _iter_lines(path):
        count = len(lines.line_numbers)
        for index in wanted[(wanted >= base) & (wanted < base + count)]:
            i = int(index - base)
            found[int(index)] = (int(lines.line_numbers[i]), lines.field("rep", i), lines.field("member", i))
        base += count
    return found


@dataclass
class ClusterMap:
    path: str
    keys: np.ndarray
    """Member keys (uint64), sorted, unique."""
    checks: np.ndarray
    """Each member's 32-bit check word (uint32)."""
    clusters: np.ndarray
    """Each member's cluster index (int32); clusters are numbered in order of first appearance."""
    first_lines: np.ndarray
    """Data-line index (0-based, blank and header lines not counted) where each cluster first appears."""
    workdir: str | None = None
    """The out-of-core join's temporary directory, which the arrays map (None: they are in memory)."""

    def close(self) -> None:
        """Remove the out-of-core join's temporary files (the arrays are unusable afterwards)."""
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def __enter__(self) -> "ClusterMap":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def num_clusters(self) -> int:
        return len(self.first_lines)

    @classmethod
    def load(
        cls, path: str | os.PathLike, *, memory_bytes: int | None = None, temp_dir: str | os.PathLike | None = None
    ) -> "ClusterMap":
        """Read a plain or gzip TSV; a first line naming the columns is skipped. ``memory_bytes``: join out
        of core (temporary files in ``temp_dir``, default the mapping's folder) when the in-memory join
        could need more; None: in memory whatever the size."""
        path = os.fspath(path)
        if memory_bytes is not None:
            lines = count_lines(path)
            if lines * IN_MEMORY_BYTES_PER_LINE > memory_bytes:
                return _load_out_of_core(cls, path, lines, memory_bytes, temp_dir or os.path.dirname(path) or ".")
        cluster_of_line, first_lines = _number_clusters(path)
        key = np.empty(len(cluster_of_line), dtype=np.uint64)  # filled in place: no list + concatenate copy
        check = np.empty(len(cluster_of_line), dtype=np.uint32)
        done = 0
        for lines in _iter_lines(path):
            count = len(lines.line_numbers)
            key[done : done + count], check[done : done + count] = hash_fields(
                lines.buffer, lines.member_starts, lines.member_lengths
            )
            done += count
        order = np.argsort(key, kind="stable")
        key.sort()  # in place: the same values as key[order] without a second 8 bytes per member
        check = check[order]
        cluster = cluster_of_line[order]
        del cluster_of_line
        same = np.flatnonzero(key[1:] == key[:-1])
        if same.size:
            pair = _duplicate_pair(same, order, check, cluster)
            if pair is not None:
                _raise_for_duplicates(path, pair)
            keep = np.ones(len(key), dtype=bool)
            keep[same + 1] = False  # the same member listed again in the same cluster
            key, check, cluster = key[keep], check[keep], cluster[keep]
        return cls(path=path, keys=key, checks=check, clusters=cluster, first_lines=first_lines)

    def names(self) -> Iterator[str]:
        """Cluster names (representative ids) by cluster index, read from the file again."""
        base = 0
        for lines in _iter_lines(self.path):
            count = len(lines.line_numbers)
            lo, hi = np.searchsorted(self.first_lines, [base, base + count])
            for index in self.first_lines[lo:hi]:
                yield lines.field("rep", int(index - base)).decode("utf-8", errors="replace")
            base += count

    def lookup(self, ids: bytes) -> np.ndarray:
        """Cluster index (int64) for each ``\\n``-terminated record id in ``ids``; -1 if not in the mapping."""
        key, check = hash_lines(ids)
        if not len(self.keys):
            return np.full(len(key), -1, dtype=np.int64)
        position = np.minimum(np.searchsorted(self.keys, key), len(self.keys) - 1)
        found = (self.keys[position] == key) & (self.checks[position] == check)
        return np.where(found, self.clusters[position], -1).astype(np.int64)


def _number_clusters(path: str) -> tuple[np.ndarray, np.ndarray]:
    """Cluster index of every data line (int32) and each cluster's first data line, by sorting
    representative keys; two representatives with one key are an error, not a merged cluster."""
    keys, checks = [], []
    for lines in _iter_lines(path):
        key, check = hash_fields(lines.buffer, lines.rep_starts, lines.rep_lengths)
        keys.append(key)
        checks.append(check)
    if not keys or not sum(len(k) for k in keys):
        raise InputFormatError(path, None, "empty cluster mapping")
    key, check = np.concatenate(keys), np.concatenate(checks)
    del keys, checks
    order = np.argsort(key, kind="stable")
    key.sort()  # in place: the same values as key[order] without a second 8 bytes per line
    new = np.r_[True, key[1:] != key[:-1]]
    del key
    group = np.cumsum(new, dtype=np.int32) - 1  # int32: half the memory of the default int64 at 1e8 lines
    check = check[order]
    first_check = check[new][group]
    _check_representatives(path, new, group, check, first_check, order)
    del check, first_check
    first_of_group = order[new]  # stable sort: the earliest line of each representative
    rank = np.empty(len(first_of_group), dtype=np.int32)
    by_appearance = np.argsort(first_of_group)
    rank[by_appearance] = np.arange(len(first_of_group), dtype=np.int32)
    cluster_of_line = np.empty(len(order), dtype=np.int32)
    cluster_of_line[order] = rank[group]
    return cluster_of_line, first_of_group[by_appearance]


def _duplicate_pair(same: np.ndarray, order: np.ndarray, check: np.ndarray, cluster: np.ndarray):
    """Adjacent equal keys (``same``: first of each pair) are a hash collision or a member in two clusters:
    the data lines of the pair whose later line comes first, or None when they are only repeated lines."""
    collision = check[same] != check[same + 1]
    conflict = ~collision & (cluster[same] != cluster[same + 1])
    if not (collision.any() or conflict.any()):
        return None
    bad = same[collision | conflict]
    later = order[bad + 1]
    at = int(np.argmin(later))
    return int(order[bad[at]]), int(later[at])


def _raise_for_duplicates(path, pair: tuple[int, int]) -> None:
    found = _find(path, list(pair))
    (line_a, _, member_a), (line_b, _, member_b) = found[pair[0]], found[pair[1]]
    if member_a == member_b:
        raise InputFormatError(
            path, line_b, f"member {member_b.decode(errors='replace')!r} is in two clusters (also line {line_a})"
        )
    raise InputFormatError(
        path,
        line_b,
        f"members {member_a.decode(errors='replace')!r} (line {line_a}) and "
        f"{member_b.decode(errors='replace')!r} have the same 64-bit hash; rename one of them",
    )


def _check_representatives(path, new, group, check, first_check, order) -> None:
    """Two representatives with one key (sorted; ``order``: their data lines) are an error naming both."""
    if np.any(check != first_check):
        at = int(np.argmax(check != first_check))
        first = int(np.flatnonzero(new)[group[at]])
        found = _find(path, [int(order[first]), int(order[at])])
        (line_a, rep_a, _), (line_b, rep_b, _) = found[int(order[first])], found[int(order[at])]
        raise InputFormatError(
            path,
            line_b,
            f"representatives {rep_a.decode(errors='replace')!r} (line {line_a}) and "
            f"{rep_b.decode(errors='replace')!r} have the same 64-bit hash; rename one of them",
        )


def count_lines(path: str | os.PathLike) -> int:
    """Lines in a plain or gzip file (an upper bound on its data lines), read in blocks."""
    count, last = 0, b"\n"
    try:
        with open_binary(path) as handle:
            while block := handle.read(1 << 24):
                count += block.count(b"\n")
                last = block[-1:]
    except (EOFError, gzip.BadGzipFile, zlib.error) as error:
        raise InputFormatError(path, None, f"truncated or corrupt gzip stream ({error})") from error
    return count + (last != b"\n")


class _Partitions:
    """Records (key, check, data line) appended to one file per top-bits value of the key, buffered."""

    def __init__(self, directory: Path, bits: int, flush_bytes: int):
        self.directory, self.bits, self.flush_bytes = directory, bits, flush_bytes
        directory.mkdir()
        self.pending: list[list[np.ndarray]] = [[] for _ in range(1 << bits)]
        self.pending_bytes = 0

    def path(self, part: int) -> Path:
        return self.directory / f"{part:05d}"

    def add(self, key: np.ndarray, check: np.ndarray, line: np.ndarray) -> None:
        records = np.empty(len(key), dtype=_RECORD)
        records["key"], records["check"], records["line"] = key, check, line
        if self.bits:
            part = (key >> np.uint64(64 - self.bits)).astype(np.int64)
            order = np.argsort(part, kind="stable")  # stable: each partition stays in line order
            records = records[order]
            bounds = np.searchsorted(part[order], np.arange((1 << self.bits) + 1))
            for p in np.flatnonzero(np.diff(bounds)):
                self.pending[p].append(records[bounds[p] : bounds[p + 1]])
        else:
            self.pending[0].append(records)
        self.pending_bytes += records.nbytes
        if self.pending_bytes > self.flush_bytes:
            self.flush()

    def flush(self) -> None:
        for part, pieces in enumerate(self.pending):
            if pieces:
                with open(self.path(part), "ab") as handle:
                    for piece in pieces:
                        handle.write(piece.tobytes())
                pieces.clear()
        self.pending_bytes = 0

    def take(self, part: int) -> np.ndarray:
        """One partition's records (in line order), its file removed."""
        path = self.path(part)
        if not path.exists():
            return np.zeros(0, dtype=_RECORD)
        records = np.fromfile(path, dtype=_RECORD)
        path.unlink()
        return records


def _map(path: Path, dtype, count: int) -> np.ndarray:
    """A read-only map of ``count`` items of a raw file (an empty array when there are none)."""
    return np.memmap(path, dtype=dtype, mode="r", shape=(count,)) if count else np.zeros(0, dtype=dtype)


def remove_abandoned_joins(temp_dir: str | os.PathLike) -> None:
    """Temporary directories of out-of-core joins whose process no longer runs (killed with -9)."""
    for pid, found in leftovers([Path(temp_dir) / _WORKDIR], TMP).items():
        if not pid_alive(pid):
            for staged, _ in found:
                shutil.rmtree(staged, ignore_errors=True)


def _load_out_of_core(cls, path: str, lines_bound: int, memory_bytes: int, temp_dir) -> ClusterMap:
    """The join of :meth:`ClusterMap.load`, bit for bit, in ``memory_bytes`` plus memory-mapped temporary files."""
    remove_abandoned_joins(temp_dir)
    check_free_space(
        temp_dir,
        lines_bound * JOIN_DISK_BYTES_PER_LINE,
        what=f"the out-of-core join of {path}",
        fix="free space, or give a folder with room as --cluster-temp-dir (or more memory: --cluster-memory-gb)",
        detail=f"{JOIN_DISK_BYTES_PER_LINE} bytes for each of up to {lines_bound:,} lines",
    )
    work = Path(temp_dir) / f"{_WORKDIR}.tmp-{os.getpid()}"
    work.mkdir(parents=True)
    try:
        usable = max(memory_bytes - _FIXED_BYTES, 16 << 20)
        partitions = -(-lines_bound * _PARTITION_BYTES_PER_LINE // usable)
        bits = min(max(int(partitions - 1).bit_length(), 0), 12)
        flush = max(usable // 8, 1 << 20)
        by_rep = _Partitions(work / "rep", bits, flush)
        by_member = _Partitions(work / "member", bits, flush)
        total = 0
        for lines in _iter_lines(path):
            index = np.arange(total, total + len(lines.line_numbers), dtype=np.int64)
            by_rep.add(*hash_fields(lines.buffer, lines.rep_starts, lines.rep_lengths), index)
            by_member.add(*hash_fields(lines.buffer, lines.member_starts, lines.member_lengths), index)
            total += len(index)
        if not total:
            raise InputFormatError(path, None, "empty cluster mapping")
        by_rep.flush()
        by_member.flush()
        block = max(min(1 << 22, usable // 64), 1 << 16)

        # Each representative's first data line, for every line: per partition, as _number_clusters does.
        first_of_line = np.memmap(work / "first_of_line", dtype=np.int64, mode="w+", shape=(total,))
        for part in range(1 << bits):
            records = by_rep.take(part)
            if not len(records):
                continue
            order = np.argsort(records["key"], kind="stable")
            key = records["key"][order]
            new = np.r_[True, key[1:] != key[:-1]]
            del key
            group = np.cumsum(new, dtype=np.int64) - 1
            line = records["line"][order]
            check = records["check"][order]
            del records, order
            _check_representatives(path, new, group, check, check[new][group], line)
            first_of_line[line] = line[new][group]
            del line, check, group, new
        first_of_line.flush()

        # Clusters numbered by first appearance: a first line's rank among first lines, streamed in line order.
        cluster_of_line = np.memmap(work / "cluster_of_line", dtype=np.int32, mode="w+", shape=(total,))
        clusters = 0
        with open(work / "first_lines", "wb") as firsts:
            for start in range(0, total, block):
                first = np.asarray(first_of_line[start : start + block])
                position = np.arange(start, start + len(first), dtype=np.int64)
                is_first = first == position
                found = int(is_first.sum())
                numbers = np.zeros(len(first), dtype=np.int32)
                numbers[is_first] = np.arange(clusters, clusters + found, dtype=np.int32)
                cluster_of_line[start : start + len(first)] = numbers
                later = ~is_first  # a first line earlier (written above or in an earlier block)
                numbers[later] = cluster_of_line[first[later]]
                cluster_of_line[start : start + len(first)] = numbers
                firsts.write(position[is_first].tobytes())
                clusters += found
        del first_of_line
        (work / "first_of_line").unlink()

        # Members sorted by key, partition by partition (top bits first: the concatenation is sorted).
        count, problem = 0, None
        with (
            open(work / "keys", "wb") as keys,
            open(work / "checks", "wb") as checks,
            open(work / "clusters", "wb") as cluster_file,
        ):
            for part in range(1 << bits):
                records = by_member.take(part)
                if not len(records):
                    continue
                order = np.argsort(records["key"], kind="stable")
                records = records[order]
                del order
                key, check, line = records["key"], records["check"], records["line"]
                cluster = np.asarray(cluster_of_line[line])
                same = np.flatnonzero(key[1:] == key[:-1])
                if same.size:
                    pair = _duplicate_pair(same, line, check, cluster)
                    if pair is not None and (problem is None or pair[1] < problem[1]):
                        problem = pair  # the in-memory join names the pair whose later line is first
                    keep = np.ones(len(key), dtype=bool)
                    keep[same + 1] = False
                    key, check, cluster = key[keep], check[keep], cluster[keep]
                if problem is None:
                    keys.write(np.ascontiguousarray(key).tobytes())
                    checks.write(np.ascontiguousarray(check).tobytes())
                    cluster_file.write(cluster.tobytes())
                count += len(key)
                del records, key, check, line, cluster
        del cluster_of_line
        (work / "cluster_of_line").unlink()
        if problem is not None:
            _raise_for_duplicates(path, problem)
        mapping = cls(
            path=path,
            keys=_map(work / "keys", np.uint64, count),
            checks=_map(work / "checks", np.uint32, count),
            clusters=_map(work / "clusters", np.int32, count),
            first_lines=_map(work / "first_lines", np.int64, clusters),
            workdir=str(work),
        )
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    weakref.finalize(mapping, shutil.rmtree, str(work), True)  # at the latest when the map is dropped or at exit
    return mapping
