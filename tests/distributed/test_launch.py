"""The launch script across two "nodes" on localhost: c10d rendezvous on 127.0.0.1, 2 processes each,
TP=2 x PP=2, a few steps and a checkpoint, as a multi-node job would run."""

import json
import os
import socket
import subprocess
import sys

import pytest

from conftest import REPO
from megatron_plm.checkpoint.distributed import latest_checkpoint

pytestmark = [pytest.mark.slow, pytest.mark.distributed]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_on_localhost_train_and_checkpoint(sample_corpus, tmp_path):
    port = _free_port()
    overrides = [
        f"data.sources=[{{prefix: {sample_corpus}}}]",
        "parallel.tensor_model_parallel_size=2",
        "parallel.pipeline_model_parallel_size=2",
        "training.train_iters=3",
        "training.eval_interval=0",
        f"checkpoint.save={tmp_path / 'ckpt'}",
        "checkpoint.init_from=null",
        f"logging.metrics_file={tmp_path / 'metrics.jsonl'}",
    ]
    nodes = []
    for rank in range(2):
        env = dict(
            os.environ,
            NNODES="2",
            NODE_RANK=str(rank),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            PYTHON=sys.executable,
        )
        nodes.append(
            subprocess.Popen(
                ["bash", "examples/launch/torchrun.sh", "examples/configs/tiny_clm.yaml", "2", *overrides],
                cwd=REPO,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outputs = [node.communicate(timeout=600)[0] for node in nodes]
    for node, output in zip(nodes, outputs):
        assert node.returncode == 0, output[-4000:]
    assert "TP 2 x PP 2 x DP 1" in outputs[0] + outputs[1]
    steps = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps if s["kind"] == "train"] == [1, 2, 3]
    assert latest_checkpoint(tmp_path / "ckpt").name == "iter_0000003"
