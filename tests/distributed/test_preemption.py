"""A signal mid-run under torchrun (gloo, 2 ranks): every rank stops after the same step and saves,
the workers exit 75, and the relaunch continues at the next step, with one metrics entry per step."""

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import REPO, train_command
from megatron_plm.checkpoint.distributed import latest_checkpoint

pytestmark = [pytest.mark.slow, pytest.mark.distributed]
STEPS = 12


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (torchrun's workers), from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def train_steps(metrics: Path) -> list[int]:
    if not metrics.exists():
        return []
    return [json.loads(line)["step"] for line in metrics.read_text().splitlines() if '"kind": "train"' in line]


def test_a_signal_to_one_rank_saves_and_the_relaunch_continues(sample_corpus, tmp_path):
    save = tmp_path / "run"
    command = train_command(
        f"data.sources=[{{prefix: {sample_corpus}}}]",
        f"checkpoint.save={save}",
        "checkpoint.save_interval=0",
        "checkpoint.init_from=null",
        "data.seq_length=64",
        "training.global_batch_size=4",
        "training.micro_batch_size=2",
        "training.eval_interval=0",
        "training.eval_iters=1",
        f"training.train_iters={STEPS}",
        "training.exit_signal=SIGUSR1",
        "logging.log_interval=1",
        nproc=2,
    )
    first = subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 300
        while len(train_steps(save / "metrics.jsonl")) < 2 and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        workers = children(first.pid)
        assert len(workers) == 2, f"expected torchrun's 2 workers, found {workers}"
        # SIGUSR1 to one worker only: the other learns of it through the per-step agreement.
        os.kill(workers[-1], signal.SIGUSR1)
        output = first.communicate(timeout=300)[0]
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    stopped = re.search(r"stopping after step (\d+) on (SIGUSR1|a signal on another rank); relaunch to resume", output)
    assert stopped, output[-4000:]
    step = int(stopped.group(1))
    assert 2 <= step < STEPS
    assert re.search(r"exitcode\s*:\s*75", output), output[-3000:]  # torchrun reports each worker's status
    assert latest_checkpoint(save).name == f"iter_{step:07d}"

    second = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert f"resumed from {save / f'iter_{step:07d}'} at step {step}" in second.stdout
    assert f"steps {step + 1}..{STEPS}" in second.stdout
    assert train_steps(save / "metrics.jsonl") == list(range(1, STEPS + 1))  # none lost, none repeated
