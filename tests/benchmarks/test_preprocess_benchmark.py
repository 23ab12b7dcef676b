"""benchmarks/preprocess.py runs as the README gives it: its whole-process rows repeat the same command."""

import importlib.util

from conftest import REPO


def test_repeated_whole_process_runs_replace_their_corpus(tmp_path, real_fasta):
    spec = importlib.util.spec_from_file_location("bench_preprocess", REPO / "benchmarks" / "preprocess.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    # the second run used to stop with "proc.bin exists ... pass --overwrite" (CalledProcessError)
    assert bench.time_process(bench.tool_command(real_fasta, tmp_path), repeats=2) > 0
    assert (tmp_path / "proc.idx").exists() and not list(tmp_path.glob("*.previous-*"))
