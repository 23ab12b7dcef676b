#!/usr/bin/env python
"""Preprocessing throughput: ours (C++ and reference) against what a Megatron user runs today.

Builds one plain FASTA of at least ``--target-mb`` by repeating the real corpora (the
shared ones beside the checkout if present, else the sample shipped in ``data/``),
then times on it, in this one run:

  (a) baseline: ``transformers.EsmTokenizer`` on each record + megatron-core
      ``IndexedDatasetBuilder.add_item`` per document, as Megatron-LM's
      ``tools/preprocess_data.py`` does with a HuggingFace tokenizer (records read by a
      plain Python FASTA loop). It is slow, so it runs on the first ``--baseline-mb`` MB;
      rates are per MB, so the ratio is like for like.
  (b) ours, Python/NumPy reference encoder, 1 worker;
  (c) ours, C++ encoder, 1 and 2 workers;
  (d) with ``--tokenizer DIR`` (repeatable): ours, C++ encoder then a subword tokenizer from
      ``megatron-plm tokenizer train``, 1 worker, on the first ``--subword-mb`` MB (it is slower).

Each of ours is the full pipeline (read, encode, write .bin/.idx and metadata,
finalise), best of ``--repeats``. A second table times whole processes as a user
runs them on one real corpus (the 11.4 MB UniProtKB file when the shared data is
present): ``tools/preprocess_data.py --help``, ``tools/preprocess_data.py`` end to
end, and the baseline in its own process (interpreter start, imports and all),
best of ``--process-repeats``. Usage:

    python benchmarks/preprocess.py [--target-mb 200] [--baseline-mb 16] [--repeats 2] [--process-repeats 3] [--tokenizer DIR ...]
"""

from __future__ import annotations

import argparse
import gzip
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MEGATRON_PLM_SHARED_DATA") or REPO.parent / "shared" / "data") / "corpus"


def source_corpora() -> list[Path]:
    shared = sorted(SHARED.glob("*.fasta*")) if SHARED.is_dir() else []
    return shared or [REPO / "data" / "uniref90_esm2_pretraining_sample_10k.fasta.gz"]


def build_input(directory: Path, target_mb: float) -> tuple[Path, int]:
    """Concatenate the corpora, uncompressed, until the file reaches ``target_mb``."""
    blobs = []
    for path in source_corpora():
        data = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
        blobs.append(data if data.endswith(b"\n") else data + b"\n")
    unit = b"".join(blobs)
    copies = max(1, int(-(-target_mb * 1e6 // len(unit))))
    target = directory / "bench.fasta"
    with open(target, "wb") as out:
        for _ in range(copies):
            out.write(unit)
    return target, copies


def prefix_of(path: Path, megabytes: float, directory: Path, name: str = "baseline") -> Path:
    """The first whole records of ``path`` up to ``megabytes``."""
    data = path.open("rb").read(int(megabytes * 1e6))
    cut = data.rfind(b"\n>")
    target = directory / f"{name}.fasta"
    target.write_bytes(data[: cut + 1])
    return target


def run_baseline(path: Path, out_dir: Path) -> tuple[float, int, int]:
    """Returns (seconds, plain FASTA bytes read, records); ``path`` may be gzip."""
    import numpy as np
    import torch
    from megatron.core.datasets.indexed_dataset import DType, IndexedDatasetBuilder
    from transformers import EsmTokenizer

    from megatron_plm.data.tokenizers.protein import ESM2_VOCAB

    vocab = out_dir / "esm2_vocab.txt"
    vocab.write_text("".join(f"{t}\n" for t in ESM2_VOCAB))
    tokenizer = EsmTokenizer(str(vocab))
    started = time.perf_counter()
    builder = IndexedDatasetBuilder(str(out_dir / "baseline.bin"), dtype=DType.optimal_dtype(len(ESM2_VOCAB)))
    records = 0

    def flush(parts):
        nonlocal records
        ids = tokenizer("".join(parts), add_special_tokens=False)["input_ids"]
        builder.add_item(torch.IntTensor(ids))
        builder.end_document()
        records += 1

    size = 0
    with gzip.open(path, "rt") if path.suffix == ".gz" else open(path) as handle:
        parts: list[str] = []
        for line in handle:
            size += len(line)
            if line.startswith(">"):
                if parts:
                    flush(parts)
                parts = []
            else:
                parts.append(line.strip())
        if parts:
            flush(parts)
    builder.finalize(str(out_dir / "baseline.idx"))
    _ = np  # imported for DType's numpy types
    return time.perf_counter() - started, size, records


def whole_process_corpus() -> Path:
    shared = SHARED / "uniprotkb_mmseqs2_example_DB.fasta.gz"
    return shared if shared.exists() else REPO / "data" / "uniref90_esm2_pretraining_sample_10k.fasta.gz"


def time_process(command: list[str], repeats: int) -> float:
    """Best wall time of ``command`` run to completion (it must succeed)."""
    import subprocess

    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
        best = min(best, time.perf_counter() - started)
    return best


def tool_command(corpus: Path, scratch: Path) -> list[str]:
    """``tools/preprocess_data.py`` as a user runs it, into one prefix: ``--overwrite``, as each repeat
    replaces the corpus the one before wrote (without it the second run stops: the corpus exists)."""
    return [
        sys.executable,
        "tools/preprocess_data.py",
        "--input",
        str(corpus),
        "--output-prefix",
        str(scratch / "proc"),
        "--no-progress",
        "--overwrite",
    ]


def whole_process_table(scratch: Path, repeats: int) -> None:
    corpus = whole_process_corpus()
    tool = [sys.executable, "tools/preprocess_data.py"]
    baseline = [
        sys.executable,
        "-c",
        "import sys; sys.path.insert(0, 'benchmarks'); from pathlib import Path; "
        "from preprocess import run_baseline; run_baseline(Path(sys.argv[1]), Path(sys.argv[2]))",
        str(corpus),
        str(scratch),
    ]
    inner, _, _ = run_ours(corpus, scratch, "native", 1, repeats)
    inner_baseline, size, _ = run_baseline(corpus, scratch)
    rows = [
        ("tools/preprocess_data.py --help", time_process([*tool, "--help"], repeats), None),
        (
            "tools/preprocess_data.py (C++, 1 worker), whole process",
            time_process(tool_command(corpus, scratch), repeats),
            inner,
        ),
        ("baseline (a), whole process", time_process(baseline, 1), inner_baseline),
    ]
    print(
        f"\nwhole processes on {corpus.name} ({corpus.stat().st_size / 1e6:.1f} MB on disk, {size / 1e6:.1f} MB FASTA; "
        f"best of {repeats}, the baseline once; load average {os.getloadavg()[0]:.1f})"
    )
    print(f"{'command':<62} {'seconds':>8} {'inner loop s':>13}")
    for name, seconds, loop in rows:
        print(f"{name:<62} {seconds:>8.2f} {'' if loop is None else f'{loop:.2f}':>13}")
    print(
        f"end to end, ours is {rows[2][1] / rows[1][1]:.1f}x faster than the baseline process; "
        f"inner loops {inner_baseline / inner:.0f}x"
    )


def run_ours(
    path: Path, out_dir: Path, implementation: str, workers: int, repeats: int, tokenizer: str | None = None
) -> tuple[float, int, int]:
    from megatron_plm.data.preprocess.pipeline import PreprocessConfig, preprocess

    best = float("inf")
    records = 0
    for attempt in range(repeats):
        prefix = out_dir / f"ours_{implementation}_{workers}_{attempt}"
        started = time.perf_counter()
        summary, files = preprocess(
            PreprocessConfig(
                inputs=[str(path)],
                output_prefix=str(prefix),
                implementation=implementation,
                workers=workers,
                tokenizer=tokenizer,
                progress=False,
            )
        )
        best = min(best, time.perf_counter() - started)
        records = summary.records_read
        for file in files.values():
            file.unlink()
    return best, path.stat().st_size, records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target-mb", type=float, default=200.0)
    parser.add_argument("--baseline-mb", type=float, default=16.0)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--process-repeats", type=int, default=3, help="runs per whole-process timing (best kept)")
    parser.add_argument("--only-process", action="store_true", help="only the whole-process table")
    parser.add_argument("--tokenizer", action="append", default=[], help="subword tokenizer directory (row d)")
    parser.add_argument("--subword-mb", type=float, default=4.0)
    parser.add_argument("--workdir", type=Path, default=None, help="scratch directory (default: a temp dir)")
    args = parser.parse_args(argv)

    from megatron_plm.data.preprocess.encode import native_available

    scratch = Path(tempfile.mkdtemp(prefix="bench_preprocess_", dir=args.workdir))
    try:
        if args.only_process:
            whole_process_table(scratch, args.process_repeats)
            return 0
        source, copies = build_input(scratch, args.target_mb)
        baseline_input = prefix_of(source, args.baseline_mb, scratch)
        print(
            f"input: {source.stat().st_size / 1e6:.1f} MB plain FASTA = {copies} copies of "
            f"{', '.join(p.name for p in source_corpora())}; {os.cpu_count()} CPU cores",
            flush=True,
        )
        rows = [
            ("(a) baseline: EsmTokenizer + IndexedDatasetBuilder.add_item", 1, *run_baseline(baseline_input, scratch))
        ]
        rows.append(("(b) ours, reference (Python/NumPy)", 1, *run_ours(source, scratch, "reference", 1, args.repeats)))
        if native_available():
            for workers in (1, 2):
                rows.append(("(c) ours, C++", workers, *run_ours(source, scratch, "native", workers, args.repeats)))
        else:
            print("C++ extension not built: (c) skipped", file=sys.stderr)
        if args.tokenizer:
            subword_input = prefix_of(source, args.subword_mb, scratch, "subword")
            rows.append(
                (
                    "(c) ours, C++, residues (same input as d)",
                    1,
                    *run_ours(subword_input, scratch, "auto", 1, args.repeats),
                )
            )
        for directory in args.tokenizer:
            name = f"(d) ours, C++ + subword {Path(directory).name}"
            rows.append((name, 1, *run_ours(subword_input, scratch, "auto", 1, args.repeats, directory)))
        base_rate = rows[0][3] / rows[0][2]
        print(f"\n{'path':<62} {'workers':>7} {'MB':>8} {'seconds':>8} {'MB/s':>8} {'seq/s':>10} {'vs (a)':>8}")
        for name, workers, seconds, size, records in rows:
            rate = size / seconds
            print(
                f"{name:<62} {workers:>7} {size / 1e6:>8.1f} {seconds:>8.2f} {rate / 1e6:>8.1f} "
                f"{records / seconds:>10,.0f} {rate / base_rate:>7.1f}x"
            )
        print(
            f"\n(a) ran on the first {rows[0][3] / 1e6:.1f} MB of the same input; ours on all of it "
            f"(best of {args.repeats}). MB = uncompressed FASTA bytes read."
        )
        whole_process_table(scratch, args.process_repeats)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
