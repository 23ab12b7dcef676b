#!/usr/bin/env python
"""The FASTA/JSONL/C++-encoder fuzz properties of ``tests/data/test_fuzz_readers.py``, run long.

CI runs each property on 30 examples; this runs hypothesis' ``long`` profile (20,000 examples
per property, or ``--examples N``) with a fresh seed and prints the wall time. A failure prints
the shrunk input that breaks the property.

    python benchmarks/fuzz_readers.py [--examples 20000]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description="fuzz the sequence readers and the C++ encoder")
    parser.add_argument("--examples", type=int, default=20_000, help="examples per property")
    args = parser.parse_args()
    started = time.perf_counter()
    command = [
        sys.executable,
        "-m",
        "pytest",
        "tests/data/test_fuzz_readers.py",
        "-q",
        "-p",
        "no:cacheprovider",
        f"--hypothesis-seed={time.time_ns() % 2**32}",
    ]
    status = subprocess.call(
        command, cwd=REPO, env={**os.environ, "FUZZ_PROFILE": "long", "FUZZ_EXAMPLES": str(args.examples)}
    )
    print(
        f"fuzz: {'passed' if status == 0 else 'FAILED'} in {time.perf_counter() - started:,.0f} s "
        f"({args.examples:,} examples per property)"
    )
    return status


if __name__ == "__main__":
    sys.exit(main())
