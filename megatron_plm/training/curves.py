"""``megatron-plm plot RUN_DIR [RUN_DIR ...]``: runs' curves from their ``metrics.jsonl``, against tokens seen.

One panel per quantity: the loss of each objective (CLM and MLM losses are not comparable, so runs of
different objectives get separate panels; perplexity, e^loss, is the right-hand axis), the learning rate
and the training throughput (each step faint, a running median bold). Training is a line, validation
points. A vertical dotted line marks where a run resumed, labelled with any setting the resume changed
(``launch`` entries of ``metrics.jsonl``). Axes of counts carry SI suffixes (50k, 1.2M). Several runs
overlay, one colour each.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from megatron_plm.training.metrics import read_metrics

METRICS = ("loss", "perplexity", "lr", "tokens_per_s")
"""The metrics read (validation entries have loss and perplexity only)."""
SMOOTHING = 9
"""Steps in the running median drawn over the throughput."""


def series(entries: list[dict]) -> dict[str, dict[str, list]]:
    """``{kind: {"step": [...], "tokens_seen": [...], metric: [...]}}`` for train and validation
    entries, in step order; skipped (non-finite) steps are left out."""
    out: dict[str, dict[str, list]] = {}
    for entry in sorted(entries, key=lambda e: (e.get("step", 0), e.get("kind", ""))):
        if entry.get("skipped") or entry.get("kind") == "launch":
            continue
        kind = out.setdefault(entry.get("kind", "train"), {})
        values = {key: entry.get(key) for key in ("step", "tokens_seen", *METRICS)}
        if not isinstance(values["step"], int):
            continue
        for key, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                kind.setdefault(key, []).append(value)
    return out


def resumes(entries: list[dict]) -> list[tuple[int, dict]]:
    """``(step, {setting: (before, after)})`` for each launch after the first, with the settings it changed."""
    launches = [e for e in entries if e.get("kind") == "launch"]
    out = []
    for before, after in zip(launches, launches[1:]):
        old, new = before.get("settings", {}), after.get("settings", {})
        out.append((after["step"], {k: (old.get(k), v) for k, v in new.items() if old.get(k) != v}))
    return out


def _objective(run_dir: Path) -> str:
    """The run's objective from the ``config.yaml`` beside its metrics, or '' when there is none."""
    import yaml

    config = run_dir / "config.yaml"
    if not config.exists():
        return ""
    return str((yaml.safe_load(config.read_text()) or {}).get("objective", "")).upper()


def _running_median(values: list[float], width: int) -> list[float]:
    import statistics

    half = width // 2
    return [statistics.median(values[max(0, i - half) : i + half + 1]) for i in range(len(values))]


def _tokens_at(train: dict, step: int) -> float | None:
    """Tokens seen at the end of ``step`` (the last logged step at or before it)."""
    pairs = [(s, t) for s, t in zip(train.get("step", []), train.get("tokens_seen", [])) if s <= step]
    return pairs[-1][1] if pairs else None


def _format_change(name: str, before, after) -> str:
    show = (lambda v: f"{v:.3g}") if isinstance(after, float) else str
    return f"{name} {show(before)}\u2192{show(after)}" if before is not None else f"{name} {show(after)}"


def load_runs(run_dirs: list[str | os.PathLike]) -> list[dict]:
    """Each run's name, objective, series and resumes."""
    runs = []
    for run_dir in map(Path, run_dirs):
        metrics = run_dir if run_dir.is_file() else run_dir / "metrics.jsonl"
        if not metrics.exists():
            raise FileNotFoundError(f"{metrics} does not exist: give a run directory written by megatron-plm train")
        entries = read_metrics(metrics)
        data = series(entries)
        if not any(len(kind.get("step", ())) for kind in data.values()):
            raise ValueError(
                f"{metrics} holds no training or validation steps: nothing to plot (has the run trained a step?)"
            )
        runs.append(
            {
                "name": metrics.parent.name,
                "objective": _objective(metrics.parent),
                "series": data,
                "resumes": resumes(entries),
            }
        )
    return runs


def draw(runs: list[dict]):
    """The figure for :func:`load_runs`' runs (see the module docstring)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import EngFormatter, FuncFormatter

    objectives = list(dict.fromkeys(run["objective"] for run in runs))
    panels = [("loss", objective) for objective in objectives] + [("lr", ""), ("tokens_per_s", "")]
    columns = 2 if len(panels) <= 4 else 3
    rows = math.ceil(len(panels) / columns)
    fig, grid = plt.subplots(rows, columns, figsize=(6.2 * columns, 3.9 * rows), squeeze=False)
    axes = {}
    for (metric, objective), ax in zip(panels, grid.flat):
        axes[metric, objective] = ax
        ax.xaxis.set_major_formatter(EngFormatter(sep=""))
        ax.set_xlabel("tokens seen")
        ax.grid(alpha=0.3, lw=0.5)
    for ax in list(grid.flat)[len(panels) :]:
        ax.set_visible(False)
    for metric, objective in panels:
        ax = axes[metric, objective]
        if metric == "loss":
            ax.set_title(f"{objective} loss".strip())
            ax.set_ylabel("loss (nats / token)")
            right = ax.secondary_yaxis("right", functions=(_exp, _log))
            right.set_ylabel("perplexity (e^loss)")
        elif metric == "lr":
            ax.set_title("learning rate")
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.1e}".replace("e-0", "e-")))
        else:
            ax.set_title("training throughput")
            ax.set_ylabel("tokens / s")
            ax.yaxis.set_major_formatter(EngFormatter(sep=""))

    colours = plt.cm.tab10.colors
    for index, run in enumerate(runs):
        colour = colours[index % len(colours)]
        train, valid = run["series"].get("train", {}), run["series"].get("validation", {})
        loss_ax = axes["loss", run["objective"]]
        if "loss" in train:
            loss_ax.plot(train["tokens_seen"], train["loss"], lw=1.2, color=colour, label=f"{run['name']} train")
        if "loss" in valid:
            loss_ax.plot(
                valid["tokens_seen"],
                valid["loss"],
                linestyle="none",
                marker="o",
                ms=7,
                mfc=colour,
                mec="black",
                mew=0.8,
                zorder=5,
                label=f"{run['name']} validation",
            )
        if "lr" in train:
            axes["lr", ""].plot(train["tokens_seen"], train["lr"], lw=1.2, color=colour, label=run["name"])
        if "tokens_per_s" in train:
            speed = axes["tokens_per_s", ""]
            speed.plot(train["tokens_seen"], train["tokens_per_s"], lw=0.6, alpha=0.3, color=colour)
            smooth = _running_median(train["tokens_per_s"], SMOOTHING)
            speed.plot(
                train["tokens_seen"], smooth, lw=1.6, color=colour, label=f"{run['name']} (median of {SMOOTHING})"
            )
        for step, changed in run["resumes"]:
            x = _tokens_at(train, step)
            if x is None:
                continue
            label = "resume" + "".join(f"\n{_format_change(k, *v)}" for k, v in changed.items())
            for ax in (loss_ax, axes["lr", ""], axes["tokens_per_s", ""]):
                ax.axvline(x, color=colour, ls=":", lw=1.3, zorder=1)
            loss_ax.annotate(
                label,
                (x, 1),
                xycoords=("data", "axes fraction"),
                xytext=(3, -3),
                textcoords="offset points",
                va="top",
                fontsize=8,
                color=colour,
            )
    for ax in axes.values():
        if ax.lines:
            ax.legend(fontsize=8, loc="best", framealpha=0.8)
    fig.tight_layout()
    return fig


def _exp(x):
    import numpy as np

    return np.exp(np.clip(x, -50, 50))


def _log(x):
    import numpy as np

    return np.log(np.clip(x, 1e-12, None))


@dataclass(kw_only=True)
class PlotConfig:
    run_dirs: list[str] = field(metadata={"cli": {"positional": True, "metavar": "RUN_DIR"}})
    """Run directories (or metrics.jsonl files)."""
    output: str | None = None
    """PNG to write (default: RUN_DIR/curves.png of the first run)."""


def plot_runs(run_dirs: list[str | os.PathLike], output: str | os.PathLike | None = None) -> Path:
    """Draw the runs' curves to ``output`` (default ``curves.png`` in the first run directory)."""
    import matplotlib.pyplot as plt

    if not run_dirs:
        raise ValueError("plot needs at least one run directory")
    runs = load_runs(run_dirs)
    first = Path(run_dirs[0])
    output = Path(output) if output else (first.parent if first.is_file() else first) / "curves.png"
    fig = draw(runs)
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=100)
    plt.close(fig)
    return output
