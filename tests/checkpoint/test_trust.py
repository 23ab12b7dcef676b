"""Loading a stranger's checkpoint runs no code, and a corrupt one never loads silently.

Payloads are harmless: unpickling them would create a marker file. Each test fails before
the fix by finding the marker (or by loading garbage without an error).
"""

import io
import json
import pickle
import shutil

import pytest
import torch

from conftest import REPO
from megatron_plm.checkpoint.export import export_hf
from megatron_plm.checkpoint.manifest import write_manifest
from megatron_plm.checkpoint.trust import CheckpointError
from megatron_plm.training.config import load_config
from megatron_plm.evaluation.model import load_scoring_model
from megatron_plm.training.trainer import train


class Payload:
    """Unpickling calls ``open(marker, "w")``: the file appears only if the pickle was run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def tiny(corpus, save, *overrides):
    return load_config(
        REPO / "examples/configs/tiny_clm.yaml",
        [
            f"data.sources=[{{prefix: {corpus}}}]",
            f"checkpoint.save={save}",
            "checkpoint.init_from=null",
            "logging.log_interval=100",
            "training.eval_interval=0",
            "training.eval_iters=1",
            *overrides,
        ],
    )


@pytest.fixture(scope="module")
def saved(runtime, sample_corpus, tmp_path_factory):
    """A run's save directory with two complete checkpoints (steps 1 and 2)."""
    root = tmp_path_factory.mktemp("trust") / "run"
    train(tiny(sample_corpus, root, "training.train_iters=2", "checkpoint.save_interval=1"), runtime)
    assert (root / "latest").read_text().strip() == "iter_0000002"
    return root


@pytest.fixture
def run_copy(saved, tmp_path):
    root = tmp_path / "run"
    shutil.copytree(saved, root)
    return root


def entry_points(runtime, corpus, root, tmp_path):
    """Every way a checkpoint is loaded: resume, checkpoint.init_from, export-hf, evaluate --model."""
    return {
        "resume": lambda: train(tiny(corpus, root, "training.train_iters=3"), runtime),
        "init_from": lambda: train(
            tiny(corpus, tmp_path / "fresh", "training.train_iters=1", f"checkpoint.init_from={root}"), runtime
        ),
        "export-hf": lambda: export_hf(root, tmp_path / "hf", runtime),
        "evaluate": lambda: load_scoring_model(root, runtime),
    }


ENTRY_POINTS = ["resume", "init_from", "export-hf", "evaluate"]


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_metadata_pickle_payload_is_refused(runtime, sample_corpus, run_copy, tmp_path, entry):
    marker = tmp_path / "pwned"
    latest = run_copy / "iter_0000002"
    (latest / ".metadata").write_bytes(pickle.dumps(Payload(marker)))
    write_manifest(latest)  # whoever planted it also rewrote the checksums
    with pytest.raises(
        CheckpointError, match=r"iter_0000002/\.metadata: refuses to load: it asks to import (builtins|io)\.open"
    ):
        entry_points(runtime, sample_corpus, run_copy, tmp_path)[entry]()
    assert not marker.exists()


def test_rng_state_payload_is_refused_on_resume(runtime, sample_corpus, run_copy, tmp_path):
    marker = tmp_path / "pwned"
    latest = run_copy / "iter_0000002"
    state = torch.load(latest / "rng_rank0.pt", weights_only=False)
    torch.save({**state, "python": Payload(marker)}, latest / "rng_rank0.pt")
    write_manifest(latest)
    with pytest.raises(CheckpointError, match=r"rng_rank0\.pt: refuses to load: not plain RNG state data"):
        entry_points(runtime, sample_corpus, run_copy, tmp_path)["resume"]()
    assert not marker.exists()


def test_shard_byte_item_payload_is_refused_on_resume(runtime, sample_corpus, run_copy, tmp_path):
    """Non-tensor items inside ``*.distcp`` shards are unpickled by torch's planner with full power."""
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata

    marker = tmp_path / "pwned"
    latest = run_copy / "iter_0000002"
    metadata = pickle.loads((latest / ".metadata").read_bytes())
    blob = io.BytesIO()
    torch.save(Payload(marker), blob)
    for index, info in metadata.storage_data.items():  # point every non-tensor item at the payload
        if isinstance(metadata.state_dict_metadata[index.fqn], BytesStorageMetadata):
            shard = latest / info.relative_path
            info.offset, info.length = shard.stat().st_size, len(blob.getvalue())
            with open(shard, "ab") as handle:
                handle.write(blob.getvalue())
    (latest / ".metadata").write_bytes(pickle.dumps(metadata))
    write_manifest(latest)
    with pytest.raises(CheckpointError, match=r"\.distcp: refuses to load item .*_extra_state"):
        entry_points(runtime, sample_corpus, run_copy, tmp_path)["resume"]()
    assert not marker.exists()


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_overwritten_shard_bytes_are_named_and_an_older_checkpoint_suggested(
    runtime, sample_corpus, run_copy, tmp_path, entry
):
    shard = run_copy / "iter_0000002" / "__0_0.distcp"
    data = bytearray(shard.read_bytes())
    data[4096:8192] = bytes(4096)  # 4 KB of zeros inside tensor data: the file still parses
    shard.write_bytes(bytes(data))
    with pytest.raises(
        CheckpointError,
        match=r"iter_0000002/__0_0\.distcp is corrupt: its sha256 differs.*"
        r"older complete checkpoint is intact: .*iter_0000001",
    ):
        entry_points(runtime, sample_corpus, run_copy, tmp_path)[entry]()
    assert not (tmp_path / "hf").exists()


def test_truncated_and_unlisted_files(run_copy):
    from megatron_plm.checkpoint.distributed import verify_checkpoint

    latest = run_copy / "iter_0000002"
    verify_checkpoint(latest)  # intact
    (latest / "common.pt").write_bytes((latest / "common.pt").read_bytes()[:100])
    with pytest.raises(CheckpointError, match=r"common\.pt is corrupt: 100 bytes, [0-9,]+ when saved"):
        verify_checkpoint(latest)
    (latest / "manifest.json").unlink()  # without checksums, the files themselves are checked
    with pytest.raises(CheckpointError, match=r"common\.pt is truncated, corrupt or not plain data"):
        verify_checkpoint(latest)
    (latest / ".metadata").write_bytes((latest / ".metadata").read_bytes()[:500])
    with pytest.raises(CheckpointError, match=r"\.metadata is truncated or corrupt"):
        verify_checkpoint(latest)
    older = run_copy / "iter_0000001"
    (older / "extra.pt").write_bytes(b"x")
    with pytest.raises(CheckpointError, match=r"extra\.pt is not listed in .*manifest\.json"):
        verify_checkpoint(older)


def test_latest_must_not_leave_the_save_directory(runtime, sample_corpus, run_copy, tmp_path):
    other = tmp_path / "other_run"
    shutil.copytree(run_copy, other)
    (run_copy / "latest").write_text("../other_run/iter_0000002\n")
    with pytest.raises(CheckpointError, match=r"names '\.\./other_run/iter_0000002', not a checkpoint of"):
        entry_points(runtime, sample_corpus, run_copy, tmp_path)["resume"]()
    (run_copy / "latest").write_text("iter_0000009\n")
    (run_copy / "iter_0000009").symlink_to(other / "iter_0000002")
    with pytest.raises(CheckpointError, match=r"a link out of"):
        entry_points(runtime, sample_corpus, run_copy, tmp_path)["export-hf"]()


def test_checkpoint_load_must_hold_a_checkpoint(runtime, sample_corpus, tmp_path):
    for load, problem in ((tmp_path / "missing", "does not exist"), (tmp_path, "holds no checkpoint")):
        config = tiny(sample_corpus, tmp_path / "save", "training.train_iters=1", f"checkpoint.load={load}")
        with pytest.raises(FileNotFoundError, match=rf"checkpoint\.load={load} {problem}"):
            train(config, runtime)
        assert not (tmp_path / "save" / "latest").exists()


def test_damaged_train_state_is_named(runtime, sample_corpus, run_copy, tmp_path):
    (run_copy / "iter_0000002" / "train_state.json").write_text('{"iteration": 2,')
    with pytest.raises(CheckpointError, match=r"train_state\.json is corrupt"):
        entry_points(runtime, sample_corpus, run_copy, tmp_path)["resume"]()


def test_non_finite_parameters_never_become_latest(runtime, sample_corpus, run_copy, tmp_path):
    with pytest.raises(ValueError, match=r"optimizer\.lr must be a finite number, got inf"):
        tiny(sample_corpus, run_copy, "optimizer.lr=.inf")
    from megatron_plm.checkpoint.distributed import save_checkpoint
    from megatron_plm.training.build import build_training_state

    config = tiny(sample_corpus, run_copy).resolve()
    config.model.vocab_size = 33
    state = build_training_state(
        config.model, config.optimizer, runtime, objective="clm", precision="fp32", train_iters=4
    )
    with torch.no_grad():
        next(state.unwrapped()[0].parameters()).view(-1)[0] = float("nan")
    with pytest.raises(CheckpointError, match=r"step 3: parameters are not finite \(embedding"):
        save_checkpoint(run_copy, iteration=3, consumed_samples=48, state=state, config=config.to_dict(), keep_last=5)
    assert (run_copy / "latest").read_text().strip() == "iter_0000002"
    assert not list(run_copy.glob("iter_0000003*"))


def test_unwritable_outputs_fail_before_training(runtime, sample_corpus, tmp_path):
    (tmp_path / "file").write_text("")
    for override, field in (
        ("checkpoint.save", "checkpoint.save"),
        ("logging.tensorboard_dir", "logging.tensorboard_dir"),
    ):
        config = tiny(sample_corpus, tmp_path / "ok", "training.train_iters=1", f"{override}={tmp_path}/file/sub")
        with pytest.raises(ValueError, match=rf"{field}={tmp_path}/file/sub is not writable"):
            train(config, runtime)
    config = tiny(sample_corpus, tmp_path / "ok", f"logging.metrics_file={tmp_path}")
    with pytest.raises(ValueError, match=r"logging\.metrics_file=.* is a directory"):
        train(config, runtime)
    assert not (tmp_path / "ok").exists() or not list((tmp_path / "ok").iterdir())


def test_manifest_lists_every_file_with_its_sha256(saved):
    import hashlib

    latest = saved / "iter_0000002"
    manifest = json.loads((latest / "manifest.json").read_text())
    assert manifest["algorithm"] == "sha256"
    assert sorted(manifest["files"]) == sorted(p.name for p in latest.iterdir() if p.name != "manifest.json")
    for name, entry in manifest["files"].items():
        data = (latest / name).read_bytes()
        assert entry == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def test_a_killed_save_leaves_no_writer_process(tmp_path):
    """megatron-core forks shard writers during a save; ``kill -9`` of the trainer must take them along."""
    import os
    import signal
    import subprocess
    import sys
    import time

    script = """
import multiprocessing, os, sys, time
from megatron_plm.checkpoint.distributed import writers_die_with_parent
with writers_die_with_parent():
    writer = multiprocessing.get_context("fork").Process(target=time.sleep, args=(120,))
    writer.start()
print(writer.pid, flush=True)
time.sleep(120)
"""
    parent = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    child = int(parent.stdout.readline())
    parent.send_signal(signal.SIGKILL)
    parent.wait()

    def alive(pid):
        try:
            with open(f"/proc/{pid}/status") as status:
                return "\nState:\tZ" not in status.read()  # a zombie is dead, waiting to be reaped
        except FileNotFoundError:
            return False

    deadline = time.monotonic() + 10
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    if alive(child):
        os.kill(child, signal.SIGKILL)
        pytest.fail(f"writer {child} outlived its killed parent")


@pytest.mark.parametrize("entry", ["resume", "export-hf"])
def test_truncated_shard_of_a_checkpoint_without_manifest_is_named(runtime, sample_corpus, run_copy, tmp_path, entry):
    latest = run_copy / "iter_0000002"
    (latest / "manifest.json").unlink()  # an older version's checkpoint: nothing to check sizes against
    shard = latest / "__0_0.distcp"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"iter_0000002: cannot load its model"):
        entry_points(runtime, sample_corpus, run_copy, tmp_path)[entry]()
    assert not (tmp_path / "hf").exists()


def test_pickled_transformers_weights_are_refused_without_a_traceback(runtime, run_copy, tmp_path):
    from megatron_plm.safe_io import DamagedFileError

    hf = export_hf(run_copy, tmp_path / "hf", runtime)
    marker = tmp_path / "pwned"
    (hf / "model.safetensors").unlink()
    torch.save({"weights": Payload(marker)}, hf / "pytorch_model.bin")
    with pytest.raises(DamagedFileError, match=r"hf: .*; loading refused or failed; use a model directory you trust"):
        load_scoring_model(hf, runtime)
    assert not marker.exists()


def test_damaged_manifest_entry_is_named(run_copy):
    from megatron_plm.checkpoint.distributed import verify_checkpoint

    latest = run_copy / "iter_0000002"
    manifest = json.loads((latest / "manifest.json").read_text())
    manifest["files"]["common.pt"] = 3
    (latest / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=r"manifest\.json is corrupt .*the entry of 'common\.pt'"):
        verify_checkpoint(latest)
