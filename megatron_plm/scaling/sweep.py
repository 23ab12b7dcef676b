"""IsoFLOP sweeps: a grid of run configs (budget x size, tokens = C / 6N), run locally or as a SLURM
array, and the runs table collected from their metrics."""

from __future__ import annotations

import csv
import json
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Literal
from pathlib import Path

import yaml

from megatron_plm.scaling.allocation import Shape


@dataclass(kw_only=True)
class SweepConfig:
    """``megatron-plm scaling sweep``: an IsoFLOP grid of configs (tokens = C / 6N)."""

    base: str
    """Base run config (data, optimizer, batch)."""
    budgets: list[float]
    """Compute budgets C in FLOPs."""
    sizes: list[str]
    """Model shapes LAYERSxHIDDEN[xHEADS] ..."""
    out: str
    """Sweep directory (configs, runs, runs.csv)."""
    set: list[str] | None = field(default=None, metadata={"cli": {"nargs": "*"}})
    """dotted.key=value overrides of the base config."""
    run: bool = False
    """Train every run here, one after another."""
    slurm: bool = False
    """Write a SLURM array script."""
    objective: Literal["clm", "mlm"] = "clm"
    """The runs' objective."""


@dataclass(kw_only=True)
class CollectConfig:
    """``megatron-plm scaling collect``: the sweep's final validation losses -> runs.csv."""

    out: str
    """The sweep directory."""
    objective: Literal["clm", "mlm"] = "clm"
    """The runs' objective."""


@dataclass
class SweepRun:
    name: str
    flops: float
    shape: Shape
    steps: int
    tokens: int
    """Tokens the run processes (steps x batch x context)."""
    epochs: float
    """Passes over the training split these tokens make (the laws assume at most about one)."""
    config: Path


def parse_shape(text: str) -> Shape:
    """``LAYERSxHIDDEN`` or ``LAYERSxHIDDENxHEADS`` (heads default to hidden / 32)."""
    parts = [int(p) for p in text.lower().split("x")]
    if len(parts) == 2:
        parts.append(max(1, parts[1] // 32))
    if len(parts) != 3 or min(parts) < 1 or parts[1] % parts[2]:
        raise ValueError(f"size {text!r}: expected LAYERSxHIDDEN[xHEADS] with heads dividing hidden")
    return Shape(*parts)


def training_tokens(base: dict) -> float:
    """Tokens in the training split of the base config's corpora (residues + 2 framing tokens each)."""
    from megatron_plm.data.corpus import Corpus

    weights = base.get("data", {}).get("split_weights", [0.98, 0.01, 0.01])
    share = weights[0] / sum(weights)
    total = 0.0
    for source in base["data"]["sources"]:
        corpus = Corpus.open(source["prefix"])
        total += (corpus.meta["num_tokens"] + 2 * corpus.meta["num_documents"]) * share
    return total


def make_sweep(
    base_config: str | Path, budgets: list[float], shapes: list[Shape], out: str | Path, overrides: dict | None = None
) -> list[SweepRun]:
    """Write one config per (budget, shape) under ``out/configs`` and describe the grid."""
    from megatron_plm.config import parse_yaml

    base = parse_yaml(Path(base_config).read_text())
    for key, value in (overrides or {}).items():
        node = base
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    out = Path(out)
    (out / "configs").mkdir(parents=True, exist_ok=True)
    seq = base.get("data", {}).get("seq_length", 1024)
    batch = base.get("training", {}).get("global_batch_size", 8)
    unique = training_tokens(base)
    runs = []
    for flops in budgets:
        for shape in shapes:
            steps = max(1, round(flops / (6 * shape.non_embedding_parameters) / (batch * seq)))
            name = f"c{flops:.0e}_l{shape.num_layers}_h{shape.hidden_size}".replace("+", "")
            config = dict(base, name=name)
            config["model"] = {
                "num_layers": shape.num_layers,
                "hidden_size": shape.hidden_size,
                "num_attention_heads": shape.num_attention_heads,
            }
            config["training"] = dict(base.get("training", {}), train_iters=steps, eval_interval=0)
            config["checkpoint"] = {"save": None, "init_from": None}
            config["logging"] = dict(
                base.get("logging", {}),
                metrics_file=str(out / "metrics" / f"{name}.jsonl"),
                log_interval=max(1, steps // 10),
            )
            path = out / "configs" / f"{name}.yaml"
            path.write_text(yaml.safe_dump(config, sort_keys=False))
            tokens = steps * batch * seq
            runs.append(SweepRun(name, flops, shape, steps, tokens, tokens / unique, path))
    (out / "sweep.json").write_text(
        json.dumps([{**r.__dict__, "shape": r.shape.__dict__, "config": str(r.config)} for r in runs], indent=2)
    )
    return runs


def run_locally(runs: list[SweepRun], *, log=print) -> None:
    from megatron_plm.config import parse_yaml

    for i, run in enumerate(runs, start=1):
        if Path(parse_yaml(run.config.read_text())["logging"]["metrics_file"]).exists():
            log(f"[{i}/{len(runs)}] {run.name}: already has metrics, skipped")
            continue
        log(f"[{i}/{len(runs)}] {run.name}: {run.steps} steps")
        subprocess.run(
            [sys.executable, "-m", "megatron_plm", "train", "--config", str(run.config)],
            check=True,
            stdout=subprocess.DEVNULL,
        )


def slurm_array(runs: list[SweepRun], out: str | Path) -> Path:
    script = Path(out) / "sweep.sbatch"
    configs = " ".join(shlex.quote(str(r.config)) for r in runs)  # a path is data, never shell syntax
    script.write_text(f"""#!/bin/bash
#SBATCH --job-name=megatron-plm-sweep
#SBATCH --array=0-{len(runs) - 1}
#SBATCH --ntasks=1
#SBATCH --gpus=1
#SBATCH --output=logs/%x-%A_%a.out
CONFIGS=({configs})
python -m megatron_plm train --config "${{CONFIGS[$SLURM_ARRAY_TASK_ID]}}"
""")
    return script


def collect(out: str | Path, objective: str) -> Path:
    """``out/runs.csv`` (N, D, loss, objective, C, epochs, name) from the runs' final validation losses."""
    from megatron_plm.config import parse_yaml

    out = Path(out)
    described = json.loads((out / "sweep.json").read_text())
    rows = []
    for run in described:
        metrics = Path(parse_yaml(Path(run["config"]).read_text())["logging"]["metrics_file"])
        if not metrics.exists():
            continue
        validation = [json.loads(line) for line in metrics.read_text().splitlines() if '"validation"' in line]
        if not validation:
            continue
        shape = Shape(**run["shape"])
        rows.append(
            {
                "name": run["name"],
                "N": shape.non_embedding_parameters,
                "D": run["tokens"],
                "loss": validation[-1]["loss"],
                "objective": objective,
                "C": 6 * shape.non_embedding_parameters * run["tokens"],
                "epochs": round(run["epochs"], 4),
            }
        )
    if not rows:
        raise ValueError(f"no finished runs with a validation loss under {out}")
    path = out / "runs.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def format_sweep(runs: list[SweepRun]) -> str:
    lines = [f"{'run':<24} {'C':>9} {'N':>11} {'tokens':>12} {'steps':>7} {'epochs':>7}"]
    for r in runs:
        flag = "  > 1 epoch: repeats data" if r.epochs > 1 else ""
        lines.append(
            f"{r.name:<24} {r.flops:>9.2g} {r.shape.non_embedding_parameters:>11,} {r.tokens:>12,} "
            f"{r.steps:>7,} {r.epochs:>7.3f}{flag}"
        )
    return "\n".join(lines)
