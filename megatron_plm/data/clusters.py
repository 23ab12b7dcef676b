"""UniRef-style cluster mappings (``representative<TAB>member`` per line), as MMseqs2 writes them."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from megatron_plm.data.fasta import InputFormatError, open_binary

_HEADERS = {(b"cluster_representative", b"member"), (b"representative", b"member")}


@dataclass
class ClusterMap:
    names: list[str]
    """Cluster names (representative ids), by cluster index, in order of first appearance."""
    member_to_cluster: dict[bytes, int]

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ClusterMap":
        """Read a plain or gzip TSV; a first line naming the columns is skipped."""
        names: list[str] = []
        index: dict[bytes, int] = {}
        members: dict[bytes, int] = {}
        with open_binary(path) as handle:
            for number, raw in enumerate(handle, start=1):
                line = raw.rstrip(b"\r\n")
                if not line:
                    continue
                fields = line.split(b"\t")
                if len(fields) != 2:
                    raise InputFormatError(
                        path, number, f"expected 'representative<TAB>member', got {len(fields)} tab-separated fields"
                    )
                if number == 1 and tuple(fields) in _HEADERS:
                    continue
                representative, member = fields
                cluster = index.get(representative)
                if cluster is None:
                    cluster = index[representative] = len(names)
                    names.append(representative.decode("utf-8", errors="replace"))
                previous = members.setdefault(member, cluster)
                if previous != cluster:
                    raise InputFormatError(
                        path, number, f"member {member.decode(errors='replace')!r} is in two clusters"
                    )
        if not members:
            raise InputFormatError(path, None, "empty cluster mapping")
        return cls(names=names, member_to_cluster=members)

    def lookup(self, record_ids: list[bytes]) -> np.ndarray:
        """Cluster index per record id; -1 for ids not in the mapping."""
        get = self.member_to_cluster.get
        return np.fromiter((get(i, -1) for i in record_ids), dtype=np.int64, count=len(record_ids))
