"""UniRef-style cluster mappings (``representative<TAB>member`` per line), as MMseqs2 writes them.

The mapping is joined to record ids by 64-bit hashes held in NumPy arrays, sorted once,
never by Python objects: 16 bytes per member (key, check word, cluster) plus a sort's
scratch while loading, so a 939M-member mapping does not need a dict of 939M strings.
Ids are hashed in vectorised 8-byte words (:func:`hash_fields`); a second, independent
32-bit check word makes a false match between a record id and a member ~2^-96 per pair.
Two distinct members with the same 64-bit key are reported (file, both lines) rather than
silently merged. Cluster names are not kept in memory: :meth:`ClusterMap.names` streams
them from the file again, in order of first appearance.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from megatron_plm.data.preprocess.fasta import InputFormatError, iter_chunks
from megatron_plm.data.hashing import hash_fields, hash_lines

_HEADERS = {(b"cluster_representative", b"member"), (b"representative", b"member")}
_CHUNK_BYTES = 1 << 20  # ~60k lines: the parser's per-line temporaries (~150 bytes each) stay ~10 MB


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

    @property
    def num_clusters(self) -> int:
        return len(self.first_lines)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ClusterMap":
        """Read a plain or gzip TSV; a first line naming the columns is skipped."""
        path = os.fspath(path)
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
            _raise_for_duplicates(path, same, order, check, cluster)
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
    if np.any(check != first_check):
        at = int(np.argmax(check != first_check))
        first = int(np.flatnonzero(new)[group[at]])
        found = _find(path, [order[first], order[at]])
        (line_a, rep_a, _), (line_b, rep_b, _) = found[int(order[first])], found[int(order[at])]
        raise InputFormatError(
            path,
            line_b,
            f"representatives {rep_a.decode(errors='replace')!r} (line {line_a}) and "
            f"{rep_b.decode(errors='replace')!r} have the same 64-bit hash; rename one of them",
        )
    del check, first_check
    first_of_group = order[new]  # stable sort: the earliest line of each representative
    rank = np.empty(len(first_of_group), dtype=np.int32)
    by_appearance = np.argsort(first_of_group)
    rank[by_appearance] = np.arange(len(first_of_group), dtype=np.int32)
    cluster_of_line = np.empty(len(order), dtype=np.int32)
    cluster_of_line[order] = rank[group]
    return cluster_of_line, first_of_group[by_appearance]


def _raise_for_duplicates(path, same: np.ndarray, order: np.ndarray, check: np.ndarray, cluster: np.ndarray) -> None:
    """Adjacent equal keys (``same``: first of each pair) are a hash collision or a member in two clusters."""
    collision = check[same] != check[same + 1]
    conflict = ~collision & (cluster[same] != cluster[same + 1])
    if not (collision.any() or conflict.any()):
        return
    bad = same[collision | conflict]
    later = order[bad + 1]
    at = int(np.argmin(later))
    pair = [int(order[bad[at]]), int(later[at])]
    found = _find(path, pair)
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
