"""``megatron-plm plan CONFIG --gpus N --gpu h100-80gb``: will it fit, how fast, how long.

Parameters are counted from the architecture (tests check the count against the model built on the
meta device). Memory per GPU follows the usual accounting for mixed-precision Adam with megatron-core
(weights, fp32 gradient buffer, fp32 master weights + two moments, sharded over data parallel by the
distributed optimizer) and the activation estimates of Korthikanti et al. 2022 ("Reducing Activation
Recomputation in Large Transformer Models") for megatron's local attention, which materialises the
attention scores. Time assumes a model-FLOPs utilisation (MFU) you state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal
from pathlib import Path

from megatron_plm.config import ConfigOverrides
from megatron_plm.training.config import TrainConfig

GiB = 2**30


@dataclass(frozen=True)
class Accelerator:
    name: str
    memory_gib: float
    """Device memory a program can allocate, in GiB."""
    bf16_tflops: float
    """Dense bf16 peak (the datasheets give twice this, 'with sparsity'): the denominator of MFU."""
    memory_tbs: float = 0.0
    """Peak device-memory bandwidth, TB/s."""
    source: str = ""
    """Where the figures come from."""


ACCELERATORS = {
    "h100-80gb": Accelerator(
        "H100 80GB SXM",
        80,
        989,
        3.35,
        "NVIDIA H100 Tensor Core GPU datasheet (SXM5: BF16 1,979 TFLOPS with sparsity, 3.35 TB/s)",
    ),
    # Memory: what nvidia-smi reports on the lent H200 (143,771 MiB; the device tool's KINDS.md, 2026-10-27).
    "h200-141gb": Accelerator(
        "H200 141GB SXM",
        140.4,
        989,
        4.8,
        "NVIDIA H200 Tensor Core GPU datasheet (SXM: BF16 1,979 TFLOPS with sparsity, 141 GB HBM3e, 4.8 TB/s)",
    ),
    "a100-80gb": Accelerator(
        "A100 80GB",
        80,
        312,
        2.039,
        "NVIDIA A100 Tensor Core GPU datasheet (SXM 80GB: BF16 312 TFLOPS dense, 2,039 GB/s)",
    ),
    "cpu": Accelerator("CPU (fp32, for checking the estimate)", 24, 1, source="a nominal figure, not a peak"),
}


@dataclass(kw_only=True)
class PlanConfig(ConfigOverrides):
    """``megatron-plm plan``: size a run config, or plan a model for a compute budget."""

    config: str | None = field(default=None, metadata={"cli": {"positional": True}})
    """Run config to size (or give --budget-flops)."""
    budget_flops: float | None = None
    """Plan a model for this compute budget instead."""
    objective: Literal["clm", "mlm"] = "clm"
    """The objective of --budget-flops."""
    law: str = "paper"
    """'paper' (the study's fits) or a JSON written by 'scaling fit --output'."""
    write_config: str | None = None
    """Write a run config (the planned model's, or CONFIG's) with a layout that fits --gpus x --gpu."""
    template: str | None = None
    """Take --write-config's data section from this config (default: the nearest recipe's)."""
    gpus: int = 8
    """GPUs in the job."""
    gpu: str = "h100-80gb"
    """h100-80gb, h200-141gb, a100-80gb or cpu."""
    mfu: float = 0.4
    """Assumed model-FLOPs utilisation."""


USABLE_MEMORY = 0.9
"""Share of device memory the plan may fill (allocator fragmentation, workspaces, NCCL buffers)."""


def flops_per_token(config: TrainConfig) -> float:
    """Training FLOPs per token: 6 x non-embedding parameters (matmuls) plus attention scores (12 L h s)."""
    m = config.model
    return (
        6 * m.num_layers * (4 * m.hidden_size**2 + 2 * m.hidden_size * m.ffn_size)
        + 12 * m.num_layers * m.hidden_size * config.data.seq_length
    )


def accelerator_of(device_name: str) -> Accelerator | None:
    """Our table's entry for a GPU named as ``torch.cuda.get_device_name`` names it, or None when unknown."""
    for key, name in (("H200", "h200-141gb"), ("H100", "h100-80gb"), ("A100", "a100-80gb")):
        if key in device_name:
            return ACCELERATORS[name]
    return None


def peak_flops(device_name: str) -> float | None:
    """Dense bf16 peak of a GPU from its name (for MFU), or None when unknown."""
    accelerator = accelerator_of(device_name)
    return accelerator.bf16_tflops * 1e12 if accelerator else None


@dataclass(frozen=True)
class ParameterCount:
    per_layer: int
    layers: int
    embedding: int
    head: int
    """Output projection (CLM) or ESM LM head (MLM), beyond the embedding."""
    final_norm: int

    @property
    def total(self) -> int:
        return self.per_layer * self.layers + self.embedding + self.head + self.final_norm

    @property
    def non_embedding(self) -> int:
        return self.total - self.embedding


def count_parameters(config: TrainConfig) -> ParameterCount:
    m = config.resolve().model
    h, vocab = m.hidden_size, m.padded_vocab_size()
    per_layer = m.layer_parameters()
    head = vocab * h if config.objective == "clm" else h * h + h + 2 * h + vocab  # MLM: dense, LN, bias (tied)
    return ParameterCount(per_layer=per_layer, layers=m.num_layers, embedding=vocab * h, head=head, final_norm=2 * h)


@dataclass
class MemoryPlan:
    weights: float
    gradients: float
    optimizer: float
    optimizer_unsharded: float
    activations: dict[str, float]
    """Per recompute setting: none, selective, full (bytes)."""
    logits: float
    optimizer_transient: float = 0.0
    """torch's foreach Adam (megatron's fallback without TE/apex) holds about one parameter-sized set
    of temporaries during its step (measured: 0.8x on 50M fp32 parameters); fused Adam does not."""

    def total(self, *, recompute: str, distributed_optimizer: bool) -> float:
        optimizer = self.optimizer if distributed_optimizer else self.optimizer_unsharded
        return (
            self.weights
            + self.gradients
            + optimizer
            + self.activations[recompute]
            + self.logits
            + self.optimizer_transient
        )


@dataclass
class Plan:
    config: TrainConfig
    accelerator: Accelerator
    gpus: int
    data_parallel: int
    parameters: ParameterCount
    parameters_per_gpu: int
    memory: MemoryPlan
    flops_per_token: float
    tokens_per_step: int
    step_seconds: float
    tokens_per_day: float
    budget_tokens: int
    days: float
    mfu: float


def _activations_per_layer(
    s: int, b: int, h: int, heads: int, t: int, sequence_parallel: bool, recompute: str, bytes_per_value: int
) -> float:
    scale = bytes_per_value / 2  # the published estimates are for 16-bit activations
    scores = 5 * heads * s / (h * t)
    if recompute == "full":
        return 2 * s * b * h / (t if sequence_parallel else 1) * scale
    linear = 34 / t if (sequence_parallel or t == 1) else 10 + 24 / t
    if recompute == "selective":
        scores = 0.0  # the attention core is recomputed
    return s * b * h * (linear + scores) * scale


def make_plan(config: TrainConfig, *, gpus: int, accelerator: str = "h100-80gb", mfu: float = 0.4) -> Plan:
    if accelerator not in ACCELERATORS:
        raise ValueError(f"--gpu must be one of {sorted(ACCELERATORS)}, got {accelerator!r}")
    device = ACCELERATORS[accelerator]
    config = config.resolve()  # the vocabulary is the tokenizer's
    p, t, m = config.parallel, config.training, config.model
    tp, pp = p.tensor_model_parallel_size, p.pipeline_model_parallel_size
    if gpus % (tp * pp):
        raise ValueError(f"--gpus {gpus} is not divisible by TP x PP = {tp * pp}")
    dp = gpus // (tp * pp)
    if t.global_batch_size % (t.micro_batch_size * dp):
        raise ValueError(
            f"training.global_batch_size {t.global_batch_size} is not a multiple of micro batch "
            f"{t.micro_batch_size} x data parallel {dp} at {gpus} GPUs"
        )
    count = count_parameters(config)
    layers_per_stage = m.num_layers // pp
    stages = [count.per_layer * layers_per_stage] * pp
    stages[0] += count.embedding
    stages[-1] += count.final_norm + count.head
    if pp > 1 and config.objective == "mlm":
        stages[-1] += count.embedding  # the tied decoder's copy of the embedding on the last stage
    per_gpu = math.ceil(max(stages) / tp)
    fp32 = t.precision == "fp32"
    weight_bytes = 4 if fp32 else 2
    optimizer_bytes = 8 if fp32 else 12  # (master weights +) Adam's two moments, fp32
    microbatches = t.global_batch_size // (t.micro_batch_size * dp)
    in_flight = min(pp, microbatches)
    s, b = config.data.seq_length, t.micro_batch_size
    activations = {
        mode: _activations_per_layer(
            s, b, m.hidden_size, m.num_attention_heads, tp, p.sequence_parallel, mode, 4 if fp32 else 2
        )
        * layers_per_stage
        * in_flight
        for mode in ("none", "selective", "full")
    }
    logits = 2 * s * b * m.padded_vocab_size() / tp * 4  # fp32 logits and their gradient, last stage
    memory = MemoryPlan(
        weights=per_gpu * weight_bytes,
        gradients=per_gpu * 4,  # megatron's fp32 gradient buffer (grad_reduce_in_fp32)
        optimizer=per_gpu * optimizer_bytes / dp,
        optimizer_unsharded=per_gpu * optimizer_bytes,
        activations=activations,
        logits=logits,
        optimizer_transient=per_gpu * 4 if accelerator == "cpu" else 0.0,  # GPUs: the container's fused Adam
    )
    per_token = flops_per_token(config)
    tokens_per_step = t.global_batch_size * s
    step_seconds = per_token * tokens_per_step / (gpus * device.bf16_tflops * 1e12 * mfu)
    tokens_per_day = tokens_per_step / step_seconds * 86400
    budget = t.train_iters * tokens_per_step
    return Plan(
        config,
        device,
        gpus,
        dp,
        count,
        per_gpu,
        memory,
        per_token,
        tokens_per_step,
        step_seconds,
        tokens_per_day,
        budget,
        budget / tokens_per_day,
        mfu,
    )


def format_plan(plan: Plan) -> str:
    c, p, mem = plan.config, plan.config.parallel, plan.memory
    budget = plan.accelerator.memory_gib * GiB * USABLE_MEMORY
    lines = [
        f"{c.name}: {c.objective.upper()} {c.model.num_layers} layers x {c.model.hidden_size} "
        f"({c.model.num_attention_heads} heads), context {c.data.seq_length}, precision {c.training.precision}",
        f"parameters        {plan.parameters.total:,} total, {plan.parameters.embedding:,} embedding, "
        f"{plan.parameters.non_embedding:,} non-embedding; {plan.parameters_per_gpu:,} on the fullest GPU",
        f"layout            {plan.gpus} x {plan.accelerator.name}: TP {p.tensor_model_parallel_size} x "
        f"PP {p.pipeline_model_parallel_size} x DP {plan.data_parallel}, micro batch {c.training.micro_batch_size}, "
        f"global batch {c.training.global_batch_size} ({plan.tokens_per_step:,} tokens)",
        "",
        f"memory per GPU (GiB)   weights  grads  optimizer  activations  logits   total   fits in {USABLE_MEMORY:.0%} "
        f"of {plan.accelerator.memory_gib:g} GiB",
    ]
    for distributed in (False, True):
        for recompute in ("none", "selective", "full"):
            optimizer = mem.optimizer if distributed else mem.optimizer_unsharded
            total = mem.total(recompute=recompute, distributed_optimizer=distributed)
            chosen = distributed == p.use_distributed_optimizer and recompute == p.activation_recompute
            label = f"{'dist-opt' if distributed else 'plain'}, recompute {recompute}"
            lines.append(
                f"{'*' if chosen else ' '} {label:<29} {mem.weights / GiB:>6.1f} {mem.gradients / GiB:>6.1f} "
                f"{optimizer / GiB:>10.1f} {mem.activations[recompute] / GiB:>12.1f} {mem.logits / GiB:>7.2f} "
                f"{total / GiB:>7.1f}   {'yes' if total <= budget else 'NO'}"
            )
    lines += [
        "  (* = this config's setting)",
        "",
        f"compute           {plan.flops_per_token:.3g} FLOPs/token (6N + attention); at {plan.mfu:.0%} MFU: "
        f"{plan.step_seconds:.2f} s/step, {plan.tokens_per_day / 1e9:,.1f}B tokens/day",
        f"peak              {plan.accelerator.bf16_tflops:g} TFLOP/s dense bf16, {plan.accelerator.memory_tbs:g} TB/s: "
        f"{plan.accelerator.source}",
        f"budget            {c.training.train_iters:,} steps = {plan.budget_tokens / 1e9:,.1f}B tokens, "
        f"{plan.flops_per_token * plan.budget_tokens:.3g} FLOPs: {plan.days:,.1f} days on {plan.gpus} GPUs",
    ]
    return "\n".join(lines)


# ---- fitting a layout ----------------------------------------------------------------------------------
RECOMPUTE = ("none", "selective", "full")
GPUS_PER_NODE = 8
"""Tensor parallelism stays within a node (its all-reduces run every layer)."""


def usable_bytes(plan: Plan) -> float:
    return plan.accelerator.memory_gib * GiB * USABLE_MEMORY


def planned_bytes(plan: Plan) -> float:
    """Memory per GPU at the config's own recompute and optimizer settings."""
    p = plan.config.parallel
    return plan.memory.total(recompute=p.activation_recompute, distributed_optimizer=p.use_distributed_optimizer)


def fits(plan: Plan) -> bool:
    return planned_bytes(plan) <= usable_bytes(plan)


@dataclass
class LayoutFit:
    config: TrainConfig
    """The config with the layout that fits (the given one when it already did)."""
    plan: Plan
    changes: dict[str, tuple]
    """Dotted field -> (old, new) for each setting the search changed."""


LAYOUT_FIELDS = (
    "parallel.tensor_model_parallel_size",
    "parallel.pipeline_model_parallel_size",
    "parallel.sequence_parallel",
    "parallel.use_distributed_optimizer",
    "parallel.activation_recompute",
    "training.micro_batch_size",
)


def _get(config: TrainConfig, dotted: str):
    section, name = dotted.split(".")
    return getattr(getattr(config, section), name)


def _layouts(config: TrainConfig, gpus: int):
    """Every layout the trainer can run on ``gpus``: TP (within a node, dividing the heads) with sequence
    parallelism, PP (dividing the layers), recompute, micro batch (down from the config's, dividing the
    global batch per data-parallel rank) and the distributed optimizer."""
    import dataclasses

    m, t = config.model, config.training
    for tp in (1, 2, 4, 8):
        if tp > min(gpus, GPUS_PER_NODE) or m.num_attention_heads % tp or gpus % tp:
            continue
        for pp in (d for d in range(1, m.num_layers + 1) if m.num_layers % d == 0 and gpus % (tp * d) == 0):
            dp = gpus // (tp * pp)
            for recompute in RECOMPUTE:
                for micro in range(t.micro_batch_size, 0, -1):
                    if t.global_batch_size % (micro * dp):
                        continue
                    parallel = dataclasses.replace(
                        config.parallel,
                        tensor_model_parallel_size=tp,
                        pipeline_model_parallel_size=pp,
                        sequence_parallel=tp > 1,
                        use_distributed_optimizer=True,
                        activation_recompute=recompute,
                    )
                    training = dataclasses.replace(t, micro_batch_size=micro)
                    yield dataclasses.replace(config, parallel=parallel, training=training)


def _preference(config: TrainConfig) -> tuple:
    """Cheapest first: full recompute last (a third more compute), then the fewest GPUs per model replica
    (TP before PP: no pipeline bubble), then selective before no recompute is given up, then the largest
    micro batch."""
    p = config.parallel
    return (
        p.activation_recompute == "full",
        p.tensor_model_parallel_size * p.pipeline_model_parallel_size,
        p.pipeline_model_parallel_size,
        RECOMPUTE.index(p.activation_recompute),
        -config.training.micro_batch_size,
    )


def fit_layout(config: TrainConfig, *, gpus: int, accelerator: str = "h100-80gb", mfu: float = 0.4) -> LayoutFit:
    """``config`` unchanged when :func:`make_plan` says it fits on ``gpus`` x ``accelerator``; otherwise
    the preferred layout (:func:`_preference`) that fits. Raises ``ValueError`` with the smallest footprint
    found when none does."""
    try:
        plan = make_plan(config, gpus=gpus, accelerator=accelerator, mfu=mfu)
    except ValueError:  # the config's own layout does not divide these GPUs: search
        plan = None
    if plan is not None and fits(plan):
        return LayoutFit(config, plan, {})
    candidates = sorted(_layouts(config, gpus), key=_preference)
    smallest = None
    for candidate in candidates:
        trial = make_plan(candidate, gpus=gpus, accelerator=accelerator, mfu=mfu)
        if fits(trial):
            changes = {f: (_get(config, f), _get(candidate, f)) for f in LAYOUT_FIELDS}
            return LayoutFit(candidate, trial, {f: c for f, c in changes.items() if c[0] != c[1]})
        if smallest is None or planned_bytes(trial) < planned_bytes(smallest):
            smallest = trial
    device, m = ACCELERATORS[accelerator], config.model
    tps = [tp for tp in (1, 2, 4, 8) if m.num_attention_heads % tp == 0]
    pps = [pp for pp in range(1, m.num_layers + 1) if m.num_layers % pp == 0]
    limits = f"{m.num_attention_heads} heads allow TP {tps}, {m.num_layers} layers PP {pps}"
    if smallest is None:
        raise ValueError(
            f"no layout of {gpus} GPUs fits {config.name} ({limits}, global batch "
            f"{config.training.global_batch_size}): change --gpus or training.global_batch_size"
        )
    p = smallest.config.parallel
    more = next((n for n in (gpus * 2**k for k in range(1, 10)) if _fits_somewhere(config, n, accelerator)), None)
    raise ValueError(
        f"{config.name} ({m.num_layers} layers x {m.hidden_size}) fits no layout of {gpus} x {device.name} "
        f"({limits}): the smallest (TP {p.tensor_model_parallel_size} x PP {p.pipeline_model_parallel_size}, "
        f"distributed optimizer, recompute {p.activation_recompute}, micro batch "
        f"{smallest.config.training.micro_batch_size}) needs {planned_bytes(smallest) / GiB:.1f} GiB of the "
        f"{usable_bytes(smallest) / GiB:.1f} GiB usable; "
        + (f"it fits from --gpus {more}" if more else "use a larger GPU (--gpu) or a smaller model")
    )


def _fits_somewhere(config: TrainConfig, gpus: int, accelerator: str) -> bool:
    return any(fits(make_plan(c, gpus=gpus, accelerator=accelerator)) for c in _layouts(config, gpus))


def format_changes(fit: LayoutFit) -> str:
    return ", ".join(f"{name} {old} -> {new}" for name, (old, new) in fit.changes.items())


def write_fitted_config(data: dict, fit: LayoutFit, path: str | Path, source: str | Path) -> Path:
    """Write ``data`` (the YAML mapping of run config ``source``) to ``path`` with ``fit``'s changes, under a
    header naming them."""
    import yaml

    from megatron_plm.outputs import write_text_atomic

    for dotted, (_, value) in fit.changes.items():
        section, name = dotted.split(".")
        data.setdefault(section, {})[name] = value
    header = f"# {Path(source).name}, layout fitted by the planner to {fit.plan.gpus} x {fit.plan.accelerator.name}"
    header += f": {format_changes(fit)}\n" if fit.changes else " (it fits as configured)\n"
    return write_text_atomic(path, header + yaml.safe_dump(data, sort_keys=False))
