#!/usr/bin/env python
"""Generation speed: key/value-cached decoding against re-running the whole prefix each step.

Samples the same sequences both ways in this one run (same seed; the test suite checks they are
identical) from a CLM checkpoint or ``transformers`` directory and prints a table. Usage:

    python benchmarks/generate.py --model outputs/tiny_clm [--num 8] [--max-length 127] [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a CLM checkpoint or transformers directory")
    parser.add_argument("--num", type=int, default=8, help="sequences per run")
    parser.add_argument("--max-length", type=int, default=127, help="residues at most per sequence")
    parser.add_argument("--repeats", type=int, default=2, help="runs per mode (best kept)")
    args = parser.parse_args(argv)

    from megatron_plm.evaluation.generate import generate
    from megatron_plm.models.generation import SamplingConfig
    from megatron_plm.evaluation.model import load_scoring_model
    from megatron_plm.runtime.distributed import initialize
    from megatron_plm.runtime.parallel import ParallelConfig

    with initialize(ParallelConfig()) as runtime:
        model = load_scoring_model(args.model, runtime)
        rows = {}
        for use_cache in (False, True):
            config = SamplingConfig(num_sequences=args.num, max_length=args.max_length, seed=0, use_cache=use_cache)
            generate(model, SamplingConfig(num_sequences=1, max_length=4, use_cache=use_cache))  # warm-up
            best = float("inf")
            for _ in range(args.repeats):
                started = time.perf_counter()
                sequences = generate(model, config)
                best = min(best, time.perf_counter() - started)
            rows["cached (transformers KV cache)" if use_cache else "uncached (whole prefix each step)"] = (
                best,
                sequences,
            )
    (base, base_seqs), (cached, cached_seqs) = rows.values()
    residues = sum(map(len, base_seqs))
    print(
        f"{model.name}: {args.num} sequences, max {args.max_length} residues, on {runtime.device}; "
        f"{os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f}; best of {args.repeats}"
    )
    print(f"{'mode':<36} {'seconds':>8} {'residues/s':>11} {'speed-up':>9}")
    for name, (seconds, sequences) in rows.items():
        print(f"{name:<36} {seconds:>8.2f} {sum(map(len, sequences)) / seconds:>11,.0f} {base / seconds:>8.1f}x")
    print(f"same sequences both ways: {base_seqs == cached_seqs} ({residues:,} residues)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
