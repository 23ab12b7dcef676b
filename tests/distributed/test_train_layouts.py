"""The training loop under torchrun (gloo, CPU): parallel layouts, resharding checkpoints, kill -9.

Every layout starts from the same weights (``checkpoint.init_from``) and trains on the same
global batches, so the per-token losses agree up to float32 summation order.
"""

import json
import os
import signal
import subprocess
import time

import pytest
import torch

from conftest import REPO, train_command
from megatron_plm.checkpoint.distributed import latest_checkpoint
from megatron_plm.training.config import load_config
from megatron_plm.runtime.distributed import initialize
from megatron_plm.training.trainer import train

pytestmark = [pytest.mark.slow, pytest.mark.distributed]
STEPS = 3
RTOL = 2e-5


def overrides(corpus, workdir, name, *extra):
    return [
        f"data.sources=[{{prefix: {corpus}}}]",
        "training.eval_interval=0",
        f"training.train_iters={STEPS}",
        "logging.log_interval=100",
        f"logging.metrics_file={workdir / name}.jsonl",
        "checkpoint.init_from=null",
        "checkpoint.save=null",
        *extra,
    ]


def run_here(corpus, workdir, name, *extra):
    config = load_config(REPO / "examples/configs/tiny_clm.yaml", overrides(corpus, workdir, name, *extra))
    with initialize(config.parallel, seed=config.training.seed) as runtime:
        return train(config, runtime)


def run_torchrun(corpus, workdir, name, nproc, *extra):
    command = train_command(*overrides(corpus, workdir, name, *extra), nproc=nproc)
    out = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-6000:]
    lines = [json.loads(line) for line in (workdir / f"{name}.jsonl").read_text().splitlines()]
    return [x for x in lines if x["kind"] == "train"], [x for x in lines if x["kind"] == "validation"]


@pytest.fixture(scope="module")
def reference(sample_corpus, tmp_path_factory):
    """TP=1, PP=1 in this process; its initial weights seed every other layout."""
    workdir = tmp_path_factory.mktemp("layouts")
    first = run_here(sample_corpus, workdir, "init", "training.train_iters=1", f"checkpoint.save={workdir / 'init'}")
    assert first.checkpoint is not None
    # Steps from the 1-step checkpoint's weights (a weights source, not a resume: fresh optimizer).
    result = run_here(
        sample_corpus,
        workdir,
        "reference",
        f"checkpoint.init_from={workdir / 'init'}",
        f"checkpoint.save={workdir / 'reference_ckpt'}",
    )
    return workdir, result


@pytest.mark.parametrize(
    "nproc, tp, pp, distopt, backend",
    [
        (2, 1, 1, False, "local"),
        (4, 2, 1, False, "local"),
        (4, 1, 2, False, "local"),
        (4, 2, 2, False, "local"),
        (2, 1, 1, True, "local"),
        (4, 2, 2, False, "varlen"),
    ],
    ids=["dp2", "tp2_dp2", "pp2_dp2", "tp2_pp2", "dp2_distributed_optimizer", "tp2_pp2_packed_varlen"],
)
def test_layouts_follow_the_single_process_trajectory(reference, sample_corpus, nproc, tp, pp, distopt, backend):
    """The reference uses local attention with masks; the varlen layout sends packed (thd) batches
    through the pipeline, with heads split over TP."""
    workdir, expected = reference
    name = f"tp{tp}_pp{pp}_n{nproc}" + ("_distopt" if distopt else "") + ("" if backend == "local" else f"_{backend}")
    steps, validation = run_torchrun(
        sample_corpus,
        workdir,
        name,
        nproc,
        f"parallel.tensor_model_parallel_size={tp}",
        f"parallel.pipeline_model_parallel_size={pp}",
        f"parallel.use_distributed_optimizer={str(distopt).lower()}",
        f"model.attention_backend={backend}",
        f"checkpoint.init_from={workdir / 'init'}",
        f"checkpoint.save={workdir / name}_ckpt",
    )
    assert [s["step"] for s in steps] == [1, 2, 3]
    for want, got in zip(expected.history, steps):
        assert got["tokens"] == want["tokens"]
        assert got["loss"] == pytest.approx(want["loss"], rel=RTOL), f"step {want['step']}"
        assert got["grad_norm"] == pytest.approx(want["grad_norm"], rel=10 * RTOL)
    assert validation[-1]["loss"] == pytest.approx(expected.validation[-1]["loss"], rel=RTOL)


def test_checkpoints_reshard_both_ways(reference, sample_corpus):
    """TP2xPP2 -> TP1 and TP1 -> TP2xPP2: resuming a finished run validates the loaded weights."""
    workdir, expected = reference
    saved_tp2pp2 = workdir / "tp2_pp2_n4_ckpt"
    if latest_checkpoint(saved_tp2pp2) is None:
        pytest.skip("needs the tp2_pp2 layout test's checkpoint (run the module, not this test alone)")
    loaded_here = run_here(sample_corpus, workdir, "reload_tp1", f"checkpoint.load={saved_tp2pp2}")
    assert loaded_here.history == []  # nothing left to train: it resumed at the last step
    assert loaded_here.validation[-1]["loss"] == pytest.approx(expected.validation[-1]["loss"], rel=RTOL)
    _, validation = run_torchrun(
        sample_corpus,
        workdir,
        "reload_tp2pp2",
        4,
        "parallel.tensor_model_parallel_size=2",
        "parallel.pipeline_model_parallel_size=2",
        f"checkpoint.load={workdir / 'reference_ckpt'}",
    )
    assert validation[-1]["loss"] == pytest.approx(expected.validation[-1]["loss"], rel=RTOL)


def test_distributed_optimizer_checkpoint_refuses_to_resume_without_te_or_apex(reference, sample_corpus):
    """megatron-core 0.16.1 cannot load distributed-optimizer state into torch's Adam: a clear error
    at start-up, and the weights still serve as checkpoint.init_from."""
    from megatron.core.optimizer.distrib_optimizer import HAVE_APEX_OR_TE

    if HAVE_APEX_OR_TE:
        pytest.skip("Transformer Engine or apex present: the resume path is megatron-core's own")
    workdir, _ = reference
    saved = workdir / "tp1_pp1_n2_distopt_ckpt"
    if latest_checkpoint(saved) is None:
        pytest.skip("needs the distributed-optimizer layout test's checkpoint (run the module)")
    command = train_command(
        *overrides(
            sample_corpus,
            workdir,
            "distopt_resume",
            "parallel.use_distributed_optimizer=true",
            f"checkpoint.load={saved}",
        ),
        nproc=2,
    )
    out = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode != 0 and "needs Transformer Engine or apex" in out.stderr
    continued = run_here(sample_corpus, workdir, "from_distopt_weights", f"checkpoint.init_from={saved}")
    assert len(continued.transferred) > 10


def test_export_from_tp2_pp2_equals_export_at_tp1(reference, sample_corpus):
    """The same weights saved at TP2xPP2 (by a run that resumes at its last step and re-saves) and at
    TP1 export to identical transformers tensors."""
    from safetensors.torch import load_file

    from megatron_plm.checkpoint.export import export_hf
    from megatron_plm.runtime.parallel import ParallelConfig

    workdir, _ = reference
    resaved = workdir / "init_at_tp2pp2"
    run_torchrun(
        sample_corpus,
        workdir,
        "resave",
        4,
        "parallel.tensor_model_parallel_size=2",
        "parallel.pipeline_model_parallel_size=2",
        "training.train_iters=1",
        f"checkpoint.load={workdir / 'init'}",
        f"checkpoint.save={resaved}",
    )
    with initialize(ParallelConfig()) as runtime:
        at_tp1 = export_hf(workdir / "init", workdir / "hf_tp1", runtime)
        at_tp2pp2 = export_hf(resaved, workdir / "hf_tp2pp2", runtime)
    a, b = load_file(at_tp1 / "model.safetensors"), load_file(at_tp2pp2 / "model.safetensors")
    assert sorted(a) == sorted(b)
    assert all(torch.equal(a[key], b[key]) for key in a)


def test_kill_during_a_save_leaves_the_previous_checkpoint_loadable(sample_corpus, tmp_path):
    save_dir = tmp_path / "ckpt"
    command = train_command(
        *overrides(
            sample_corpus,
            tmp_path,
            "killed",
            "training.train_iters=200",
            "checkpoint.save_interval=1",
            "checkpoint.keep_last=2",
            f"checkpoint.save={save_dir}",
        )
    )
    process = subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        deadline = time.time() + 300
        while time.time() < deadline:
            completed = [p for p in save_dir.glob("iter_*") if ".tmp-" not in p.name] if save_dir.exists() else []
            if completed and list(save_dir.glob("iter_*.tmp-*")):
                break  # a save is in progress after at least one completed checkpoint
            time.sleep(0.005)
        else:
            pytest.fail("never caught the run during a save")
        os.killpg(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=60)
    assert list(save_dir.glob("iter_*.tmp-*")), "the kill landed outside the save; the test proves nothing"
    latest = latest_checkpoint(save_dir)
    assert latest is not None and ".tmp-" not in latest.name
    step = int(latest.name.split("_")[1])
    resumed = run_here(
        sample_corpus, tmp_path, "after_kill", f"checkpoint.save={save_dir}", f"training.train_iters={step + 2}"
    )
    assert [h["step"] for h in resumed.history] == [step + 1, step + 2]
    assert not list(save_dir.glob("iter_*.tmp-*"))  # the next save cleared the leftovers
