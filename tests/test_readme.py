"""Every ```bash block of README.md, run verbatim and in order, as a reader would (slow).

The commands run in a scratch directory that links the checkout's files (so their outputs land there,
not in the checkout), with nothing beside it: the README uses only what a clone ships. They run in order, in
the state a reader is in (after the quickstart), and a training command that trains nothing fails the test
(a README command that does nothing is as wrong as one that fails). The only adaptations, each a documented
knob:

- ``.venv/bin/python`` and ``.venv/bin/megatron-plm`` are this test's interpreter (``make`` gets it as
  ``VENV``, ``torchrun.sh`` as ``PYTHON``);
- ``ADDED``: options or overrides appended to commands that would otherwise run long (later overrides win;
  fewer steps, never a change to whether a command trains);
- ``SKIPPED``: blocks that cannot run here, each with its reason;
- one OpenBLAS thread (``OPENBLAS_NUM_THREADS=1``): ``scaling fit``'s 5-parameter L-BFGS-B fits otherwise
  spend most of their time waking scipy's BLAS threads (see ``tests/scaling/test_scaling.py``).

A new README block runs as written. Entries of ``ADDED`` and ``SKIPPED`` that match no command fail the
test, so neither list outlives the README it describes.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow

SKIPPED = {
    "make test": "runs this test suite itself",
    "docker build -t megatron-plm .": "needs Docker and a GPU",
    "tools/gpu_rehearsal.sh": "downloads a 5 GB CUDA torch for Python 3.12, and the block ends on a GPU; "
    "tests/benchmarks/test_gpu_suite.py runs the --dry-run",
}
"""First command of a block -> why the block does not run here."""

ADDED = {
    "make quickstart": "OVERRIDES=training.train_iters=6",
    "megatron-plm train --config examples/configs/tiny_clm.yaml training.train_iters=200": "training.train_iters=8",
    "examples/launch/torchrun.sh examples/configs/tiny_clm.yaml 4": "training.train_iters=9",
    "megatron-plm evaluate dms": "--assay IF1_ECOLI_Kelsic_2016",
    "--limit 20 --pseudo": "--limit 4",  # exact pseudo-perplexity: one forward pass per residue
    "megatron-plm scaling fit": "--bootstrap 10",
    "data.tokenizer=tokenizers/bpe1k": "training.train_iters=6",
}
"""Part of a command -> arguments appended to it."""


def readme_blocks(text: str) -> list[list[str]]:
    """The commands of each ```bash block: continuation lines joined, comments and blank lines dropped."""
    blocks = []
    for body in re.findall(r"^```bash\n(.*?)^```", text, re.DOTALL | re.MULTILINE):
        joined = re.sub(r"\\\n\s*", " ", body)
        blocks.append(
            [line.strip() for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]
        )
    return blocks


def first_command(block: list[str]) -> str:
    """A block's first command without its trailing comment: what ``SKIPPED`` is keyed by."""
    return block[0].split("  #")[0].strip()


def adapt(command: str, venv: Path) -> str:
    python = shlex.quote(sys.executable)
    extra = " ".join(more for part, more in ADDED.items() if part in command)
    if command.split()[:1] == ["make"]:
        extra += f" VENV={shlex.quote(str(venv))}"
    if extra:
        comment = command.find("  #")
        command = f"{command} {extra}" if comment < 0 else f"{command[:comment]} {extra}{command[comment:]}"
    tools = {"python": python, "megatron-plm": f"{python} -m megatron_plm"}
    return re.sub(r"(?<![\w/.])\.venv/bin/(python|megatron-plm)\b", lambda m: tools[m.group(1)], command)


def _scratch(tmp_path: Path) -> tuple[Path, Path]:
    """A working copy of the checkout made of links; and a stand-in ``.venv``."""
    work = tmp_path / "checkout"
    work.mkdir()
    for entry in REPO.iterdir():
        if entry.name not in {
            ".git",
            ".venv",
            "outputs",
            "runs",
            "results",
            "hf",
            "ckpt",
            "corpora",
            "sweep",
            "tokenizers",
            "wheels",
        }:
            (work / entry.name).symlink_to(entry)
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n')
    (venv / "bin" / "python").chmod(0o755)
    (venv / ".installed").touch()  # make: already installed (this interpreter)
    return work, venv


def test_readme_lists_match_its_commands():
    blocks = readme_blocks((REPO / "README.md").read_text())
    assert len(blocks) >= 5, "README.md has fewer bash blocks than expected: is the parser still right?"
    firsts = [first_command(block) for block in blocks]
    assert not set(SKIPPED) - set(firsts), (
        f"SKIPPED names blocks the README no longer has: {set(SKIPPED) - set(firsts)}"
    )
    commands = [c for block in blocks for c in block]
    unused = [part for part in ADDED if not any(part in c for c in commands)]
    assert not unused, f"ADDED names commands the README no longer has: {unused}"


def test_every_readme_command_runs_verbatim(tmp_path):
    work, venv = _scratch(tmp_path)
    env = dict(
        {k: v for k, v in os.environ.items() if k != "MEGATRON_PLM_SHARED_DATA"},  # a reader has no team data
        PYTHON=sys.executable,
        MEGATRON_PLM_PROGRESS_INTERVAL="600",
        OPENBLAS_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    )
    ran = 0
    for block in readme_blocks((REPO / "README.md").read_text()):
        if first_command(block) in SKIPPED:
            continue
        for command in block:
            adapted = adapt(command, venv)
            done = subprocess.run(["bash", "-c", adapted], cwd=work, env=env, capture_output=True, text=True)
            assert done.returncode == 0, f"README command failed:\n  {command}\nran as:\n  {adapted}\n" + (
                done.stdout[-3000:] + done.stderr[-3000:]
            )
            assert "nothing to train" not in done.stdout, (
                f"README command trained nothing:\n  {command}\n" + (done.stdout[-3000:])
            )
            ran += 1
    assert (work / "outputs/tiny_mlm/latest").exists() and (work / "hf/tiny_clm/model.safetensors").exists()
    assert (work / "outputs/tiny_clm_tp2pp2/latest").exists()  # the TP2 x PP2 run trained in its own directory
    assert ran >= 15
