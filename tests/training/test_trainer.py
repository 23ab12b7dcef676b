"""The training loop in this process, on the shipped sample (TP=1, PP=1, CPU fp32)."""

import math

import pytest

from conftest import REPO
from megatron_plm.training.config import load_config
from megatron_plm.runtime.distributed import initialize
from megatron_plm.training.trainer import TrainingStopped, train


def tiny(objective, corpus, tmp_path, *overrides):
    return load_config(
        REPO / f"examples/configs/tiny_{objective}.yaml",
        [
            f"data.sources=[{{prefix: {corpus}}}]",
            f"checkpoint.save={tmp_path / objective}",
            "checkpoint.init_from=null",
            "logging.log_interval=100",
            *overrides,
        ],
    )


def run(config):
    with initialize(config.parallel, seed=config.training.seed) as runtime:
        return train(config, runtime)


@pytest.mark.parametrize("objective", ["clm", "mlm"])
def test_loss_falls_on_real_sequences(sample_corpus, tmp_path, objective):
    result = run(tiny(objective, sample_corpus, tmp_path, "training.train_iters=30", "checkpoint.save=null"))
    losses = [h["loss"] for h in result.history]
    # Starts at a uniform guess over the 64-entry padded vocabulary; amino-acid statistics alone
    # bring a protein LM below ~3.0 nats.
    assert losses[0] == pytest.approx(math.log(64), abs=0.15)
    assert sum(losses[-5:]) / 5 < losses[0] - 1.0
    assert result.validation[-1]["loss"] < 3.1
    assert result.validation[-1]["perplexity"] == pytest.approx(math.exp(result.validation[-1]["loss"]))


@pytest.mark.parametrize("objective", ["clm", "mlm"])
def test_resume_is_exact(sample_corpus, tmp_path, objective):
    common = ["training.eval_interval=0", "optimizer.warmup_iters=3"]
    straight = run(
        tiny(objective, sample_corpus, tmp_path / "a", "training.train_iters=8", "checkpoint.save=null", *common)
    )
    # The first leg has the 8-step schedule and stops after 4 steps, as a time-limited job does.
    first = run(
        tiny(objective, sample_corpus, tmp_path / "b", "training.train_iters=8", "training.exit_interval=4", *common)
    )
    assert first.checkpoint.name == "iter_0000004" and first.iterations == 4
    resumed = run(tiny(objective, sample_corpus, tmp_path / "b", "training.train_iters=8", *common))
    assert [h["step"] for h in resumed.history] == [5, 6, 7, 8]
    for want, got in zip(straight.history[4:], resumed.history):
        assert got["loss"] == want["loss"], f"step {want['step']}"  # bitwise
        assert got["grad_norm"] == want["grad_norm"]
    assert resumed.validation[-1]["loss"] == straight.validation[-1]["loss"]


def test_non_finite_losses_stop_without_a_checkpoint(sample_corpus, tmp_path):
    config = tiny(
        "clm",
        sample_corpus,
        tmp_path,
        "training.train_iters=20",
        "optimizer.lr=1.0e+6",
        "optimizer.min_lr=1.0e+6",
        "optimizer.warmup_iters=0",
        "optimizer.clip_grad=0.0",
        "training.max_skipped_steps=2",
        "checkpoint.save_interval=1",
    )
    with pytest.raises(TrainingStopped, match="consecutive steps with a non-finite loss"):
        run(config)
    saved = sorted(p.name for p in (tmp_path / "clm").glob("iter_*"))
    # Checkpoints exist only for steps whose loss was finite.
    assert saved and all(".tmp-" not in name for name in saved)


def test_config_errors_name_the_field(tmp_path):
    base = REPO / "examples/configs/tiny_clm.yaml"
    with pytest.raises(
        ValueError, match=r"unknown config field 'model\.num_layer' \(did you mean 'model\.num_layers'\?\)"
    ):
        load_config(base, ["model.num_layer=3"])
    # Another framework's name for one of ours.
    with pytest.raises(
        ValueError, match=r"unknown config field 'optimizer\.learning_rate' \(did you mean 'optimizer\.lr'\?\)"
    ):
        load_config(base, ["optimizer.learning_rate=1e-3"])
    with pytest.raises(ValueError, match=r"'training\.max_steps' \(did you mean 'training\.train_iters'\?\)"):
        load_config(base, ["training.max_steps=10"])
    # A key that moved into a nested section is named where it lives now.
    with pytest.raises(
        ValueError, match=r"unknown config field 'data\.mask_ratio' \(it moved: write 'data\.masking\.mask_ratio'\)"
    ):
        load_config(base, ["data.mask_ratio=0.2"])
    with pytest.raises(ValueError, match=r"training\.train_iters must be an integer"):
        load_config(base, ["training.train_iters=ten"])
    with pytest.raises(ValueError, match=r"objective must be one of \['clm', 'mlm'\]"):
        load_config(base, ["objective=mlmm"])
    with pytest.raises(ValueError, match=r"global_batch_size \(10\) must be a multiple"):
        load_config(base, ["training.global_batch_size=10", "training.micro_batch_size=4"])
    config = load_config(base, ["model.num_layers=3", "data.seq_length=64"])
    assert config.model.num_layers == 3 and config.objective == "clm"
    assert config.model.seq_length is None and not hasattr(config.data, "objective")  # derived, not stored
    assert config.resolve().model.seq_length == 64
