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


BUDGET_RANGE = (1e9, 1e28)
"""Compute budgets ``plan --budget-flops`` accepts: from a toy run to well past the largest trained models
(~5e25 FLOPs); beyond it the power laws are extrapolated by many orders of magnitude past any fit and give
shapes such as 1.2e155 layers."""


def plan_budget(flops: float, objective: str, law) -> BudgetPlan:
    low, high = BUDGET_RANGE
    if not (isinstance(flops, (int, float)) and math.isfinite(flops) and low <= flops <= high):
        raise ValueError(f"--budget-flops must be between {low:.0e} and {high:.0e} FLOPs, got {flops!r}")
    if not isinstance(law, (AllocationLaw, ParametricLaw)):
        raise ValueError(f"unsupported law {law!r}")
    n_opt, d_opt = law.optimal(flops)
    return BudgetPlan(flops, objective, n_opt, d_opt, nearest_shape(n_opt))


RECIPES = Path(__file__).resolve().parents[2] / "examples" / "configs" / "recipes"


def _recipes(objective: str) -> list[tuple[float, Path, dict]]:
    """(non-embedding parameters, path, config) of the shipped recipes for ``objective``, smallest first."""
    from megatron_plm.config import parse_yaml

    found = []
    for path in sorted(RECIPES.glob("*.yaml")):
        data = parse_yaml(path.read_text())
        if data.get("objective") == objective:
            m = data["model"]
            found.append(
                (
                    Shape(m["num_layers"], m["hidden_size"], m["num_attention_heads"]).non_embedding_parameters,
                    path,
                    data,
                )
            )
    return sorted(found, key=lambda r: r[0])


def recipe_hyperparameters(objective: str, parameters: float) -> dict:
    """Learning rate, warm-up, batch, parallel layout and precision for a model of ``parameters``, from the
    recipes: the peak learning rate interpolated in log-log between the recipes that bracket the size
    (clamped at the ends), the rest from the recipe nearest in size."""
    recipes = _recipes(objective)
    if not recipes:
        raise ValueError(f"no {objective} recipes in {RECIPES}")
    sizes = [math.log(n) for n, _, _ in recipes]
    rates = [math.log(float(d["optimizer"]["lr"])) for _, _, d in recipes]
    x = min(max(math.log(parameters), sizes[0]), sizes[-1])
    upper = next((i for i, size in enumerate(sizes) if size >= x), len(sizes) - 1)
    lower = max(upper - 1, 0)
    span = sizes[upper] - sizes[lower]
    lr = math.exp(rates[lower] + (rates[upper] - rates[lower]) * ((x - sizes[lower]) / span if span else 0.0))
    nearest = min(recipes, key=lambda r: abs(math.log(r[0] / parameters)))
    return {"lr": float(f"{lr:.3g}"), "recipe": nearest[1], "config": nearest[2]}


def corpus_tokens(sources: list[dict]) -> tuple[int | None, list[str]]:
    """Tokens one epoch of ``sources`` yields (residues plus two framing tokens per protein), from each
    corpus's ``PREFIX.meta.json``; None and the missing prefixes when some cannot be read."""
    import json

    total, missing = 0, []
    for source in sources:
        meta = Path(f"{source['prefix']}.meta.json")
        if not meta.exists():
            missing.append(str(source["prefix"]))
            continue
        described = json.loads(meta.read_text())
        total += int(described["num_tokens"]) + 2 * int(described["num_documents"])
    return (None if missing else total), missing


def write_config(
    plan: BudgetPlan,
    path: str | Path,
    template: str | Path | None = None,
    *,
    gpus: int = 8,
    accelerator: str = "h100-80gb",
    mfu: float = 0.4,
):
    """Write a run config for the planned model and token budget; return its path, warnings to show and the
    :class:`~megatron_plm.training.planner.LayoutFit` of its layout.

    Hyperparameters come from the recipes (see :func:`recipe_hyperparameters`): peak learning rate, warm-up
    (at most a tenth of the run), 1M-token steps, save/eval intervals (at most a tenth of the run), precision
    and layout of the nearest recipe. The layout is then fitted by the planner to ``gpus`` x ``accelerator``
    (:func:`~megatron_plm.training.planner.fit_layout`: TP, PP, sequence parallelism, recompute, micro batch),
    so that ``plan`` of the written config says it fits; a ``ValueError`` says why when nothing does. The data
    section comes from ``template`` when given (else the recipe's); a warning says when the token budget is
    more than one epoch of it (the laws assume about one), or that there is no corpus to check."""
    import copy

    from megatron_plm.config import parse_yaml
    from megatron_plm.training.config import config_from_dict
    from megatron_plm.outputs import write_text_atomic
    from megatron_plm.training.planner import fit_layout, format_changes

    picked = recipe_hyperparameters(plan.objective, plan.shape.non_embedding_parameters)
    recipe = picked["config"]
    base = parse_yaml(Path(template).read_text()) if template else recipe
    name = f"{plan.objective}-{plan.shape.non_embedding_parameters / 1e9:.2f}b-{plan.flops:.2g}flops"
    steps, tenth = plan.steps, max(1, plan.steps // 10)
    data = dict(base.get("data", {}))
    data["seq_length"] = 1024
    training = {
        **recipe["training"],
        "train_iters": steps,
        "global_batch_size": TOKENS_PER_STEP // 1024,
        "eval_interval": min(int(recipe["training"].get("eval_interval", tenth)), tenth),
    }
    optimizer = {
        **recipe.get("optimizer", {}),
        "lr": picked["lr"],
        "min_lr": float(f"{picked['lr'] / 10:.3g}"),
        "warmup_iters": min(int(recipe.get("optimizer", {}).get("warmup_iters", 0)), tenth),
    }
    config = {
        "name": name,
        "objective": plan.objective,
        "model": {
            **{
                k: v
                for k, v in recipe["model"].items()
                if k not in ("num_layers", "hidden_size", "num_attention_heads", "ffn_hidden_size")
            },
            "num_layers": plan.shape.num_layers,
            "hidden_size": plan.shape.hidden_size,
            "num_attention_heads": plan.shape.num_attention_heads,
        },
        "data": data,
        "training": training,
        "optimizer": optimizer,
        "parallel": dict(recipe.get("parallel", {})),
        "checkpoint": {
            "save": f"checkpoints/{name}",
            "save_interval": min(int(recipe["checkpoint"].get("save_interval", tenth)), tenth),
        },
        "logging": {"log_interval": 10, "metrics_file": f"checkpoints/{name}/metrics.jsonl"},
    }
    tp = int(config["parallel"].get("tensor_model_parallel_size", 1))
    while plan.shape.num_attention_heads % tp:  # the recipe's TP must divide the planned model's heads
        tp //= 2
    if "tensor_model_parallel_size" in config["parallel"]:
        config["parallel"]["tensor_model_parallel_size"] = tp
        config["parallel"]["sequence_parallel"] = bool(config["parallel"].get("sequence_parallel")) and tp > 1
    fit = fit_layout(config_from_dict(copy.deepcopy(config)), gpus=gpus, accelerator=accelerator, mfu=mfu)
    for dotted, (_, value) in fit.changes.items():
        section, name = dotted.split(".")
        config.setdefault(section, {})[name] = value
    warnings = []
    tokens, missing = corpus_tokens(data.get("sources", []))
    if missing:
        warnings.append(
            f"cannot check how many epochs the budget is: no corpus at {', '.join(missing)} "
            "(set data.sources to your preprocessed corpora)"
        )
    elif tokens and plan.d_opt > tokens:
        warnings.append(
            f"D_opt = {plan.d_opt:.3g} tokens is {plan.d_opt / tokens:,.1f} epochs of the configured data "
            f"({tokens:,} tokens); the scaling laws assume about one: add data or plan a smaller budget"
        )
    header = (
        f"# planned for C = {plan.flops:.3g} FLOPs: N_opt = {plan.n_opt:.3g}, D_opt = {plan.d_opt:.3g}\n"
        f"# hyperparameters from {picked['recipe'].name} (lr interpolated between recipes by size)\n"
        f"# layout fitted by the planner to {gpus} x {fit.plan.accelerator.name}"
        + (f": {format_changes(fit)}\n" if fit.changes else " (the recipe's fits)\n")
    )
    out = write_text_atomic(
        path, header + "".join(f"# warning: {w}\n" for w in warnings) + yaml.safe_dump(config, sort_keys=False)
    )
    return out, warnings, fit


def format_budget_plan(plan: BudgetPlan, law_name: str, interval: tuple | None = None) -> str:
    s = plan.shape
    lines = [
        f"budget {plan.flops:.3g} FLOPs, {plan.objective.upper()}, law: {law_name}",
        f"N_opt  {plan.n_opt:,.4g} non-embedding parameters"
        + (f"  [{interval[0]:.3g}, {interval[1]:.3g}]" if interval else ""),
        f"D_opt  {plan.d_opt:,.4g} tokens ({plan.steps:,} steps of {TOKENS_PER_STEP:,} tokens)",
        f"model  {s.num_layers} layers x {s.hidden_size} ({s.num_attention_heads} heads): "
        f"{s.non_embedding_parameters:,} non-embedding parameters ({s.non_embedding_parameters / plan.n_opt - 1:+.1%})",
    ]
    return "\n".join(lines)
