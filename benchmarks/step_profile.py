#!/usr/bin/env python
"""Where a training step's time goes, per kind of work: what picks the kernels worth writing.

Runs one real training step of a config (forward, backward, gradient norm, optimizer) with every aten
op recorded by a ``TorchDispatchMode``: the module that issued it, its FLOPs, the bytes it reads and
writes. Each op is then given a time:

- on a GPU, measured: CUDA events around the op (the GPU runs ahead of Python-level recording, so an
  op's events bracket its own kernels);
- elsewhere, priced on a roofline of the GPU named by ``--price-on`` (default: the H100 as measured
  on the lent machine, 798 TFLOP/s bf16 matrix products and 3.0 TB/s copies): matrix products at the
  matrix rate, attention at ``--attention-efficiency`` of it over the FLOPs of the proteins' own
  blocks (what a varlen flash kernel does), every other op at max(bytes / bandwidth, one launch).
  A model of the GPU, not a measurement -- but of the real op stream of this code.

To keep CPU runs small, ``--layers`` builds that many transformer layers and scales the per-layer
rows (and the optimizer's, by parameter count) up to the config's. Usage:

    python benchmarks/step_profile.py --config examples/configs/recipes/esm2_650m.yaml --layers 2 \\
        data.sources=[{prefix: outputs/sample/uniref90_sample}] training.micro_batch_size=2
"""

from __future__ import annotations

import argparse
import contextlib
import re
import sys
import unittest.mock
from collections import defaultdict
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import flop_registry


@dataclass(frozen=True)
class Roofline:
    name: str
    matmul_flops: float
    """bf16 dense matrix-product rate actually reached (FLOP/s)."""
    bandwidth: float
    """Device-memory bytes per second (read + written) a copy reaches."""
    launch_seconds: float = 3e-6
    """Least time a kernel takes, however small (launch and tail)."""


ROOFLINES = {
    # Measured on the lent machine (the device tool's KINDS.md, 2026-11): 8192^3 bf16 products, d2d copies.
    "h100": Roofline("H100 SXM (798 TFLOP/s bf16 mm, 3.0 TB/s)", 798e12, 3.0e12),
    "h200": Roofline("H200 (788 TFLOP/s bf16 mm, 4.3 TB/s)", 788e12, 4.3e12),
}

MATMUL_OPS = {"mm", "addmm", "bmm", "baddbmm", "matmul", "linear"}


@dataclass
class OpRecord:
    module: str
    op: str
    flops: float
    bytes: float
    calls: int = 1
    seconds: float = 0.0
    events: list = field(default_factory=list)


def role(module_path: str) -> str:
    """A module path without layer indices and wrappers: 'decoder.layers.*.mlp.linear_fc1'."""
    path = re.sub(r"\.\d+(\.|$)", r".*\1", module_path)
    path = re.sub(r"^(module\.)+", "", path)
    return "(model)" if path in ("", "module") else path


def _tensors(values):
    return [v for v in tree_flatten(values)[0] if isinstance(v, torch.Tensor)]


def _tag_graph(tensors, name: str) -> None:
    """Tag the autograd nodes behind ``tensors`` not yet tagged (those since the last tag) with ``name``."""
    pending = [t.grad_fn for t in _tensors(tensors) if t.grad_fn is not None]
    while pending:
        node = pending.pop()
        if node is None or "profile_module" in node.metadata:
            continue
        node.metadata["profile_module"] = name
        pending += [next_node for next_node, _ in node.next_functions]


class OpRecorder(TorchDispatchMode):
    """Records every aten op with the module that issued it.

    Forward ops take the innermost module running (module hooks). Backward ops take the module of the
    autograd node executing them: each module's forward hook tags the nodes it created (walking back
    from its outputs to nodes already tagged), so a residual add belongs to the layer and an attention
    product to core attention, in both directions.
    """

    def __init__(self, model: torch.nn.Module, *, time_on_gpu: bool):
        super().__init__()
        self.names = {id(m): name for name, m in model.named_modules()}
        self.time_on_gpu = time_on_gpu
        self.records: dict[tuple[str, str], OpRecord] = {}
        self.stack: list[str] = []
        self.in_optimizer = False
        self._hooks = []

    def __enter__(self):
        from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook

        self._hooks = [
            register_module_forward_pre_hook(self._enter_module),
            register_module_forward_hook(self._leave_module),
        ]
        return super().__enter__()

    def __exit__(self, *exc):
        for hook in self._hooks:
            hook.remove()
        return super().__exit__(*exc)

    def _enter_module(self, module, args):
        if id(module) in self.names:
            if self.stack:  # what the enclosing module computed before calling this one is its own
                _tag_graph(args, self.stack[-1])
            self.stack.append(role(self.names[id(module)]))

    def _leave_module(self, module, args, output):
        if id(module) in self.names:
            _tag_graph(output, self.stack.pop())

    @contextlib.contextmanager
    def optimizer_phase(self):
        """Label the ops inside as the optimizer's (prepare grads, grad norm, clip, update, param copy)."""
        outer, self.in_optimizer = self.in_optimizer, True
        try:
            yield
        finally:
            self.in_optimizer = outer

    def mark_optimizer_step(self, step_module):
        """Wrap ``step_module.optimizer_step`` (what ``train_step`` calls after the backward) in
        :meth:`optimizer_phase` while the returned context is open: all of it, the update that
        ``step_with_ready_grads`` makes included, is shared by the step's microbatches."""
        original = step_module.optimizer_step

        def optimizer_step(*args, **kwargs):
            with self.optimizer_phase():
                return original(*args, **kwargs)

        return unittest.mock.patch.object(step_module, "optimizer_step", optimizer_step)

    def _module(self) -> str:
        if self.in_optimizer:
            return "(step) [optimizer]"
        node = torch._C._current_autograd_node()
        if node is not None:
            return node.metadata.get("profile_module", f"grad buffers ({node.name()})") + " [backward]"
        return self.stack[-1] if self.stack else "(step)"

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.is_view or func._overloadpacket.__name__ in ("_unsafe_view", "detach", "alias", "lift_fresh"):
            return func(*args, **kwargs)
        if self.time_on_gpu:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
        out = func(*args, **kwargs)
        if self.time_on_gpu:
            end.record()
        packet = func._overloadpacket
        flops = float(flop_registry[packet](*args, **kwargs, out_val=out)) if packet in flop_registry else 0.0
        seen = {}
        for t in _tensors(args) + _tensors(kwargs) + _tensors(out):
            seen[(t.data_ptr(), t.dtype, tuple(t.shape))] = t.numel() * t.element_size()
        key = (self._module(), packet.__name__)
        record = self.records.get(key)
        if record is None:
            record = self.records[key] = OpRecord(key[0], key[1], 0.0, 0.0, 0)
        record.calls += 1
        record.flops += flops
        record.bytes += sum(seen.values())
        if self.time_on_gpu:
            record.events.append((start, end))
        return out


def category(record: OpRecord) -> str:
    """The kind of work an op is, for the summary (what a fused kernel could take over)."""
    module, op = record.module.split(" [")[0], record.op
    if "[optimizer]" in record.module:
        return "optimizer + grad norm + param copy"
    if op in MATMUL_OPS:
        return "GEMM"
    if "rotary" in op:  # the fused kernel runs inside core attention (varlen)
        return "rotary + q/k/v split"
    if "core_attention" in module:
        return "core attention"
    if "layernorm" in module or "layer_norm" in op:
        return "LayerNorm"
    if module.endswith("self_attention"):
        return "rotary + q/k/v split"
    if ".mlp" in module or "gelu" in op:
        return "bias + GELU"
    if "lm_head" in module or "output_layer" in module:
        return "LM head (non-GEMM)"
    if "embedding" in module:
        return "embedding"
    if module.startswith("decoder.layers.*"):
        return "bias + residual add"
    return "loss, masks, grad buffers, other"


def attention_seconds(batch, config, roofline: Roofline, efficiency: float) -> float:
    """One layer's core attention priced as a varlen flash kernel: 4 x hidden x sum(len^2) FLOPs
    forward (halved when causal), 2.5x that backward, at ``efficiency`` of the matrix rate."""
    lengths = (batch.cu_seqlens[1:] - batch.cu_seqlens[:-1]).double()
    forward = 4.0 * config.model.hidden_size * float((lengths**2).sum()) * (0.5 if config.objective == "clm" else 1.0)
    return 3.5 * forward / (efficiency * roofline.matmul_flops)


def price(record: OpRecord, roofline: Roofline) -> float:
    compute = record.flops / roofline.matmul_flops if record.op in MATMUL_OPS else 0.0
    return max(compute, record.bytes / roofline.bandwidth, record.calls * roofline.launch_seconds)


def profile(
    config_path: str,
    overrides: list[str],
    *,
    layers: int | None,
    roofline: Roofline,
    attention_efficiency: float,
    microbatches_per_step: int | None = None,
) -> tuple[list[OpRecord], dict]:
    from megatron_plm.training.config import load_config
    from megatron_plm.data.samples.builder import DataBuilder
    from megatron_plm.data.samples.loader import BatchLoader
    from megatron_plm.data.samples.splits import Split
    from megatron_plm.training.planner import count_parameters
    from megatron_plm.runtime.distributed import initialize
    from megatron_plm.training import step as step_module
    from megatron_plm.training.build import build_run
    from megatron_plm.training.step import train_step

    config = load_config(
        config_path, [*overrides, "training.train_iters=2", "parallel.use_distributed_optimizer=false"]
    ).resolve()
    # One microbatch is recorded; the optimizer's work is shared by all microbatches of a step on one GPU.
    microbatches = microbatches_per_step or max(
        1, config.training.global_batch_size // config.training.micro_batch_size
    )
    config.training.global_batch_size = config.training.micro_batch_size
    full_layers = config.model.num_layers
    full_params = count_parameters(config).total
    if layers:
        config.model.num_layers = layers
    small_params = count_parameters(config).total
    t = config.training
    with initialize(config.parallel, seed=t.seed) as runtime:
        on_gpu = runtime.on_gpu
        state = build_run(config, runtime, allow_cpu_bf16=True)
        data = DataBuilder(config.data, config.objective).build(Split.TRAIN, 2 * t.global_batch_size)
        loader = BatchLoader(data, t.global_batch_size, t.micro_batch_size, 0, 1, causal=config.objective == "clm")
        warmup, measured = ([b.to(runtime.device) for b in loader.next_step()] for _ in range(2))
        train_step(state, warmup, runtime)  # allocates optimizer state; not recorded
        recorder = OpRecorder(state.model[0], time_on_gpu=on_gpu)
        with recorder, recorder.mark_optimizer_step(step_module):
            train_step(state, measured, runtime)
        if on_gpu:
            torch.cuda.synchronize()
    records = list(recorder.records.values())
    if not on_gpu:  # the CPU ran a plain-PyTorch attention: price the GPU's flash kernel instead
        records = [r for r in records if "core_attention" not in r.module]
    layer_scale, param_scale = full_layers / config.model.num_layers, full_params / small_params
    for r in records:
        r.seconds = sum(s.elapsed_time(e) for s, e in r.events) / 1e3 if on_gpu else price(r, roofline)
        scale = (
            param_scale / microbatches
            if "[optimizer]" in r.module
            else layer_scale
            if r.module.startswith("decoder.layers")
            else 1
        )
        r.seconds, r.flops, r.bytes, r.calls = (
            r.seconds * scale,
            r.flops * scale,
            r.bytes * scale,
            round(r.calls * scale),
        )
    if not on_gpu:
        seconds = sum(attention_seconds(b, config, roofline, attention_efficiency) for b in measured)
        records.append(
            OpRecord(
                "decoder.layers.*.self_attention.core_attention",
                "varlen flash (priced)",
                0,
                0,
                2 * len(measured) * full_layers,
                seconds=seconds * full_layers,
            )
        )
        if config.model.attention_backend == "varlen":  # its RoPE ran inside core attention: price the kernel
            qk = sum(b.tokens.numel() for b in measured) * 2 * config.model.hidden_size * 2  # q and k, bf16
            moved = 2 * 2 * qk * full_layers  # read + write, forward + backward
            records.append(
                OpRecord(
                    "decoder.layers.*.self_attention",
                    "fused rotary (priced)",
                    0,
                    moved,
                    4 * full_layers,
                    seconds=max(moved / roofline.bandwidth, 4 * full_layers * roofline.launch_seconds),
                )
            )
        if config.model.attention_backend in ("sdpa", "varlen"):  # their MLP ran the fused op's reference
            records = [r for r in records if ".mlp.bias_gelu" not in r.module]
            ffn = config.model.ffn_size // config.parallel.tensor_model_parallel_size
            activation = sum(b.tokens.numel() for b in measured) * ffn * 2  # bf16
            moved = 5 * activation * full_layers  # forward: read x, write; backward: read x and grad, write
            calls = 3 * len(measured) * full_layers  # forward, backward, the bias gradient's partial sums
            records.append(
                OpRecord(
                    "decoder.layers.*.mlp.bias_gelu",
                    "fused bias+GELU (priced)",
                    0,
                    moved,
                    calls,
                    seconds=max(moved / roofline.bandwidth, calls * roofline.launch_seconds),
                )
            )
    tokens = sum(b.tokens.numel() for b in measured)
    real = sum(int((b.segment_ids >= 0).sum()) for b in measured)
    info = {
        "config": config.name,
        "layers": f"{config.model.num_layers} built, {full_layers} priced",
        "microbatches": microbatches,
        "tokens": tokens,
        "real": real,
        "device": runtime.device.type if runtime.on_gpu else "cpu",
    }
    return records, info


def format_profile(records: list[OpRecord], info: dict, roofline: Roofline, top: int) -> str:
    total = sum(r.seconds for r in records)
    how = "measured (CUDA events)" if info["device"] == "cuda" else f"priced on {roofline.name}"
    lines = [
        f"{info['config']}: one microbatch, {info['tokens']:,} tokens ({info['real'] / info['tokens']:.1%} real), "
        f"layers {info['layers']}, optimizer shared by {info['microbatches']} microbatches; times {how}",
        "",
        f"{'kind of work':<36} {'kernels':>8} {'GFLOP':>10} {'GB moved':>9} {'ms':>9} {'share':>6}",
    ]
    by_kind = defaultdict(lambda: [0, 0.0, 0.0, 0.0])
    for r in records:
        row = by_kind[category(r)]
        row[0] += r.calls
        row[1] += r.flops
        row[2] += r.bytes
        row[3] += r.seconds
    for kind, (calls, flops, moved, seconds) in sorted(by_kind.items(), key=lambda kv: -kv[1][3]):
        lines.append(
            f"{kind:<36} {calls:>8,} {flops / 1e9:>10,.0f} {moved / 1e9:>9.2f} {seconds * 1e3:>9.2f} "
            f"{seconds / total:>6.1%}"
        )
    lines += [
        "",
        f"total {total * 1e3:.2f} ms; the {top} costliest ops outside GEMMs and attention:",
        "",
        f"{'module':<58} {'op':<28} {'calls':>6} {'GB moved':>9} {'ms':>8}",
    ]
    rest = [r for r in records if category(r) not in ("GEMM", "core attention")]
    for r in sorted(rest, key=lambda r: -r.seconds)[:top]:
        lines.append(f"{r.module[:58]:<58} {r.op[:28]:<28} {r.calls:>6} {r.bytes / 1e9:>9.2f} {r.seconds * 1e3:>8.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from megatron_plm.runtime.accelerators import silence_fallback_warnings

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--layers", type=int, default=None, help="transformer layers to build (rows scale up)")
    parser.add_argument("--price-on", choices=sorted(ROOFLINES), default="h100")
    parser.add_argument(
        "--attention-efficiency",
        type=float,
        default=0.45,
        help="share of the matrix rate a varlen flash kernel reaches (FA2 on H100: ~0.45)",
    )
    parser.add_argument(
        "--microbatches-per-step",
        type=int,
        default=None,
        help="microbatches sharing one optimizer step (default: global / micro batch size)",
    )
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_intermixed_args(argv)  # flags may follow the overrides
    silence_fallback_warnings()
    roofline = ROOFLINES[args.price_on]
    records, info = profile(
        args.config,
        args.overrides,
        layers=args.layers,
        roofline=roofline,
        attention_efficiency=args.attention_efficiency,
        microbatches_per_step=args.microbatches_per_step,
    )
    print(format_profile(records, info, roofline, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
