"""From a compute budget to a model: N_opt and D_opt, the nearest architecture of our family, a config."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import yaml

from megatron_plm.models.config import layer_parameters
from megatron_plm.scaling.laws import AllocationLaw, ParametricLaw

TOKENS_PER_STEP = 1024 * 1024  # the study's ~1M-token batches: 1,024 sequences of 1,024


@dataclass(frozen=True)
class Shape:
    num_layers: int
    hidden_size: int
    num_attention_heads: int

    @property
    def non_embedding_parameters(self) -> int:
        return self.num_layers * layer_parameters(self.hidden_size, 4 * self.hidden_size)


def nearest_shape(target: float, *, aspect: float = 100.0, tolerance: float = 0.02) -> Shape:
    """Our family: hidden a multiple of 64 (heads of 64 below 2048, of 128 from there) and the depth that
    best hits ``target`` non-embedding parameters. Among shapes within ``tolerance`` of the target the one
    with hidden/layers nearest ``aspect`` wins (ESM-2 15B: 107); otherwise the closest in size."""
    shapes = []
    for hidden in range(64, 16385, 64):
        if hidden >= 2048 and hidden % 128:
            continue
        per_layer = layer_parameters(hidden, 4 * hidden)
        for layers in {max(1, math.floor(target / per_layer)), max(1, math.ceil(target / per_layer))}:
            shapes.append(Shape(layers, hidden, hidden // (64 if hidden < 2048 else 128)))

    def size_error(shape: Shape) -> float:
        return abs(math.log(shape.non_embedding_parameters / target))

    close = [s for s in shapes if size_error(s) <= tolerance]
    if close:
        return min(close, key=lambda s: abs(math.log(s.hidden_size / s.num_layers / aspect)))
    return min(shapes, key=size_error)


@dataclass
class BudgetPlan:
    flops: float
    objective: str
    n_opt: float
    d_opt: float
    shape: Shape

    @property
    def steps(self) -> int:
        return max(1, round(self.d_opt / TOKENS_PER_STEP))


def plan_budget(flops: float, objective: str, law) -> BudgetPlan:
    if not isinstance(law, (AllocationLaw, ParametricLaw)):
        raise ValueError(f"unsupported law {law!r}")
    n_opt, d_opt = law.optimal(flops)
    return BudgetPlan(flops, objective, n_opt, d_opt, nearest_shape(n_opt))


def write_config(plan: BudgetPlan, path: str | Path, template: str | Path) -> Path:
    """A run config from ``template`` with the planned shape and token budget (1M-token steps)."""
    data = yaml.safe_load(Path(template).read_text())
    data["name"] = f"{plan.objective}-{plan.shape.non_embedding_parameters / 1e9:.2f}b-{plan.flops:.2g}flops"
    data["objective"] = plan.objective
    data["model"] = {"num_layers": plan.shape.num_layers, "hidden_size": plan.shape.hidden_size,
                     "num_attention_heads": plan.shape.num_attention_heads}  # fmt: skip
    data.setdefault("data", {})["seq_length"] = 1024
    data.setdefault("training", {}).update({"train_iters": plan.steps, "global_batch_size": 1024})
    Path(path).write_text(f"# planned for C = {plan.flops:.3g} FLOPs: N_opt = {plan.n_opt:.3g}, D_opt = {plan.d_opt:.3g}\n"
                          + yaml.safe_dump(data, sort_keys=False))  # fmt: skip
    return Path(path)


def format_budget_plan(plan: BudgetPlan, law_name: str, interval: tuple | None = None) -> str:
    s = plan.shape
    lines = [
        f"budget {plan.flops:.3g} FLOPs, {plan.objective.upper()}, law: {law_name}",
        f"N_opt  {plan.n_opt:,.4g} non-embedding parameters" + (f"  [{interval[0]:.3g}, {interval[1]:.3g}]" if interval else ""),
        f"D_opt  {plan.d_opt:,.4g} tokens ({plan.steps:,} steps of {TOKENS_PER_STEP:,} tokens)",
        f"model  {s.num_layers} layers x {s.hidden_size} ({s.num_attention_heads} heads): "
        f"{s.non_embedding_parameters:,} non-embedding parameters ({s.non_embedding_parameters / plan.n_opt - 1:+.1%})",
    ]  # fmt: skip
    return "\n".join(lines)
