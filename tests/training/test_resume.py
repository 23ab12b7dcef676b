"""Resume semantics, the run directory and stopping on a signal, in this process (CPU fp32, small batches)."""

import json
import math
import os
import shutil
import signal
import threading
import time

import pytest

from conftest import REPO
from megatron_plm.training.config import load_config
from megatron_plm.runtime.distributed import initialize
from megatron_plm.training.curves import plot_runs, series
from megatron_plm.training.metrics import read_metrics
from megatron_plm.training.trainer import train

LR, MIN_LR = 3e-3, 3e-4


def small(corpus, save, *overrides):
    return load_config(
        REPO / "examples/configs/tiny_clm.yaml",
        [
            f"data.sources=[{{prefix: {corpus}}}]",
            f"checkpoint.save={save}",
            "checkpoint.save_interval=0",
            "data.seq_length=64",
            "training.global_batch_size=4",
            "training.micro_batch_size=4",
            "training.eval_interval=0",
            "training.eval_iters=1",
            "training.train_iters=6",
            "optimizer.warmup_iters=0",
            f"optimizer.lr={LR}",
            f"optimizer.min_lr={MIN_LR}",
            "logging.log_interval=100",
            *overrides,
        ],
    )


def run(config):
    with initialize(config.parallel, seed=config.training.seed) as runtime:
        return train(config, runtime)


def cosine(step, lr, min_lr, decay_steps):
    """megatron-core's cosine decay (no warm-up) after ``step`` applied updates, computed here independently."""
    return min_lr + (lr - min_lr) * 0.5 * (math.cos(math.pi * step / decay_steps) + 1)


@pytest.fixture(scope="module")
def halfway(sample_corpus, tmp_path_factory):
    """A run of 6 steps stopped and saved after step 3 (training.exit_interval)."""
    save = tmp_path_factory.mktemp("halfway") / "run"
    result = run(small(sample_corpus, save, "training.exit_interval=3"))
    assert result.iterations == 3 and result.checkpoint.name == "iter_0000003"
    return save


def copy_of(halfway, tmp_path):
    shutil.copytree(halfway, tmp_path / "run")
    return tmp_path / "run"


def test_a_changed_schedule_follows_the_config(sample_corpus, halfway, tmp_path, capsys):
    save = copy_of(halfway, tmp_path)
    resumed = run(small(sample_corpus, save, "optimizer.lr=0.001", "training.train_iters=5"))
    out = capsys.readouterr().out
    assert "changed since iter_0000003: optimizer.lr 0.003 -> 0.001 (schedule: from this config)" in out
    assert "training.train_iters 6 -> 5" in out
    assert [h["step"] for h in resumed.history] == [4, 5]
    # The LR after each update is the new 5-step schedule's, not the saved 6-step one at lr 3e-3.
    for h in resumed.history:
        assert h["lr"] == pytest.approx(cosine(h["step"], 1e-3, MIN_LR, 5), rel=1e-9)


def test_the_checkpoint_schedule_on_request(sample_corpus, halfway, tmp_path, capsys):
    save = copy_of(halfway, tmp_path)
    resumed = run(small(sample_corpus, save, "optimizer.lr=0.001", "checkpoint.resume_schedule=checkpoint"))
    assert "optimizer.lr 0.003 -> 0.001 (ignored: checkpoint.resume_schedule=checkpoint)" in capsys.readouterr().out
    assert [h["lr"] for h in resumed.history] == pytest.approx([cosine(s, LR, MIN_LR, 6) for s in (4, 5, 6)])


@pytest.mark.parametrize(
    "override, field",
    [
        ("model.hidden_size=32", "model.hidden_size"),
        ("objective=mlm data.reverse_prob=0.0", "objective"),
        ("data.split_weights=[0.8,0.1,0.1]", "data.split_weights"),
        ("data.seq_length=32", "data.seq_length"),
    ],
)
def test_a_changed_immutable_field_is_an_error(sample_corpus, halfway, tmp_path, override, field):
    save = copy_of(halfway, tmp_path)
    config_yaml = (save / "config.yaml").read_bytes()
    with pytest.raises(ValueError, match=rf"^{field} changed since .*iter_0000003"):
        run(small(sample_corpus, save, *override.split()))
    assert (save / "config.yaml").read_bytes() == config_yaml  # the refused launch describes nothing


def test_a_finished_run_says_so_and_saves_nothing(sample_corpus, halfway, tmp_path, capsys):
    save = copy_of(halfway, tmp_path)
    before = {p.name: (p.stat().st_mtime_ns, p.is_file() and p.read_bytes()) for p in save.iterdir()}
    # A relaunch with changed settings that trains nothing: config.yaml still describes the launch that trained.
    result = run(small(sample_corpus, save, "training.train_iters=3", "logging.log_interval=7"))
    assert result.already_done and result.history == [] and result.checkpoint is None
    assert "already at step 3 (training.train_iters=3): nothing to train" in capsys.readouterr().out
    after = {p.name: (p.stat().st_mtime_ns, p.is_file() and p.read_bytes()) for p in save.iterdir()}
    assert after == before
    assert load_config(save / "config.yaml").training.train_iters == 6


def test_metrics_hold_each_step_once_after_a_lost_launch(sample_corpus, halfway, tmp_path):
    save = copy_of(halfway, tmp_path)
    metrics = save / "metrics.jsonl"
    # A launch that died after step 5 without saving left steps 4 and 5 behind.
    with open(metrics, "a") as handle:
        for step in (4, 5):
            handle.write(json.dumps({"kind": "train", "step": step, "loss": 9.0}) + "\n")
    run(small(sample_corpus, save))
    entries = read_metrics(save)
    steps = [e["step"] for e in entries if e["kind"] == "train"]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert all(e.get("loss") != 9.0 for e in entries)
    assert [e["step"] for e in entries if e["kind"] == "validation"] == [6]
    assert load_config(save / "config.yaml").training.train_iters == 6  # the resolved config, loadable


def test_metrics_lines_carry_a_utc_timestamp(halfway):
    from datetime import datetime, timezone

    stamps = [datetime.fromisoformat(e["time"]) for e in read_metrics(halfway)]
    assert stamps and all(t.tzinfo == timezone.utc for t in stamps) and stamps == sorted(stamps)
    assert (datetime.now(timezone.utc) - stamps[0]).total_seconds() < 3600


def test_plot_marks_resumes_with_changed_settings_and_gives_each_objective_its_loss_panel(
    sample_corpus, halfway, tmp_path
):
    from megatron_plm.training.curves import draw, load_runs, resumes

    save = copy_of(halfway, tmp_path)
    run(small(sample_corpus, save, f"optimizer.lr={LR / 2}"))  # resumed after step 3 at half the peak LR
    ((step, changed),) = resumes(read_metrics(save))
    assert step == 3 and changed == {"lr": (LR, LR / 2)}
    mlm = tmp_path / "mlm"  # the same curves under an MLM run's name: a separate panel, not a shared axis
    mlm.mkdir()
    shutil.copy(save / "metrics.jsonl", mlm / "metrics.jsonl")
    (mlm / "config.yaml").write_text("objective: mlm\n")
    fig = draw(load_runs([save, mlm]))
    fig.canvas.draw()
    panels = {ax.get_title(): ax for ax in fig.axes if ax.get_visible() and ax.get_title()}
    assert list(panels) == ["CLM loss", "MLM loss", "learning rate", "training throughput"]
    clm = panels["CLM loss"]
    assert [line.get_label() for line in clm.lines if not line.get_label().startswith("_")] == [
        "run train",
        "run validation",
    ]
    validation = clm.lines[1]
    assert validation.get_linestyle() == "None" and validation.get_marker() == "o"  # points, not a line
    ticks = [t.get_text() for t in clm.get_xticklabels() if t.get_text()]
    assert any(t.endswith("k") for t in ticks) and all(len(t) <= 5 for t in ticks), ticks  # SI suffixes
    tokens_at_resume = dict(zip(*(series(read_metrics(save))["train"][k] for k in ("step", "tokens_seen"))))[3]
    assert any(list(line.get_xdata()) == [tokens_at_resume] * 2 for line in clm.lines)  # the resume line
    assert any(t.get_text().startswith("resume\nlr ") for t in clm.texts)


def test_plot_draws_the_run(halfway, tmp_path):
    data = series(read_metrics(halfway))
    assert data["train"]["step"] == [1, 2, 3] and len(data["train"]["tokens_per_s"]) == 3
    assert data["train"]["tokens_seen"] == [4 * 64 * s for s in (1, 2, 3)]
    out = plot_runs([halfway, halfway], tmp_path / "curves.png")
    import matplotlib.image

    height, width, _ = matplotlib.image.imread(out).shape
    assert width > height > 300


def test_a_signal_saves_and_the_relaunch_continues(sample_corpus, tmp_path):
    save = tmp_path / "run"
    config = small(sample_corpus, save, "training.exit_signal=SIGUSR1", "training.train_iters=8")
    metrics = save / "metrics.jsonl"

    def signal_after_step_2():
        while not (metrics.exists() and metrics.read_text().count('"kind": "train"') >= 2):
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGUSR1)

    threading.Thread(target=signal_after_step_2, daemon=True).start()
    first = run(config)
    assert first.stopped_by == "SIGUSR1" and 2 <= first.iterations < 8
    assert first.checkpoint.name == f"iter_{first.iterations:07d}"
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL  # handlers restored
    second = run(config)
    assert [h["step"] for h in second.history] == list(range(first.iterations + 1, 9))
    assert [e["step"] for e in read_metrics(save) if e["kind"] == "train"] == list(range(1, 9))


def test_derived_and_unsupported_fields_are_refused():
    base = REPO / "examples/configs/tiny_clm.yaml"
    with pytest.raises(ValueError, match=r"model\.vocab_size is 40 but is derived from the tokenizer"):
        load_config(base, ["model.vocab_size=40"]).resolve()  # (the tokenizer is read when the run resolves)
    with pytest.raises(ValueError, match=r"model\.seq_length is 64 but is derived from data\.seq_length \(128\)"):
        load_config(base, ["model.seq_length=64"])
    assert load_config(base, ["model.seq_length=128"]).resolve().model.vocab_size == 35
    with pytest.raises(ValueError, match=r"parallel\.virtual_pipeline_model_parallel_size is not supported"):
        load_config(
            base, ["parallel.pipeline_model_parallel_size=2", "parallel.virtual_pipeline_model_parallel_size=2"]
        )
    with pytest.raises(ValueError, match=r"parallel\.context_parallel_size is not supported"):
        load_config(base, ["parallel.context_parallel_size=2"])
    with pytest.raises(ValueError, match=r"training\.exit_signal must be a catchable signal name"):
        load_config(base, ["training.exit_signal=SIGKILL"])
