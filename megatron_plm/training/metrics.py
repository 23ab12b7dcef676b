"""What a run tells its user: log lines (with elapsed time and ETA), ``metrics.jsonl`` and the
resolved ``config.yaml`` in the run directory, and optional TensorBoard / Weights & Biases.

Only the main rank writes. ``metrics.jsonl`` holds one JSON object per line, ``{"kind": "train" |
"validation" | "launch", "time": "2026-12-06T08:05:12+00:00", "step": ..., ...}`` (``time``: UTC, when the line was
written; a ``launch`` line, at each start, holds the step it starts after and its :func:`launch_settings`);
when a run resumes at step N the entries after N (written by a launch that died before its next
checkpoint) are dropped, so every step appears once.
"""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import yaml

from megatron_plm.training.config import TrainConfig
from megatron_plm.outputs import replacing, write_text_atomic
from megatron_plm.runtime.distributed import Runtime


def _parse_lines(path: Path) -> tuple[list[tuple[int, bytes, dict]], list[str]]:
    """``(line number, raw line, entry)`` of each good line, and a description of each bad one. A launch
    killed mid-write leaves its last line half-written (no newline): that one is expected and not reported."""
    data = path.read_bytes()
    lines = data.split(b"\n")
    good, bad = [], []
    for number, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            entry = json.loads(raw.decode("utf-8"))
            if not isinstance(entry, dict):
                raise ValueError(f"a JSON {type(entry).__name__}, not an object")
            if not isinstance(entry.get("step", 0), int):
                raise ValueError(f"step {entry.get('step')!r} is not an integer")
        except (ValueError, UnicodeDecodeError) as error:
            if number == len(lines):  # the last line, unterminated: a killed write
                bad.append(f"{path}:{number}: a half-written last line (from a launch that was killed)")
            else:
                bad.append(f"{path}:{number}: not a metrics entry ({getattr(error, 'msg', error)})")
            continue
        good.append((number, raw, entry))
    return good, bad


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """The entries of a ``metrics.jsonl`` (a run directory is accepted too). A damaged line is skipped
    with a warning naming it (a killed launch leaves its last line half-written)."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    good, bad = _parse_lines(path)
    for problem in bad:
        print(f"warning: {problem}; skipped", file=sys.stderr)
    return [entry for _, _, entry in good]


def launch_settings(config: TrainConfig) -> dict:
    """What a ``launch`` entry records: the settings whose change at a resume changes the curves."""
    o, t, p = config.optimizer, config.training, config.parallel
    return {
        "lr": o.lr,
        "min_lr": o.min_lr,
        "warmup_iters": o.warmup_iters,
        "decay_style": o.decay_style,
        "train_iters": t.train_iters,
        "global_batch_size": t.global_batch_size,
        "seq_length": config.data.seq_length,
        "precision": t.precision,
        "layout": f"TP{p.tensor_model_parallel_size} PP{p.pipeline_model_parallel_size}",
    }


def keep_through(path: Path, step: int) -> int:
    """Drop the entries after ``step`` from a metrics file, and any damaged line (a killed launch's
    half-written last one); returns how many lines were dropped."""
    if not path.exists():
        return 0
    data = path.read_bytes()
    good, bad = _parse_lines(path)
    for problem in bad:
        print(f"note: {problem}; dropped", file=sys.stderr)
    kept = [raw for _, raw, entry in good if entry.get("step", 0) <= step]
    text = b"".join(raw + b"\n" for raw in kept)
    if text != data:  # rewritten whole, so the next append starts on a line of its own
        with replacing(path) as staging:
            staging.write_bytes(text)
    return len(good) + len(bad) - len(kept)


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


class EtaClock:
    """Elapsed time of this launch and the ETA to ``train_iters`` from its mean step time."""

    def __init__(self, first_step: int, last_step: int):
        self.started = time.monotonic()
        self.first_step, self.last_step = first_step, last_step

    def describe(self, step: int) -> str:
        elapsed = time.monotonic() - self.started
        done = step - self.first_step + 1
        eta = elapsed / done * (self.last_step - step) if done > 0 else float("nan")
        return f"elapsed {format_duration(elapsed)} | ETA {format_duration(eta)}"


class RunLog:
    """Log lines on the main rank, the run directory's files, and the optional trackers."""

    def __init__(self, config: TrainConfig, runtime: Runtime):
        self.main = runtime.is_main_process
        self.config = config
        self.metrics_path = config.metrics_path() if self.main else None
        self.metrics = None
        self.writer = None
        self.wandb = None
        if not self.main:
            return
        if config.logging.tensorboard_dir:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as error:
                raise ValueError(
                    "logging.tensorboard_dir is set but the tensorboard package is missing: "
                    "pip install 'megatron-plm[tensorboard]'"
                ) from error
            self.writer = SummaryWriter(config.logging.tensorboard_dir)
        if config.logging.wandb_project:
            import wandb  # optional; the config asked for it

            self.wandb = wandb.init(project=config.logging.wandb_project, name=config.name, config=config.to_dict())

    def start_at(self, step: int) -> None:
        """A launch that trains, after ``step`` (0: a fresh run): write its ``config.yaml`` and open the metrics
        file. Only here: a launch that stops before training (finished, or refused) leaves the run directory
        describing the launch that trained it. The
        launch is recorded with the settings a plot marks when a resume changes them."""
        if not self.main:
            return
        run_dir = self.config.run_dir()
        if run_dir is not None:
            write_text_atomic(run_dir / "config.yaml", yaml.safe_dump(self.config.to_dict(), sort_keys=False))
        if self.metrics_path is None:
            return
        self.metrics_path.parent.mkdir(parents=True, exist_ok=True)
        dropped = keep_through(self.metrics_path, step)
        if dropped:
            self.say(f"{self.metrics_path}: dropped {dropped} entries after step {step} (their steps run again)")
        self.metrics = open(self.metrics_path, "a")
        self.record("launch", {"step": step, "settings": launch_settings(self.config)})

    def say(self, text: str) -> None:
        if self.main:
            print(text, flush=True)

    def record(self, kind: str, entry: dict) -> None:
        if self.metrics is not None:
            stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")  # when, beside the step: for resumes
            self.metrics.write(json.dumps({"kind": kind, "time": stamp, **entry}) + "\n")
            self.metrics.flush()

    def train(self, entry: dict, line: str | None = None) -> None:
        """One training step: always to the metrics file; to the log and trackers when ``line`` is given."""
        self.record("train", entry)
        if line is not None:
            self.say(line)
            self.scalars(
                entry["step"],
                {"train/loss": entry["loss"], "train/lr": entry["lr"], "train/tokens_per_s": entry["tokens_per_s"]},
            )

    def validation(self, entry: dict) -> None:
        self.record("validation", entry)
        line = (
            f"validation at step {entry['step']}: loss {entry['loss']:.4f}, perplexity {entry['perplexity']:.2f} "
            f"({entry['tokens']:,} tokens)"
        )
        if "residues" in entry:  # a subword run: per residue as well
            line += (
                f"; per residue: loss {entry['loss_per_residue']:.4f}, perplexity "
                f"{entry['perplexity_per_residue']:.2f} ({entry['residues']:,} residues)"
            )
        self.say(line)
        self.scalars(entry["step"], {"valid/loss": entry["loss"], "valid/perplexity": entry["perplexity"]})

    def scalars(self, step: int, values: dict) -> None:
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(key, value, step)
        if self.wandb is not None:
            self.wandb.log(values, step=step)

    def close(self) -> None:
        if self.metrics is not None:
            self.metrics.close()
            self.metrics = None
        if self.writer is not None:
            self.writer.close()
        if self.wandb is not None:
            self.wandb.finish()
