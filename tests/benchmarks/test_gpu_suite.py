"""benchmarks/gpu_suite.sh --dry-run: the GPU suite end to end on CPU, so that on a lent GPU only the GPU
is new. Every part runs (tiny shapes, one step) or says why it is skipped, and the tables land in OUT_DIR."""

import os
import re
import signal
import subprocess
import sys

import pytest
import torch

from conftest import REPO

pytestmark = pytest.mark.slow

TABLE_PARTS = {
    "throughput_esm2_650m_packed": ["esm2-650m [varlen]", "esm2-650m [sdpa]", "transformers EsmForMaskedLM [sdpa]"],
    "throughput_esm2_650m_single": ["esm2-650m [varlen]", "transformers EsmForMaskedLM [sdpa]"],
    "throughput_clm_1b": ["clm-1b [varlen]", "transformers GPTNeoXForCausalLM [sdpa]"],
    "profile_esm2_650m": ["kind of work", "GEMM", "rotary + q/k/v split", "bias + GELU"],
    "profile_clm_1b": ["kind of work", "GEMM"],
    "check_kernels": ["rotary (csrc/rotary)       not checked", "bias_gelu (csrc/bias_gelu) not checked"],
    "kernel_parity": [" skipped", " passed"],  # the GPU grids skip; the fake-CUDA traces of the GPU paths pass
}


@pytest.mark.skipif(torch.cuda.is_available(), reason="the rehearsal is for machines without a GPU")
def test_dry_run_runs_every_part_and_writes_the_tables(tmp_path):
    out = tmp_path / "suite"
    env = {**os.environ, "PYTHON": sys.executable}
    suite = subprocess.Popen(
        ["bash", str(REPO / "benchmarks/gpu_suite.sh"), "--dry-run", str(out)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = suite.communicate(timeout=3600)
    except subprocess.TimeoutExpired:
        os.killpg(suite.pid, signal.SIGKILL)  # the parts too, not only the script
        raise
    assert suite.returncode == 0, output[-6000:]
    assert sorted(p.name for p in out.iterdir()) == ["results.md", "suite.log"]  # the device tool returns <= 8 files
    results = (out / "results.md").read_text()
    outcomes = dict(re.findall(r"^## (\w+): (.+) \(\d+ s\)$", results, flags=re.M))
    for name, expected in TABLE_PARTS.items():
        assert outcomes.get(name) == "ok", (name, outcomes)
        section = results.split(f"## {name}: ")[1].split("\n## ")[0]
        for text in expected:
            assert text in section, (name, text, section)
    assert outcomes["corpus"] == "ok"
    assert outcomes["device"].startswith("skipped")
    # Nothing is built in a dry run; carried prebuilt extensions are checked against the GPU machine's versions.
    if (REPO / "prebuilt" / "manifest.txt").is_file():
        assert outcomes["prebuilt"] == "ok", outcomes
    else:
        assert outcomes["build"].startswith("skipped")
    assert "Python 3." in results.splitlines()[2] and "torch 2." in results.splitlines()[2]
    # The install part checks the carried wheels for the GPU machine's Python where they have been fetched.
    assert outcomes["install"] == "ok" if (REPO / "wheels").is_dir() else outcomes["install"].startswith("skipped: no")
    assert "| profile_clm_1b | ok |" in results.split("## Summary")[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the rehearsal is for machines without a GPU")
def test_dry_run_finds_the_checkouts_venv_from_another_folder(tmp_path):
    """Run as a user would, from another folder and with no PYTHON set: the suite uses the checkout's .venv
    (not a system python3 without torch) and writes OUT_DIR relative to where it was started."""
    if not (REPO / ".venv" / "bin" / "python").exists():
        pytest.skip("no .venv in this checkout (make setup makes it)")
    env = {k: v for k, v in os.environ.items() if k != "PYTHON"}
    env["PATH"] = "/usr/bin:/bin"  # no venv on PATH
    run = subprocess.run(
        ["bash", str(REPO / "benchmarks/gpu_suite.sh"), "--dry-run", "--budget", "1", "suite"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    results = (tmp_path / "suite" / "results.md").read_text()
    assert run.returncode == 1 and "torch 2." in results.splitlines()[2], run.stdout + run.stderr  # the .venv's torch
    assert "skipped: the suite's budget of 1 s is spent" in results, run.stdout + run.stderr
