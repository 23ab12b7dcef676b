"""FASTA/JSONL corpora -> a tokenized corpus (megatron ``.bin/.idx`` + metadata).

The flow, top to bottom: resolve inputs (globs, source labels) -> read each file as
chunks of whole records -> encode chunks (C++ or reference, in worker threads or
processes, results consumed in input order) -> drop records by the filters (invalid
characters, length, exact duplicates) -> :class:`~megatron_plm.data.corpus.CorpusWriter`.
Memory is bounded by ``workers x chunk size`` (plus, with ``dedup``, 16 bytes of digest
per unique sequence and, with a cluster mapping, 16 bytes per member: see clusters.py).
"""

from __future__ import annotations

import collections
import concurrent.futures
import functools
import hashlib
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, Literal

import numpy as np

from megatron_plm import __version__
from megatron_plm.data.preprocess.clusters import ClusterMap
from megatron_plm.data.preprocess.decontaminate import ExclusionList
from megatron_plm.data.corpus import CorpusWriter, corpus_paths, recover_interrupted
from megatron_plm.data.preprocess.encode import (
    EncodedChunk,
    RecordStatus,
    Unknown,
    encode_jsonl_chunk,
    fasta_chunk_encoder,
)
from megatron_plm.data.preprocess.fasta import (
    DEFAULT_CHUNK_BYTES,
    InputFormatError,
    check_text,
    iter_chunks,
    problem_to_error,
)
from megatron_plm.data.preprocess.msa import MSA_FORMATS, msa_as_fasta
from megatron_plm.data.preprocess.msa_target import cropped_homologs, read_target
from megatron_plm.data.preprocess.inputs import detect_format, resolve_inputs
from megatron_plm.data.tokenizers.subword import SubwordTokenizer
from megatron_plm.data.tokenizers.protein import ProteinTokenizer
from megatron_plm.safe_io import check_free_space, check_output_prefix, die_with_parent, terminate_as_interrupt

SKIP_REASONS = ("invalid_character", "too_short", "too_long", "duplicate", "excluded")


def mebibytes(text: str) -> int:
    """``--chunk-mb 0.5`` -> bytes."""
    return int(float(text) * 2**20)


@dataclass(kw_only=True)
class PreprocessConfig:
    inputs: list[str] = field(metadata={"cli": {"flags": ["--input"], "action": "extend", "group": "input/output"}})
    """FASTA (plain or .gz), JSONL or alignment files; globs allowed; repeatable."""
    output_prefix: str = field(metadata={"cli": {"group": "input/output"}})
    """Writes PREFIX.bin, PREFIX.idx, PREFIX.ids.txt, PREFIX.source.npy, PREFIX.meta.json (+ cluster files)."""
    source_labels: list[str] = field(
        default_factory=list,
        metadata={"cli": {"flags": ["--source-label"], "action": "append", "nargs": None, "group": "input/output"}},
    )
    """The label stored per sequence: one label for all inputs, or one per input pattern; default: each file's name without suffixes."""
    input_format: Literal["auto", "fasta", "jsonl", "a3m", "a2m", "afa", "sto"] = field(
        default="auto", metadata={"cli": {"group": "input/output"}}
    )
    """``auto``: ``.jsonl``/``.json`` are JSONL, ``.a3m``/``.a2m``/``.afa``/``.sto`` alignments (each optionally
    ``.gz``), a file starting ``# STOCKHOLM`` Stockholm, everything else FASTA -- and a FASTA whose rows hold
    gaps is refused, naming ``--input-format a2m|afa``. Alignments become their homologs: gaps dropped,
    insertions upper-cased."""
    json_keys: list[str] = field(default_factory=lambda: ["sequence"], metadata={"cli": {"group": "input/output"}})
    """JSONL: the field holding the sequence (Megatron's ``--json-keys``; one key)."""
    json_id_key: str | None = field(default="id", metadata={"cli": {"group": "input/output"}})
    """JSONL: the field holding the record id (missing: ``line<N>``)."""
    clusters: str | None = field(default=None, metadata={"cli": {"group": "input/output"}})
    """UniRef-style ``representative<TAB>member`` TSV joined on record id."""
    cluster_memory_gb: float = field(default=4.0, metadata={"cli": {"group": "run"}})
    """Memory bound of the cluster join (GB): a mapping that could need more is joined out of core, through
    temporary files (~72 bytes per member of disk), with the same result."""
    cluster_temp_dir: str | None = field(default=None, metadata={"cli": {"group": "run"}})
    """Folder for the out-of-core cluster join's temporary files (default: the output prefix's folder)."""
    exclude: str | None = field(default=None, metadata={"cli": {"group": "filters"}})
    """Exclusion list (``megatron-plm decontaminate`` output, or one record id per line): drop these records."""
    min_length: int = field(default=1, metadata={"cli": {"group": "filters"}})
    """Drop sequences with fewer residues."""
    max_length: int | None = field(default=None, metadata={"cli": {"group": "filters"}})
    """Drop sequences with more residues (None: keep all; datasets crop long ones)."""
    crop_to_target: str | None = field(default=None, metadata={"cli": {"group": "filters", "metavar": "SEQ|FASTA"}})
    """Alignment inputs: keep of each homolog only what aligns to the region of this protein (a sequence, or a
    FASTA file of one record) that the family covers -- from the first to the last of its match columns holding
    residues in at least ``--min-coverage`` of the rows, insertions between included -- so that a family
    model learns the part of the protein it will score (``evaluate dms --region covered``). The target is
    placed as ``evaluate dms --msa`` places it (the first record, a record that is a piece of it, or HMMER);
    rows with no residue in the region are dropped, and the summary says how many."""
    min_coverage: float = field(default=0.7, metadata={"cli": {"group": "filters"}})
    """With ``--crop-to-target``: the share of rows a match column needs residues in to be covered (EVE: 0.7)."""
    dedup: bool = field(default=False, metadata={"cli": {"group": "filters"}})
    """Drop exact duplicate sequences (after normalisation), keeping the first."""
    unknown: Literal["error", "unk", "skip"] = field(default="error", metadata={"cli": {"group": "filters"}})
    """A character outside the alphabet: stop with an error, map it to ``<unk>``, or skip the record."""
    workers: int = field(default=1, metadata={"cli": {"group": "run"}})
    """Encoding threads."""
    implementation: Literal["auto", "native", "reference"] = field(default="auto", metadata={"cli": {"group": "run"}})
    """``auto`` uses the C++ encoder when built, else the Python reference (with a warning)."""
    chunk_bytes: int = field(
        default=DEFAULT_CHUNK_BYTES,
        metadata={"cli": {"group": "run", "flags": ["--chunk-mb"], "type": mebibytes, "metavar": "MIB"}},
    )
    """Input read per encoding job, in bytes of whole records (on the command line: --chunk-mb, in MiB)."""
    tokenizer: str | None = field(default=None, metadata={"cli": {"group": "input/output"}})
    """A ``megatron-plm tokenizer train`` directory: store subword ids (default: one id per residue)."""
    progress: bool = field(default=True, metadata={"cli": {"group": "run"}})
    """Show a progress bar (a terminal) or progress lines (a log)."""
    overwrite: bool = field(default=False, metadata={"cli": {"group": "run"}})
    """Replace a corpus already at the output prefix (without it, that is an error)."""
    shard: str | None = field(default=None, metadata={"cli": {"group": "run", "metavar": "I/N"}})
    """``I/N``: preprocess only shard I (0-based) of N of the input files, split in order into N contiguous
    groups of about equal size, for ``merge-corpora`` to join into the corpus one run would write."""
    space_check: bool = field(default=True, metadata={"cli": {"group": "run"}})
    """Before writing, estimate the corpus's size and refuse when its filesystem has less free
    (``--no-space-check``: write anyway; a full disk then stops the run, leaving the prefix as it was)."""

    def validate(self) -> None:
        if not self.inputs:
            raise ValueError("give at least one --input")
        if self.workers < 1:
            raise ValueError(f"--workers must be >= 1, got {self.workers}")
        check_output_prefix(self.output_prefix)
        if self.min_length < 1:
            raise ValueError(f"--min-length must be >= 1, got {self.min_length}")
        if self.max_length is not None and self.max_length < self.min_length:
            raise ValueError(f"--max-length ({self.max_length}) is below --min-length ({self.min_length})")
        if len(self.source_labels) not in (0, 1, len(self.inputs)):
            raise ValueError(
                f"give one --source-label for all inputs or one per --input ({len(self.inputs)}), "
                f"got {len(self.source_labels)}"
            )
        if len(self.json_keys) != 1:
            raise ValueError(f"--json-keys takes one key (the sequence field), got {self.json_keys}")
        if self.unknown not in ("error", "unk", "skip"):
            raise ValueError(f"--unknown must be error, unk or skip, got {self.unknown!r}")
        if self.chunk_bytes < 1024:
            raise ValueError(f"chunk size must be at least 1 KiB, got {self.chunk_bytes} bytes")
        if self.shard is not None:
            self.shard_position()
            if self.dedup:
                raise ValueError("--dedup cannot be combined with --shard: a shard cannot see the others' sequences")
        if not 0 < self.min_coverage <= 1:
            raise ValueError(f"--min-coverage must be in (0, 1], got {self.min_coverage}")
        if not self.cluster_memory_gb > 0:
            raise ValueError(f"--cluster-memory-gb must be > 0, got {self.cluster_memory_gb}")

    def shard_position(self) -> tuple[int, int]:
        """``(I, N)`` of ``--shard I/N``."""
        try:
            index, count = (int(part) for part in str(self.shard).split("/"))
        except ValueError:
            raise ValueError(f"--shard takes I/N (e.g. 3/16), got {self.shard!r}") from None
        if not 0 <= index < count:
            raise ValueError(f"--shard {self.shard}: I must be in 0..N-1 (shards are numbered from 0)")
        return index, count


def shard_inputs(inputs: list[tuple[str, str]], index: int, count: int) -> list[tuple[str, str]]:
    """Shard ``index`` of ``count``: contiguous runs of the inputs in order (so that shards merged in order are the
    inputs in order), cut where the running size reaches each k/count of the total, with at least one file each."""
    if count > len(inputs):
        raise ValueError(
            f"--shard {index}/{count}: only {len(inputs)} input files; use at most {len(inputs)} shards "
            "(shards split the inputs by file: split a large file into several first)"
        )
    sizes = np.array([max(os.path.getsize(path), 1) for path, _ in inputs], dtype=np.float64)
    before = np.cumsum(sizes) - sizes / 2  # each file's middle
    cut = np.searchsorted(before, sizes.sum() * np.arange(1, count) / count)
    for k in range(len(cut)):  # at least one file per shard, on both sides of each cut
        cut[k] = min(max(cut[k], (cut[k - 1] if k else 0) + 1), len(inputs) - (count - 1 - k))
    bounds = [0, *cut.tolist(), len(inputs)]
    return inputs[bounds[index] : bounds[index + 1]]


def inputs_digest(inputs: list[tuple[str, str]]) -> str:
    """Identifies the full list of inputs (paths, sizes, labels), which every shard of one run records."""
    text = "\n".join(f"{os.path.abspath(path)}\t{os.path.getsize(path)}\t{label}" for path, label in inputs)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class SourceCounts:
    records_read: int = 0
    documents: int = 0
    tokens: int = 0


@dataclass
class PreprocessSummary:
    implementation: str
    workers: int
    records_read: int = 0
    documents_written: int = 0
    residues_written: int = 0
    skipped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SKIP_REASONS, 0))
    records_with_unk: int = 0
    tokens_written: int | None = None
    """Subword tokens (None: the residue tokenizer, one token per residue)."""
    documents_without_cluster: int = 0
    repeated_ids: int = 0
    """Documents whose record id an earlier document already has (kept: an alignment may hit one protein twice)."""
    first_repeated_id: str | None = None
    input_bytes: int = 0
    """Uncompressed input bytes."""
    seconds: float = 0.0
    sources: dict[str, SourceCounts] = field(default_factory=dict)
    crops: list[str] = field(default_factory=list)
    """What ``--crop-to-target`` did to each alignment."""

    @property
    def megabytes_per_second(self) -> float:
        return self.input_bytes / 1e6 / self.seconds if self.seconds else 0.0

    @property
    def sequences_per_second(self) -> float:
        return self.records_read / self.seconds if self.seconds else 0.0

    def to_dict(self) -> dict:
        out = asdict(self)
        out["megabytes_per_second"] = round(self.megabytes_per_second, 2)
        out["sequences_per_second"] = round(self.sequences_per_second, 1)
        return out

    def format(self) -> str:
        skipped = ", ".join(f"{reason} {count:,}" for reason, count in self.skipped.items() if count) or "none"
        lines = [
            f"records read       {self.records_read:,}",
            f"documents written  {self.documents_written:,}",
            f"residues written   {self.residues_written:,}",
            *(
                [
                    f"tokens written     {self.tokens_written:,} ({self.residues_written / max(self.tokens_written, 1):.2f} "
                    "residues per token)"
                ]
                if self.tokens_written is not None
                else []
            ),
            f"skipped            {skipped}",
        ]
        if self.records_with_unk:
            lines.append(f"mapped to <unk>    {self.records_with_unk:,} records")
        if self.documents_without_cluster:
            lines.append(f"without a cluster  {self.documents_without_cluster:,} documents")
        if self.repeated_ids:
            lines.append(
                f"repeated ids       {self.repeated_ids:,} documents reuse an earlier record id (first: "
                f"{self.first_repeated_id!r}); ids.txt does not identify them uniquely"
            )
        lines.extend(f"cropped            {note}" for note in self.crops)
        for label, counts in self.sources.items():
            lines.append(f"source {label!r}: {counts.documents:,} documents, {counts.tokens:,} residues")
        lines.append(
            f"throughput         {self.input_bytes / 1e6:,.1f} MB in {self.seconds:.2f} s = "
            f"{self.megabytes_per_second:,.1f} MB/s, {self.sequences_per_second:,.0f} sequences/s "
            f"({self.implementation} encoder, {self.workers} worker{'s' if self.workers > 1 else ''})"
        )
        return "\n".join(lines)


def _ordered(executor, jobs: Iterator[tuple], max_in_flight: int) -> Iterator:
    """Run ``(fn, args...)`` jobs on ``executor`` with bounded look-ahead; yield results in order."""
    pending: collections.deque = collections.deque()
    for fn, *args in jobs:
        pending.append(executor.submit(fn, *args))
        if len(pending) >= max_in_flight:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def _encode_with_position(encoder, first_line: int, size: int, chunk: bytes, *args) -> tuple[int, int, EncodedChunk]:
    return first_line, size, encoder(chunk, *args)


class _SerialExecutor:
    """``submit`` that runs at once: the workers=1 path, with no pool overhead."""

    def submit(self, fn, *args):
        future: concurrent.futures.Future = concurrent.futures.Future()
        future.set_result(fn(*args))
        return future

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


def preprocess(cfg: PreprocessConfig) -> tuple[PreprocessSummary, dict[str, Path]]:
    """Run the whole conversion; on any error nothing is left at the output prefix but what was there."""
    cfg.validate()
    recover_interrupted(cfg.output_prefix)  # a killed run's corpus is put back before anything is judged
    existing = [p for p in corpus_paths(cfg.output_prefix).values() if p.exists()]
    if existing and not cfg.overwrite:
        raise FileExistsError(
            f"{existing[0]} exists: a corpus is already at {cfg.output_prefix}; pass --overwrite "
            "to replace it, or choose another --output-prefix"
        )
    with terminate_as_interrupt():
        return _preprocess(cfg)


def _preprocess(cfg: PreprocessConfig) -> tuple[PreprocessSummary, dict[str, Path]]:
    all_inputs = resolve_inputs(cfg.inputs, cfg.source_labels)
    shard = None
    inputs = all_inputs
    if cfg.shard is not None:
        index, count = cfg.shard_position()
        inputs = shard_inputs(all_inputs, index, count)
        shard = {"index": index, "count": count, "inputs_sha256": inputs_digest(all_inputs)}
    labels = list(dict.fromkeys(label for _, label in all_inputs))  # all of them: source indices agree across shards
    tokenizer = ProteinTokenizer()
    subword = SubwordTokenizer.load(cfg.tokenizer) if cfg.tokenizer else None
    stored = subword or tokenizer
    formats = {path: detect_format(path, cfg.input_format) for path, _ in inputs}
    implementation, fasta_encoder = fasta_chunk_encoder(cfg.implementation)
    if "jsonl" in formats.values() and len(set(formats.values())) == 1:
        implementation = "reference"  # JSONL parsing is Python either way
    clusters = (
        ClusterMap.load(
            cfg.clusters,
            memory_bytes=int(cfg.cluster_memory_gb * 1e9),
            temp_dir=cfg.cluster_temp_dir or os.path.dirname(os.path.abspath(cfg.output_prefix)),
        )
        if cfg.clusters
        else None
    )
    exclusions = ExclusionList.load(cfg.exclude) if cfg.exclude else None
    try:
        if cfg.space_check:  # after the join: its temporary files already count as used
            needed, how = estimate_output_bytes([path for path, _ in inputs], 2 if subword else 1, clusters is not None)
            check_free_space(
                os.path.dirname(os.path.abspath(cfg.output_prefix)),
                needed,
                what=f"the corpus at {cfg.output_prefix}",
                fix="free space, choose another --output-prefix, or pass --no-space-check to try anyway",
                detail=how,
            )
        return _preprocess_with(
            cfg, inputs, labels, shard, clusters, exclusions, implementation, fasta_encoder, formats, stored, subword
        )
    finally:
        if clusters is not None:
            clusters.close()  # the out-of-core join's temporary files


def _preprocess_with(
    cfg, inputs, labels, shard, clusters, exclusions, implementation, fasta_encoder, formats, stored, subword
):
    tokenizer = ProteinTokenizer()
    unknown = Unknown[cfg.unknown.upper()]
    summary = PreprocessSummary(
        implementation=implementation, workers=cfg.workers, tokens_written=0 if subword else None
    )
    summary.sources = {label: SourceCounts() for label in labels}
    seen: set[bytes] = set()
    target = read_target(cfg.crop_to_target, flag="--crop-to-target") if cfg.crop_to_target else None
    unaligned = [path for path, _ in inputs if formats[path] not in MSA_FORMATS] if target is not None else []
    if unaligned:
        raise ValueError(
            f"--crop-to-target crops alignments (a3m, a2m, afa, sto), but {unaligned[0]} is read as "
            f"{formats[unaligned[0]]}"
        )

    if cfg.workers == 1:
        executor = _SerialExecutor()
    elif implementation == "native":  # the C++ loop releases the GIL: threads suffice
        executor = concurrent.futures.ThreadPoolExecutor(cfg.workers)
    else:
        executor = concurrent.futures.ProcessPoolExecutor(
            cfg.workers, initializer=die_with_parent, initargs=(os.getpid(),)
        )

    progress = _progress_bar(cfg, inputs)
    writer = CorpusWriter(
        cfg.output_prefix, with_clusters=clusters is not None, token_dtype=subword.token_dtype if subword else np.uint8
    )
    started = time.perf_counter()
    try:
        with executor:
            for path, label in inputs:
                records_before = summary.records_read
                jobs = _jobs(path, formats[path], fasta_encoder, cfg, tokenizer, unknown, target, summary.crops)
                for first_line, size, encoded in _ordered(executor, jobs, max_in_flight=2 * cfg.workers):
                    if encoded.problem is not None:
                        raise problem_to_error(encoded.problem, path, first_line)
                    _write_chunk(
                        encoded, writer, summary, label, labels.index(label), cfg, clusters, seen, subword, exclusions
                    )
                    summary.input_bytes += size
                    progress.update(size)
                if summary.records_read == records_before:
                    kind = "JSON lines" if formats[path] == "jsonl" else "FASTA records"
                    raise InputFormatError(path, None, f"empty input: no {kind}")
        summary.seconds = time.perf_counter() - started
        if writer.num_documents == 0:
            raise ValueError(
                f"no sequences left to write ({summary.records_read:,} read; skipped {summary.skipped}); "
                "check --min-length/--max-length/--unknown"
            )
        summary.repeated_ids, summary.first_repeated_id = writer.repeated_ids()
        meta = {
            "sources": labels,
            "tokenizer": stored.unique_identifiers,
            "tokenizer_path": os.path.abspath(cfg.tokenizer) if cfg.tokenizer else None,
            "vocab": list(stored.vocab),
            "token_dtype": writer.token_dtype.name,
            "inputs": [{"path": os.path.abspath(path), "source": label} for path, label in inputs],
            "settings": {
                "min_length": cfg.min_length,
                "max_length": cfg.max_length,
                "dedup": cfg.dedup,
                "unknown": cfg.unknown,
                "clusters": os.path.abspath(cfg.clusters) if cfg.clusters else None,
                "exclude": _exclusion_meta(exclusions, summary),
                "crop_to_target": {"target": target, "min_coverage": cfg.min_coverage} if target else None,
            },
            "summary": {
                k: v
                for k, v in summary.to_dict().items()
                if k not in ("seconds", "implementation", "workers") and "per_second" not in k
            },
            "created_by": f"megatron_plm {__version__}",
        }
        if shard is not None:  # merge-corpora checks the shards are one run's, and drops this
            meta["shard"] = shard
        files = writer.finalize(meta, clusters.names() if clusters else None)
    except BaseException:
        writer.abort()
        raise
    finally:
        progress.close()
    return summary, files


def _exclusion_meta(exclusions: ExclusionList | None, summary: PreprocessSummary) -> dict | None:
    """What ``--exclude`` dropped, and against which targets and thresholds (the list's own header)."""
    if exclusions is None:
        return None
    return {
        "path": os.path.abspath(exclusions.path),
        "records_listed": len(exclusions.record_ids),
        "records_dropped": summary.skipped["excluded"],
        **{key: value for key, value in exclusions.settings.items() if key != "records_listed"},
    }


GZIP_RATIO = 2.5
"""Assumed uncompressed/compressed size of a gzip input too large for its size field (protein FASTA: ~1.8-2.5)."""
BYTES_PER_DOCUMENT = 44
"""Corpus bytes per document besides its tokens: index entry 20, source 2 + 2 staged, cluster 8 + 8 staged, length 4."""
MIN_RECORD_BYTES = 64
"""Input bytes per record assumed when counting documents for the estimate (a header and a short protein)."""


def uncompressed_size(path: str) -> tuple[int, bool]:
    """The input's uncompressed size and whether it is exact: a gzip's size field (its last 4 bytes, the size mod
    2^32) when the file is small enough for it, else the compressed size times :data:`GZIP_RATIO`."""
    size = os.path.getsize(path)
    with open(path, "rb") as handle:
        if handle.read(2) != b"\x1f\x8b":
            return size, True
        handle.seek(max(size - 4, 0))
        field = int.from_bytes(handle.read(4), "little")
    if size < (1 << 32) // 8 and field >= size:  # under 512 MB compressed: < 4 GiB unless it compresses > 8x
        return field, True
    return int(size * GZIP_RATIO), False


def estimate_output_bytes(paths: list[str], token_bytes: int, with_clusters: bool) -> tuple[int, str]:
    """An upper estimate of what preprocessing writes (tokens at most one per input byte, ids within the
    headers), and how it was made, for the message."""
    sizes = [uncompressed_size(path) for path in paths]
    text = sum(size for size, _ in sizes)
    documents = text // MIN_RECORD_BYTES
    per_document = BYTES_PER_DOCUMENT - (0 if with_clusters else 16)
    guessed = "" if all(exact for _, exact in sizes) else f", gzip inputs assumed {GZIP_RATIO}x compressed"
    return text * token_bytes + documents * per_document, (
        f"{text / 1e6:,.1f} MB of input text x {token_bytes} byte(s) per token + {per_document} bytes for each of "
        f"up to {documents:,} documents{guessed}"
    )


def _jobs(path, fmt, fasta_encoder, cfg, tokenizer, unknown, target, crops: list[str]) -> Iterator[tuple]:
    if fmt in MSA_FORMATS:  # one job: the alignment as FASTA (line numbers kept unless cropped)
        if target is not None:
            fasta, note = cropped_homologs(path, fmt, target, cfg.min_coverage)
            crops.append(note)
        else:
            fasta = msa_as_fasta(path, fmt)
        yield (
            _encode_with_position,
            fasta_encoder,
            1,
            len(fasta),
            fasta,
            tokenizer.byte_lookup,
            unknown,
            tokenizer.unk,
        )
        return
    boundary = b"\n>" if fmt == "fasta" else b"\n"
    for first_line, chunk in iter_chunks(path, boundary=boundary, chunk_bytes=cfg.chunk_bytes):
        if first_line == 1:
            check_text(path, first_line, chunk)
        if fmt == "fasta":
            chunk_encoder = fasta_encoder
        else:
            chunk_encoder = functools.partial(
                encode_jsonl_chunk,
                path=path,
                first_line=first_line,
                sequence_key=cfg.json_keys[0],
                id_key=cfg.json_id_key,
            )
        yield (
            _encode_with_position,
            chunk_encoder,
            first_line,
            len(chunk),
            chunk,
            tokenizer.byte_lookup,
            unknown,
            tokenizer.unk,
        )


def _write_chunk(
    encoded: EncodedChunk,
    writer: CorpusWriter,
    summary: PreprocessSummary,
    label: str,
    source: int,
    cfg: PreprocessConfig,
    clusters: ClusterMap | None,
    seen: set[bytes],
    subword: SubwordTokenizer | None = None,
    exclusions: ExclusionList | None = None,
) -> None:
    lengths, status = encoded.lengths, encoded.status
    n = len(lengths)
    keep = status != RecordStatus.SKIPPED_INVALID
    summary.skipped["invalid_character"] += int(n - keep.sum())
    summary.records_with_unk += int((status == RecordStatus.MAPPED_UNK).sum())
    for reason, dropped in (
        ("too_short", keep & (lengths < cfg.min_length)),
        ("too_long", keep & (lengths > cfg.max_length) if cfg.max_length is not None else None),
    ):
        if dropped is not None and dropped.any():
            summary.skipped[reason] += int(dropped.sum())
            keep &= ~dropped
    ids = encoded.ids.split(b"\n")[:-1] if (cfg.dedup or exclusions or not keep.all()) else None
    if exclusions:  # before dedup: an excluded record must not make a later copy count as its duplicate
        listed = exclusions.record_ids
        for i in np.flatnonzero(keep):
            if ids[i].decode("utf-8") in listed:
                keep[i] = False
                summary.skipped["excluded"] += 1
    if cfg.dedup:
        ends = np.cumsum(lengths)
        for i in np.flatnonzero(keep):
            digest = hashlib.blake2b(encoded.tokens[ends[i] - lengths[i] : ends[i]], digest_size=16).digest()
            if digest in seen:
                keep[i] = False
                summary.skipped["duplicate"] += 1
            else:
                seen.add(digest)
    if keep.all():
        tokens, kept_lengths, kept_ids = encoded.tokens, lengths, encoded.ids
    else:
        tokens = encoded.tokens[np.repeat(keep, lengths)]
        kept_lengths = lengths[keep]
        kept_ids = b"".join(ids[i] + b"\n" for i in np.flatnonzero(keep))
    cluster_index = clusters.lookup(kept_ids) if clusters else None
    if cluster_index is not None:
        summary.documents_without_cluster += int((cluster_index < 0).sum())
    residues = int(tokens.size)
    if subword is not None:  # filters and dedup act on residues; the corpus stores subword ids
        tokens, kept_lengths = subword.encode_residue_ids(tokens, kept_lengths)
        summary.tokens_written += int(tokens.size)
    writer.add(tokens, kept_lengths, kept_ids, source, cluster_index)
    summary.records_read += n
    summary.documents_written += len(kept_lengths)
    summary.residues_written += residues
    counts = summary.sources[label]
    counts.records_read += n
    counts.documents += len(kept_lengths)
    counts.tokens += residues


def _progress_bar(cfg: PreprocessConfig, inputs):
    """A bar on a terminal, a line every 30 s in a log (long runs only); counts uncompressed bytes."""
    from megatron_plm.progress import Progress

    def is_gzip(path: str) -> bool:
        with open(path, "rb") as handle:
            return handle.read(2) == b"\x1f\x8b"

    # A total is known only when no input is compressed.
    total = None if any(is_gzip(path) for path, _ in inputs) else sum(os.path.getsize(p) for p, _ in inputs)
    return Progress(total, "preprocess", unit="B", enabled=cfg.progress)


# ---- command line ----------------------------------------------------------------------------------


def run_preprocess(config: PreprocessConfig) -> int:
    """``megatron-plm preprocess``: the corpus, its summary, and the files written."""
    summary, files = preprocess(config)
    print(summary.format())
    if summary.repeated_ids:
        print(
            f"warning: {summary.repeated_ids:,} documents reuse an earlier record id (first: "
            f"{summary.first_repeated_id!r}); --clusters and ids.txt cannot tell them apart",
            file=sys.stderr,
        )
    print("wrote " + ", ".join(str(files[name]) for name in sorted(files)))
    return 0
