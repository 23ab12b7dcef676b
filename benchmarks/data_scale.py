#!/usr/bin/env python
"""The data path against corpus size: preprocessing, start-up, per-rank memory, loader speed.

For each size (documents), a synthetic corpus of short random proteins (30-90 residues) and a
cluster map of one cluster per 5 documents are written under ``--scratch``; then, each step in its
own process (peak RSS = that process's ``VmHWM``, which counts the pages of memory-mapped files
it touched; private = the peak of its anonymous memory, file maps excluded: ``RssAnon``, sampled
every 10 ms):

  preprocess              without / with the cluster map
  cluster map, old dict   baseline: the ``dict[bytes, int]`` join this replaced (commit ed094f6)
  imports                 the floor of every start-up: torch, megatron-core, our modules
  start-up, no cache      baseline: every rank builds splits, units, order, sample index in memory
  start-up, cold cache    the builder rank: build + write the cache, to the first batch
  start-up, warm cache    a second launch: map the cache, to the first batch
  4 ranks (torchrun)      warm; the largest private memory of the 4 ranks
  loader                  batches/s of ``BatchLoader.next_step`` (global batch 64 x 1024 tokens), the
                          median of 5 chunks of steps
  cluster join            ``ClusterMap.load`` alone: in memory (baseline) / out of core with a 1 GB bound
  cache open per rank     a non-building rank opening an entry of the size the corpus's ``doc_order`` has
                          (8 bytes per document): sampled check (now) / full CRC-32 (before, baseline)
  shards                  the FASTA cut into 4 files: one ``preprocess --clusters`` run over all of them
                          (baseline) / each of 4 ``--shard I/4`` runs (max = the wall time on 4 nodes) /
                          ``merge-corpora``; the merged files are compared with the one run's, byte for byte

and one table is printed, with each figure extrapolated to 939M documents from the slope between
the two largest sizes. Usage (1e8 writes ~15 GB under --scratch; run it on purpose):

    python benchmarks/data_scale.py --sizes 1e6 1e7 [--scratch /tmp/data_scale] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
TARGET = 939_000_000
OLD_DICT_LIMIT = 20_000_000
"""Largest map the old dict baseline is run on (it needs ~140 bytes per member)."""
AMINO = np.frombuffer(b"ACDEFGHIKLMNPQRSTVWY", dtype=np.uint8)

_MEASURE = """
import json, os, sys, time
sys.path.insert(0, {repo!r})
def private_mb():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
import threading
private_peak = [0.0]
def sample_private():  # the transient peak of anonymous memory, sampled every 10 ms
    while True:
        private_peak[0] = max(private_peak[0], private_mb())
        time.sleep(0.01)
threading.Thread(target=sample_private, daemon=True).start()
def peak_mb():
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec, so a child would report its parent's peak.
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
def loader_rate(loader, steps, chunks=5):
    # the median over chunks of steps: single runs on the shared 2-core machine vary by +-15%
    rates = []
    for _ in range(chunks):
        t0 = time.perf_counter()
        for _ in range(steps // chunks):
            loader.next_step()
        rates.append((steps // chunks) / (time.perf_counter() - t0))
    return sorted(rates)[len(rates) // 2]
started = time.perf_counter()
{body}
seconds = time.perf_counter() - started
result = dict(seconds=seconds, peak_mb=peak_mb(), private_mb=max(private_peak[0], private_mb()),
              cpu_s=sum(os.times()[:2]))  # user + system: what the step costs, whatever the machine's load
result.update(globals().get("extra", {{}}))
print("RESULT " + json.dumps(result))
"""


def make_corpus(directory: Path, n: int) -> tuple[Path, Path]:
    """FASTA of ``n`` proteins and a ``representative<TAB>member`` map (n/5 clusters), written in blocks."""
    directory.mkdir(parents=True, exist_ok=True)
    fasta, tsv = directory / "corpus.fasta", directory / "clusters.tsv"
    if fasta.exists() and tsv.exists():
        return fasta, tsv
    rng = np.random.default_rng(0)
    clusters = max(n // 5, 1)
    with open(str(fasta) + ".tmp", "wb") as f, open(str(tsv) + ".tmp", "wb") as t:
        for start in range(0, n, 1_000_000):
            ids = np.arange(start, min(start + 1_000_000, n))
            lengths = rng.integers(30, 91, len(ids))
            residues = AMINO[rng.integers(0, 20, int(lengths.sum()))].tobytes()
            ends = np.cumsum(lengths)
            f.write(b"".join(b">P%d\n%s\n" % (i, residues[e - l : e]) for i, l, e in zip(ids, lengths, ends)))
            cluster = (ids * 2654435761) % clusters
            t.write(b"".join(b"C%d\tP%d\n" % (c, i) for c, i in zip(cluster, ids)))
    os.replace(str(fasta) + ".tmp", fasta)
    os.replace(str(tsv) + ".tmp", tsv)
    return fasta, tsv


def make_mapping(directory: Path, n: int) -> Path:
    """A cluster map like :func:`make_corpus`'s (n/5 clusters, the same assignment), with fixed-width ids
    (``C000000042<TAB>P000000007``) written by NumPy, for the join rows at sizes whose FASTA would not fit
    the time or the disk (1e8: 2.2 GB, seconds to write)."""
    directory.mkdir(parents=True, exist_ok=True)
    tsv = directory / "clusters.tsv"
    if tsv.exists():
        return tsv
    clusters = max(n // 5, 1)
    powers = 10 ** np.arange(8, -1, -1, dtype=np.int64)
    with open(str(tsv) + ".tmp", "wb") as t:
        for start in range(0, n, 1_000_000):
            ids = np.arange(start, min(start + 1_000_000, n), dtype=np.int64)
            cluster = (ids * 2654435761) % clusters
            line = np.empty((len(ids), 22), dtype=np.uint8)
            line[:, 0], line[:, 10], line[:, 11], line[:, 21] = ord("C"), ord("\t"), ord("P"), ord("\n")
            line[:, 1:10] = (cluster[:, None] // powers) % 10 + ord("0")
            line[:, 12:21] = (ids[:, None] // powers) % 10 + ord("0")
            t.write(line.tobytes())
    os.replace(str(tsv) + ".tmp", tsv)
    return tsv


def split_fasta(fasta: Path, parts: int) -> list[Path]:
    """``fasta`` cut into ``parts`` files of about equal size at record boundaries (streamed)."""
    size = fasta.stat().st_size
    paths = [fasta.with_name(f"part{i}.fasta") for i in range(parts)]
    if all(p.exists() for p in paths):
        return paths
    with open(fasta, "rb") as source:
        for i, path in enumerate(paths):
            target = size * (i + 1) // parts
            with open(str(path) + ".tmp", "wb") as out:
                while block := source.read(1 << 24):
                    start = source.tell() - len(block)
                    if i < parts - 1 and start + len(block) > target:
                        cut = block.find(b"\n>", max(target - start, 0))
                        if cut >= 0:  # the first record that starts past the target opens the next part
                            out.write(block[: cut + 1])
                            source.seek(start + cut + 1)
                            break
                    out.write(block)
            os.replace(str(path) + ".tmp", path)
    return paths


def measure(body: str, *, torchrun: int = 0, env: dict | None = None) -> list[dict]:
    code = _MEASURE.format(repo=str(REPO), body=textwrap.dedent(body))
    script = Path(os.environ.get("TMPDIR", "/tmp")) / f"data_scale_{os.getpid()}.py"
    script.write_text(code)
    command = [sys.executable, str(script)]
    if torchrun:
        command = [
            str(Path(sys.executable).with_name("torchrun")),
            "--standalone",
            "--nproc-per-node",
            str(torchrun),
            str(script),
        ]
    run = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **(env or {})})
    results = [json.loads(line[7:]) for line in run.stdout.splitlines() if line.startswith("RESULT ")]
    if run.returncode or not results:
        raise RuntimeError(f"step failed:\n{run.stdout[-2000:]}\n{run.stderr[-4000:]}")
    return results


PREPROCESS = """
from megatron_plm.data.preprocess.pipeline import PreprocessConfig, preprocess
preprocess(PreprocessConfig(inputs=[{fasta!r}], output_prefix={prefix!r}, clusters={clusters!r}, progress=False, overwrite=True,
                            workers=1))
"""

OLD_CLUSTER_MAP = """
import subprocess, types
source = subprocess.run(["git", "-C", {repo!r}, "show", "ed094f6:megatron_plm/data/preprocess/clusters.py"], capture_output=True,
                        text=True, check=True).stdout
module = types.ModuleType("old_clusters"); sys.modules["old_clusters"] = module; exec(compile(source, "old_clusters.py", "exec"), module.__dict__)
mapping = module.ClusterMap.load({tsv!r})
"""

JOIN = """
from megatron_plm.data.preprocess.clusters import ClusterMap
mapping = ClusterMap.load({tsv!r}, memory_bytes={memory}, temp_dir={temp!r})
extra = dict(clusters=mapping.num_clusters, members=len(mapping.keys))
mapping.close()
"""

CACHE_ENTRY = """
from megatron_plm.data.samples.index_cache import IndexCache, Role
import numpy as np
IndexCache({cache!r}, role=Role()).get("doc_order", {{"n": {n}}}, lambda: {{"doc_order": np.arange({n}, dtype=np.int64)}})
"""

CACHE_OPEN = """
from megatron_plm.data.samples.index_cache import IndexCache, Role
for _ in range(3):  # the third open: the page cache as a relaunch on the same node finds it
    t0 = time.perf_counter()
    arrays = IndexCache({cache!r}, role=Role(rank=1, local_rank=1), verify={verify}).get(
        "doc_order", {{"n": {n}}}, lambda: 1 / 0)
    opened = time.perf_counter() - t0
extra = dict(seconds=opened, entry_mb=arrays["doc_order"].nbytes / 1e6)
"""

SHARD = """
from megatron_plm.data.preprocess.pipeline import PreprocessConfig, preprocess
preprocess(PreprocessConfig(inputs={inputs!r}, output_prefix={prefix!r}, clusters={clusters!r}, progress=False,
                            overwrite=True, workers=1, shard={shard!r}))
"""

MERGE = """
from megatron_plm.data.preprocess.merge import MergeConfig, merge_corpora
merge_corpora(MergeConfig(inputs={inputs!r}, output_prefix={prefix!r}, overwrite=True))
"""

SAME_BYTES = """
import hashlib
from megatron_plm.data.corpus import corpus_paths
def digest(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 24):
            h.update(block)
    return h.hexdigest()
a, b = corpus_paths({one!r}), corpus_paths({merged!r})
extra = dict(identical=all(digest(a[k]) == digest(b[k]) for k in a), bytes=sum(a[k].stat().st_size for k in a))
"""

IMPORTS = """
from megatron_plm.data.samples.builder import DataBuilder
from megatron_plm.data.samples.config import DataConfig, DataSource
from megatron_plm.data.samples.loader import BatchLoader
import torch
import megatron.core.datasets.indexed_dataset  # imported by the corpus reader on first use: ~2/3 of the floor
"""

STARTUP = """
from megatron_plm.data.samples.builder import DataBuilder
from megatron_plm.data.samples.config import DataConfig, DataSource
from megatron_plm.data.samples.loader import BatchLoader
from megatron_plm.data.samples.splits import Split
import torch
if os.environ.get("WORLD_SIZE"):
    import torch.distributed as dist
    dist.init_process_group("gloo")
config = DataConfig(sources=[DataSource(prefix={prefix!r})], seq_length=1024, cache={cache},
                    cache_dir={cache_dir!r})
data = DataBuilder(config, "mlm").build(Split.TRAIN, {samples})
loader = BatchLoader(data, 64, 64, 0, 1, causal=False)
loader.next_step()
extra = dict(rank=int(os.environ.get("RANK", 0)), seconds=time.perf_counter() - started)  # to the first batch
if {loader_steps}:
    extra["batches_per_s"] = loader_rate(loader, {loader_steps})
"""


LOADER = """
for suffix in (".bin", ".idx"):  # the corpus in the page cache, as a 1e6 corpus always is: CPU cost, not disk
    with open({prefix!r} + suffix, "rb") as handle:
        while handle.read(1 << 26):
            pass
extra["batches_per_s"] = loader_rate(loader, {loader_steps})
"""


MAPPING_ONLY = ("cluster join", "cache open")
"""Rows that need no FASTA: at a size where only they are asked for, only the cluster map is written."""


def run_size(n: int, scratch: Path, samples: int, loader_steps: int, only: list[str]) -> dict[str, dict]:
    where = scratch / f"n{n}"
    if only and all(any(part.startswith(row) for row in MAPPING_ONLY) for part in only):
        fasta, tsv = where / "corpus.fasta", make_mapping(where, n)
    else:
        fasta, tsv = make_corpus(where, n)
    parts = lambda: [str(p) for p in split_fasta(fasta, 4)]  # noqa: E731 (only when a shard row runs)
    shard = lambda i: measure(  # noqa: E731
        SHARD.format(inputs=parts(), prefix=str(where / f"shard{i}"), clusters=str(tsv), shard=f"{i}/4")
    )
    prefix, cache_dir = where / "corpus", where / "cache"
    startup = dict(prefix=str(prefix), cache_dir=str(cache_dir), samples=samples)
    steps = {
        "preprocess": lambda: measure(PREPROCESS.format(fasta=str(fasta), prefix=str(where / "plain"), clusters=None)),
        "preprocess --clusters": lambda: measure(
            PREPROCESS.format(fasta=str(fasta), prefix=str(prefix), clusters=str(tsv))
        ),
        "cluster map, old dict (baseline)": lambda: measure(OLD_CLUSTER_MAP.format(repo=str(REPO), tsv=str(tsv))),
        "imports (in every start-up below)": lambda: measure(IMPORTS),
        "start-up, no cache (baseline)": lambda: measure(STARTUP.format(cache=False, loader_steps=0, **startup)),
        "start-up, cold cache": lambda: measure(STARTUP.format(cache=True, loader_steps=0, **startup)),
        "start-up, warm cache": lambda: measure(STARTUP.format(cache=True, loader_steps=loader_steps, **startup)),
        "loader, corpus in page cache": lambda: measure(
            STARTUP.format(cache=True, loader_steps=0, **startup)
            + LOADER.format(prefix=str(prefix), loader_steps=loader_steps)
        ),
        "4 ranks warm (max over ranks)": lambda: measure(
            STARTUP.format(cache=True, loader_steps=0, **startup), torchrun=4, env={"OMP_NUM_THREADS": "1"}
        ),
        "cluster join, in memory (baseline)": lambda: measure(JOIN.format(tsv=str(tsv), memory=None, temp=str(where))),
        "cluster join, 1 GB bound (out of core above ~2e7 members)": lambda: measure(
            JOIN.format(tsv=str(tsv), memory=10**9, temp=str(where))
        ),
        "cluster join, 100 MB bound (out of core from 2e6)": lambda: measure(
            JOIN.format(tsv=str(tsv), memory=10**8, temp=str(where))
        ),
        "cache open per rank, full CRC-32 (baseline)": lambda: measure(
            CACHE_ENTRY.format(cache=str(where / "entry"), n=n)
            + CACHE_OPEN.format(cache=str(where / "entry"), n=n, verify=True)
        ),
        "cache open per rank, sampled": lambda: measure(
            CACHE_ENTRY.format(cache=str(where / "entry"), n=n)
            + CACHE_OPEN.format(cache=str(where / "entry"), n=n, verify=False)
        ),
        "shards: one run over the 4 files (baseline)": lambda: measure(
            SHARD.format(inputs=parts(), prefix=str(where / "one"), clusters=str(tsv), shard=None)
        ),
        "shards: 4 x preprocess --shard I/4 (max)": lambda: [shard(i)[0] for i in range(4)],
        "shards: merge-corpora": lambda: (
            measure(MERGE.format(inputs=[str(where / f"shard{i}") for i in range(4)], prefix=str(where / "merged")))
            + measure(SAME_BYTES.format(one=str(where / "one"), merged=str(where / "merged")))
        ),
    }
    if not only or any(part in "start-up, cold cache" for part in only):
        shutil.rmtree(cache_dir, ignore_errors=True)  # the cold row builds it; the rows after it read it
    rows = {}
    for name, step in steps.items():
        if only and not any(part in name for part in only):
            continue
        if name.startswith("cluster map, old dict") and n > OLD_DICT_LIMIT:
            # ~140 bytes per member (measured at 1e6 and 1e7): 14 GB at 1e8 would not leave the rest room.
            print(f"{n:.0e} {name}: skipped above {OLD_DICT_LIMIT:.0e} members", file=sys.stderr, flush=True)
            rows[name] = {"seconds": float("nan"), "peak_mb": float("nan"), "private_mb": float("nan")}
            continue
        if "warm" in name or name.startswith("loader"):
            if not cache_dir.exists():  # rows that read the cache, run without the cold row: build it, unmeasured
                steps["start-up, cold cache"]()
        try:
            results = step()
            rows[name] = {key: max(r[key] for r in results) for key in results[0] if key != "rank"}
            if name.startswith("shards: 4"):
                rows[name]["sum_seconds"] = sum(r["seconds"] for r in results)
            if name.startswith("shards: merge"):  # the comparison process's time is not the merge's
                rows[name].update(
                    seconds=results[0]["seconds"], peak_mb=results[0]["peak_mb"], private_mb=results[0]["private_mb"]
                )
                rows[name]["identical_bytes"] = results[1]["identical"]
        except RuntimeError as error:  # report the failure in the table and go on
            print(f"{name} at {n:.0e}: {error}", file=sys.stderr)
            rows[name] = {"seconds": float("nan"), "peak_mb": float("nan"), "private_mb": float("nan")}
        print(f"{n:.0e} {name}: {rows[name]}", file=sys.stderr, flush=True)
    nan = float("nan")
    warm = rows.get("start-up, warm cache", {}).pop("batches_per_s", nan)
    page_cached = rows.pop("loader, corpus in page cache", {}).get("batches_per_s", nan)
    rows["loader, pages as the run left them"] = {"batches_per_s": warm}
    rows["loader, corpus in page cache"] = {"batches_per_s": page_cached}
    return rows


def extrapolate(sizes: list[int], values: list[float]) -> float:
    """Linear in the number of documents, from the two largest sizes measured (skipped ones left out)."""
    finite = [(n, v) for n, v in zip(sizes, values) if np.isfinite(v)]
    if len(finite) < 2:
        return float("nan")
    sizes, values = zip(*finite)
    if len(sizes) < 2:
        return float("nan")
    (n0, v0), (n1, v1) = (sizes[-2], values[-2]), (sizes[-1], values[-1])
    return v1 + (v1 - v0) / (n1 - n0) * (TARGET - n1)


def table(results: dict[int, dict[str, dict]]) -> str:
    sizes = sorted(results)
    names = list(results[sizes[0]])
    head = "| step | " + " | ".join(f"{n:.0e} docs" for n in sizes) + " | 939M (linear, last two sizes) |"
    lines = [head, "|---" * (len(sizes) + 2) + "|"]
    for name in names:
        if name.startswith("loader"):
            cells = [f"{results[n].get(name, {}).get('batches_per_s', float('nan')):.1f} batches/s" for n in sizes]
            lines.append(f"| {name} (global batch 64 x 1024) | " + " | ".join(cells) + " | (per step) |")
            continue
        nan = {"seconds": float("nan"), "peak_mb": float("nan"), "private_mb": float("nan")}
        rows = [results[n].get(name, nan) for n in sizes]
        cells = [
            f"{r['seconds']:.1f} s, peak {r['peak_mb'] / 1024:.2f} GB, private peak {r['private_mb'] / 1024:.2f} GB"
            for r in rows
        ]
        seconds = extrapolate(sizes, [r["seconds"] for r in rows])
        peak = extrapolate(sizes, [r["peak_mb"] for r in rows]) / 1024
        private = extrapolate(sizes, [r["private_mb"] for r in rows]) / 1024
        lines.append(
            f"| {name} | " + " | ".join(cells) + f" | {seconds / 60:.1f} min, peak {peak:.1f} GB, "
            f"private peak {private:.1f} GB |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", type=float, default=[1e6, 1e7])
    parser.add_argument("--scratch", default="/tmp/data_scale")
    parser.add_argument("--samples", type=int, default=100_000, help="training samples the datasets are built for")
    parser.add_argument("--loader-steps", type=int, default=300, help="steps per loader row (median of 5 chunks)")
    parser.add_argument("--keep", action="store_true", help="keep the synthetic corpora for another run")
    parser.add_argument("--only", nargs="+", default=[], help="run only the steps whose names contain one of these")
    args = parser.parse_args()
    scratch = Path(args.scratch)
    results = {}
    for size in sorted(int(s) for s in args.sizes):
        results[size] = run_size(size, scratch, args.samples, args.loader_steps, args.only)
        print(f"{size:.0e} documents done", file=sys.stderr, flush=True)
        if not args.keep:
            shutil.rmtree(scratch / f"n{size}", ignore_errors=True)
    print(table(results))
    print("\nraw: " + json.dumps({str(k): v for k, v in results.items()}))


if __name__ == "__main__":
    main()
