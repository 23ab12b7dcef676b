"""Benchmark ``megatron-plm cluster`` against the shipped MMseqs2 50% clusters.

For each corpus: the shipped clusters' own command (``mmseqs easy-cluster --min-seq-id 0.5 -c 0.8
--cov-mode 0`` run directly on the FASTA: the baseline, in the same run), then ``megatron-plm cluster``
with easy-cluster and with easy-linclust. Prints one table: seconds, sequences/s, peak memory of the
MMseqs2 processes, clusters, and agreement with the shipped assignment (adjusted Rand index; share of
the shipped co-clustered pairs recovered, and share of our pairs the shipped clusters also have).

    python benchmarks/cluster.py [--data ../shared/data] [--threads 2]
"""

from __future__ import annotations

import argparse
import gzip
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from megatron_plm.data.preprocess.cluster import ClusterConfig, cluster  # noqa: E402
from megatron_plm.data.preprocess.mmseqs import find_mmseqs  # noqa: E402

CORPORA = {
    "uniref90_10k": (
        "corpus/uniref90_esm2_pretraining_sample_10k.fasta.gz",
        "clusters/uniref90_esm2_pretraining_sample_10k.clusters50.tsv.gz",
    ),
    "uniprotkb_20k": (
        "corpus/uniprotkb_mmseqs2_example_DB.fasta.gz",
        "clusters/uniprotkb_mmseqs2_example_DB.clusters50.tsv.gz",
    ),
}


def read_assignment(path: Path) -> dict[str, str]:
    opener = gzip.open if path.suffix == ".gz" else open
    out = {}
    with opener(path, "rt") as handle:
        for line in handle:
            rep, member = line.rstrip("\n").split("\t")
            if rep != "cluster_representative":
                out[member] = rep
    return out


def pairs(labels: np.ndarray) -> int:
    _, counts = np.unique(labels, return_counts=True)
    return int((counts * (counts - 1) // 2).sum())


def agreement(shipped: dict[str, str], ours: dict[str, str]) -> tuple[float, float, float]:
    """Adjusted Rand index, recall of shipped co-clustered pairs, precision of ours (members in both)."""
    members = sorted(shipped.keys() & ours.keys())
    a = np.unique([shipped[m] for m in members], return_inverse=True)[1]
    b = np.unique([ours[m] for m in members], return_inverse=True)[1]
    joint = pairs(a * (b.max() + 1) + b)  # pairs together in both
    pa, pb, total = pairs(a), pairs(b), len(members) * (len(members) - 1) // 2
    expected = pa * pb / total
    ari = (joint - expected) / (0.5 * (pa + pb) - expected)
    return ari, joint / pa if pa else 1.0, joint / pb if pb else 1.0


def run_direct(binary: str, fasta: Path, threads: int) -> tuple[float, int, dict[str, str]]:
    """The shipped clusters' command, as the data README states it."""
    with tempfile.TemporaryDirectory() as work:
        started = time.perf_counter()
        process = subprocess.Popen(
            [
                binary,
                "easy-cluster",
                str(fasta),
                f"{work}/out",
                f"{work}/tmp",
                "--min-seq-id",
                "0.5",
                "-c",
                "0.8",
                "--cov-mode",
                "0",
                "--threads",
                str(threads),
                "-v",
                "1",
            ],
        )
        _, status, usage = os.wait4(process.pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, "mmseqs easy-cluster failed"
        seconds = time.perf_counter() - started
        peak = usage.ru_maxrss * 1024
        return seconds, peak, read_assignment(Path(f"{work}/out_cluster.tsv"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared/data")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--corpus", choices=list(CORPORA), action="append")
    args = parser.parse_args()
    binary = find_mmseqs()
    print(f"load before: {os.getloadavg()[0]:.1f} (1-min average), {os.cpu_count()} cores; mmseqs {binary}")
    header = f"{'corpus':<14} {'run':<28} {'seqs':>6} {'s':>7} {'seqs/s':>8} {'peak MiB':>8} {'clusters':>8} {'ARI':>6} {'recall':>6} {'precis':>6}"
    rows = []
    for name in args.corpus or list(CORPORA):
        fasta_rel, clusters_rel = CORPORA[name]
        fasta, shipped = args.data / fasta_rel, read_assignment(args.data / clusters_rel)
        n = len(shipped)
        rows.append(
            f"{name:<14} {'shipped (MMseqs2 14, cluster)':<28} {n:>6} {'-':>7} {'-':>8} {'-':>8} {len(set(shipped.values())):>8} {1.0:>6.3f} {1.0:>6.3f} {1.0:>6.3f}"
        )
        # the direct run names UniProt records by accession (release 18 rewrites 'sp|P1|X' ids): compare on ours
        seconds, peak, _ = run_direct(binary, fasta, args.threads)
        rows.append(
            f"{name:<14} {'mmseqs easy-cluster (direct)':<28} {n:>6} {seconds:>7.1f} {n / seconds:>8.0f} {peak / 2**20:>8.0f} {'':>8} {'':>6} {'':>6} {'':>6}"
        )
        for method in ("cluster", "linclust"):
            with tempfile.TemporaryDirectory() as work:
                out = Path(work) / "c.tsv"
                summary = cluster(
                    ClusterConfig(inputs=[str(fasta)], output=str(out), method=method, threads=args.threads, quiet=True)
                )
                ours = read_assignment(out)
            ari, recall, precision = agreement(shipped, ours)
            rows.append(
                f"{name:<14} {'megatron-plm cluster ' + method:<28} {summary.records:>6} {summary.seconds:>7.1f} "
                f"{summary.sequences_per_second:>8.0f} {summary.peak_rss_bytes / 2**20:>8.0f} {summary.clusters:>8} "
                f"{ari:>6.3f} {recall:>6.3f} {precision:>6.3f}"
            )
            print(rows[-1], flush=True)
    print(header)
    print("\n".join(rows))
    print(f"load after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
