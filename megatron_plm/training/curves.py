"""``megatron-plm plot RUN_DIR [RUN_DIR ...]``: a run's curves from its ``metrics.jsonl``.

Top row against steps, bottom row against tokens seen: loss and perplexity (train lines,
validation markers), learning rate and training throughput. Several runs overlay, one colour each.
"""

from __future__ import annotations

import os
from pathlib import Path

from megatron_plm.training.metrics import read_metrics

PANELS = ("loss", "perplexity", "lr", "tokens_per_s")
"""The metrics drawn, one column each (validation entries have loss and perplexity only)."""
_TITLES = {"loss": "loss (nats / token)", "perplexity": "perplexity", "lr": "learning rate", "tokens_per_s": "tokens/s"}


def series(entries: list[dict]) -> dict[str, dict[str, list]]:
    """``{kind: {"step": [...], "tokens_seen": [...], metric: [...]}}`` for train and validation
    entries, in step order; skipped (non-finite) steps are left out."""
    out: dict[str, dict[str, list]] = {}
    for entry in sorted(entries, key=lambda e: (e.get("step", 0), e.get("kind", ""))):
        if entry.get("skipped"):
            continue
        kind = out.setdefault(entry.get("kind", "train"), {})
        values = {key: entry.get(key) for key in ("step", "tokens_seen", *PANELS)}
        if not isinstance(values["step"], int):
            continue
        for key, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                kind.setdefault(key, []).append(value)
    return out


def plot_runs(run_dirs: list[str | os.PathLike], output: str | os.PathLike | None = None) -> Path:
    """Draw the runs' curves to ``output`` (default ``curves.png`` in the first run directory)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not run_dirs:
        raise ValueError("plot needs at least one run directory")
    runs = []
    for run_dir in map(Path, run_dirs):
        metrics = run_dir if run_dir.is_file() else run_dir / "metrics.jsonl"
        if not metrics.exists():
            raise FileNotFoundError(f"{metrics} does not exist: give a run directory written by megatron-plm train")
        name = run_dir.parent.name if run_dir.is_file() else run_dir.name
        data = series(read_metrics(metrics))
        if not any(len(kind.get("step", ())) for kind in data.values()):
            raise ValueError(
                f"{metrics} holds no training or validation steps: nothing to plot (has the run trained a step?)"
            )
        runs.append((name, data))
    first = Path(run_dirs[0])
    output = Path(output) if output else (first.parent if first.is_file() else first) / "curves.png"

    fig, axes = plt.subplots(2, len(PANELS), figsize=(4 * len(PANELS), 6.5), squeeze=False)
    colours = plt.cm.tab10.colors
    for index, (name, data) in enumerate(runs):
        colour = colours[index % len(colours)]
        for row, x in enumerate(("step", "tokens_seen")):
            for column, metric in enumerate(PANELS):
                ax = axes[row][column]
                train = data.get("train", {})
                if metric in train and x in train:
                    ax.plot(train[x], train[metric], lw=1, color=colour, label=f"{name} train")
                valid = data.get("validation", {})
                if metric in valid and x in valid:
                    ax.plot(valid[x], valid[metric], "o--", ms=4, lw=0.8, color=colour, label=f"{name} validation")
                ax.set(xlabel="step" if x == "step" else "tokens seen", title=_TITLES[metric])
                if metric == "perplexity":
                    ax.set_yscale("log")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=80)
    plt.close(fig)
    return output
