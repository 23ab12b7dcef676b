"""The training loop: ``megatron-plm train --config FILE [dotted.key=value ...]``.

Top to bottom: runtime -> model, optimizer, LR schedule -> resume (or CLM -> MLM body
transfer) -> datasets and the batch loader at the consumed-sample count -> steps (log,
validate, checkpoint) -> final validation and checkpoint.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from megatron_plm.config import TrainConfig
from megatron_plm.data.builder import DataBuilder, epochs_per_source
from megatron_plm.data.loader import BatchLoader
from megatron_plm.data.splits import Split
from megatron_plm.data.subword import load_tokenizer
from megatron_plm.runtime import Runtime
from megatron_plm.training.build import build_training_state
from megatron_plm.training.step import evaluate, train_step


class TrainingStopped(RuntimeError):
    """The run cannot continue (e.g. repeated non-finite losses); no checkpoint was written for it."""


@dataclass
class TrainResult:
    iterations: int
    consumed_samples: int
    history: list[dict] = field(default_factory=list)
    """One entry per step: step, loss, lr, grad_norm, tokens, skipped."""
    validation: list[dict] = field(default_factory=list)
    """One entry per validation: step, loss, perplexity."""
    checkpoint: Path | None = None
    transferred: list[str] = field(default_factory=list)
    """Tensors loaded by ``checkpoint.init_from``."""
    compute: list[dict] = field(default_factory=list)
    """Tokens and FLOPs per training phase: earlier runs this one started from, then this one."""


class _Logger:
    def __init__(self, config: TrainConfig, runtime: Runtime):
        self.main = runtime.is_main_process
        self.writer = None
        if self.main and config.logging.tensorboard_dir:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as error:
                raise ValueError(
                    "logging.tensorboard_dir is set but the tensorboard package is missing: pip install tensorboard"
                ) from error
            self.writer = SummaryWriter(config.logging.tensorboard_dir)
        self.metrics = None
        if self.main and config.logging.metrics_file:
            Path(config.logging.metrics_file).parent.mkdir(parents=True, exist_ok=True)
            self.metrics = open(config.logging.metrics_file, "a")
        self.wandb = None
        if self.main and config.logging.wandb_project:
            import wandb  # optional; the config asked for it

            self.wandb = wandb.init(project=config.logging.wandb_project, name=config.name, config=config.to_dict())

    def say(self, text: str) -> None:
        if self.main:
            print(text, flush=True)

    def record(self, kind: str, entry: dict) -> None:
        if self.metrics is not None:
            self.metrics.write(json.dumps({"kind": kind, **entry}) + "\n")
            self.metrics.flush()

    def scalars(self, step: int, values: dict) -> None:
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(key, value, step)
        if self.wandb is not None:
            self.wandb.log(values, step=step)

    def close(self) -> None:
        if self.metrics is not None:
            self.metrics.close()
        if self.writer is not None:
            self.writer.close()
        if self.wandb is not None:
            self.wandb.finish()


def _check_outputs(config: TrainConfig) -> None:
    """Every output path is writable before the first step (a read-only checkpoint.save once failed
    only after training had finished)."""
    from megatron_plm.checkpoint.training import check_writable

    metrics = config.logging.metrics_file
    if metrics and Path(metrics).is_dir():
        raise ValueError(f"logging.metrics_file={metrics} is a directory; give a file name")
    outputs = {"checkpoint.save": config.checkpoint.save, "logging.tensorboard_dir": config.logging.tensorboard_dir,
               "logging.metrics_file": metrics and Path(metrics).parent}  # fmt: skip
    for name, directory in outputs.items():
        if directory:
            check_writable(directory, name)


def _check_memory(config: TrainConfig, runtime: Runtime) -> None:
    """Refuse a run whose first step could not fit (seq_length=1000000 once tried to allocate 1 TB)."""
    from megatron_plm.planning.planner import make_plan

    if runtime.device.type == "cuda":
        available, where = torch.cuda.mem_get_info(runtime.device)[1], torch.cuda.get_device_name(runtime.device)
    else:
        available, where = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "this machine's memory"
    p = config.parallel
    plan = make_plan(config, gpus=runtime.world_size, accelerator="cpu" if runtime.device.type == "cpu" else "h100-80gb")
    recompute = p.activation_recompute
    if recompute == "none" and config.model.attention_backend != "local":
        recompute = "selective"  # fused attention keeps no [s, s] scores: the planner's selective estimate
    needed = plan.memory.total(recompute=recompute, distributed_optimizer=p.use_distributed_optimizer)
    if config.model.attention_backend == "sdpa":  # the boolean [b, 1, s, s] mask of protein boundaries
        needed += config.training.micro_batch_size * config.data.seq_length**2
    if needed > available:
        raise ValueError(
            f"this run needs about {needed / 2**30:,.0f} GiB per process (data.seq_length={config.data.seq_length:,}, "
            f"training.micro_batch_size={config.training.micro_batch_size}; see `megatron-plm plan`), more than the "
            f"{available / 2**30:,.0f} GiB of {where}: lower data.seq_length or training.micro_batch_size"
        )


def supervised_residues(dataset, num_samples: int, tokenizer) -> int:
    """Residues under the supervised labels of the first ``num_samples`` samples (framing tokens count
    one): the denominator of per-residue loss. Every rank computes it over all the samples."""
    from megatron_plm.data.subword import token_residues

    per_token = token_residues(tokenizer)
    total = 0
    for index in range(num_samples):
        sample = dataset[index]
        total += int((per_token[np.asarray(sample["labels"])] * (np.asarray(sample["loss_mask"]) > 0)).sum())
    return total


def train(config: TrainConfig, runtime: Runtime) -> TrainResult:
    from megatron_plm.checkpoint.training import (
        compute_phases,
        latest_checkpoint,
        load_checkpoint,
        load_model_tensors,
        resume_directory,
        save_checkpoint,
        saved_run_config,
    )

    t, ckpt = config.training, config.checkpoint
    if runtime.is_main_process:
        _check_outputs(config)
    _check_memory(config, runtime)
    log = _Logger(config, runtime)
    tokenizer = load_tokenizer(config.data.tokenizer)
    config.model.vocab_size = tokenizer.vocab_size
    state = build_training_state(
        config.model, config.optimizer, runtime, objective=config.objective,
        precision=t.precision, train_iters=t.train_iters, fp8=config.fp8,
    )  # fmt: skip
    result = TrainResult(iterations=0, consumed_samples=0)

    # ---- resume, or start from another run's weights -------------------------------------------
    resume_from = resume_directory(ckpt.load, ckpt.save)
    if resume_from is not None:
        saved = saved_run_config(resume_from)
        if saved["model"] != config.to_dict()["model"] or saved["objective"] != config.objective:
            raise ValueError(f"{resume_from} holds a different model or objective; point checkpoint.save elsewhere")
        resumed = load_checkpoint(resume_from, state)
        result.iterations, result.consumed_samples = resumed.iteration, resumed.consumed_samples
        result.compute = resumed.compute
        log.say(f"resumed from {resume_from} at step {resumed.iteration} ({resumed.consumed_samples:,} samples)")
    elif ckpt.init_from:
        source = latest_checkpoint(ckpt.init_from) or Path(ckpt.init_from)
        saved = saved_run_config(source)
        body_only = saved is not None and saved["objective"] != config.objective
        result.compute = compute_phases(source)
        result.transferred = load_model_tensors(source, state.unwrapped()[0], body_only=body_only)
        log.say(f"initialised {'the body ' if body_only else ''}from {source}: {len(result.transferred)} tensors "
                f"({', '.join(result.transferred[:4])}{', ...' if len(result.transferred) > 4 else ''})")  # fmt: skip

    from megatron_plm.planning.planner import flops_per_token as count_flops_per_token
    from megatron_plm.planning.planner import peak_flops

    flops_per_token = count_flops_per_token(config)
    peak = peak_flops(torch.cuda.get_device_name(runtime.device)) if runtime.device.type == "cuda" else None
    if not result.compute or result.compute[-1]["name"] != config.name:
        result.compute.append({"name": config.name, "objective": config.objective, "tokens": 0, "flops": 0.0})
    phase = result.compute[-1]

    # ---- data -------------------------------------------------------------------------------------
    builder = DataBuilder(config.data, tokenizer)
    train_data = builder.build(Split.TRAIN, t.train_iters * t.global_batch_size)
    valid_data = builder.build(Split.VALID, t.eval_iters * t.global_batch_size)
    causal = config.objective == "clm"
    loader = BatchLoader(train_data, t.global_batch_size, t.micro_batch_size, runtime.dp_rank,
                         runtime.data_parallel_size, causal=causal, consumed_samples=result.consumed_samples)  # fmt: skip

    subword = config.data.tokenizer is not None
    valid_residues: list[int] = []

    def validate(step: int) -> None:
        valid = BatchLoader(valid_data, t.global_batch_size, t.micro_batch_size, runtime.dp_rank,
                            runtime.data_parallel_size, causal=causal)  # fmt: skip
        loss, tokens = evaluate(state, [valid.next_step() for _ in range(t.eval_iters)], runtime)
        entry = {"step": step, "loss": loss, "perplexity": math.exp(loss), "tokens": tokens}
        line = f"validation at step {step}: loss {loss:.4f}, perplexity {math.exp(loss):.2f} ({tokens:,} tokens)"
        if subword:  # per residue too, so runs with different vocabularies compare (residues = tokens otherwise)
            if not valid_residues:
                valid_residues.append(supervised_residues(valid_data, t.eval_iters * t.global_batch_size, tokenizer))
            per_residue = loss * tokens / valid_residues[0]
            entry.update(loss_per_residue=per_residue, perplexity_per_residue=math.exp(per_residue),
                         residues=valid_residues[0])  # fmt: skip
            line += f"; per residue: loss {per_residue:.4f}, perplexity {math.exp(per_residue):.2f} " \
                    f"({valid_residues[0]:,} residues)"
        result.validation.append(entry)
        log.record("validation", entry)
        log.say(line)
        log.scalars(step, {"valid/loss": loss, "valid/perplexity": math.exp(loss)})

    def save(step: int) -> None:
        result.checkpoint = save_checkpoint(ckpt.save, iteration=step, consumed_samples=loader.consumed_samples,
                                            state=state, config=config.to_dict(), keep_last=ckpt.keep_last,
                                            compute=result.compute)  # fmt: skip
        log.say(f"saved checkpoint {result.checkpoint}")

    # ---- steps ------------------------------------------------------------------------------------
    p = runtime.parallel
    log.say(
        f"{config.name}: {config.objective.upper()} {config.model.num_layers} layers x {config.model.hidden_size}, "
        f"steps {result.iterations + 1}..{t.train_iters}, global batch {t.global_batch_size} x "
        f"{config.data.seq_length} tokens; TP {p.tensor_model_parallel_size} x PP {p.pipeline_model_parallel_size} "
        f"x DP {runtime.data_parallel_size} on {runtime.device.type}"
    )
    skipped_in_a_row = 0
    tokens_per_step = t.global_batch_size * config.data.seq_length
    for step in range(result.iterations + 1, t.train_iters + 1):
        started = time.perf_counter()
        microbatches = [batch.to(runtime.device) for batch in loader.next_step()]
        outcome = train_step(state, microbatches, runtime)
        if outcome.skipped:
            skipped_in_a_row += 1
            log.say(f"step {step}: non-finite loss ({outcome.loss}); update skipped")
            if skipped_in_a_row >= t.max_skipped_steps:
                raise TrainingStopped(
                    f"{skipped_in_a_row} consecutive steps with a non-finite loss (last at step {step}); "
                    "stopped without saving. Lower optimizer.lr or check the data."
                )
        else:
            skipped_in_a_row = 0
            state.scheduler.step(increment=1)
        elapsed = time.perf_counter() - started
        phase["tokens"] += tokens_per_step
        phase["flops"] += flops_per_token * tokens_per_step
        lr = state.optimizer.param_groups[0]["lr"]
        entry = {"step": step, "loss": outcome.loss, "lr": lr, "grad_norm": outcome.grad_norm,
                 "tokens": outcome.tokens, "skipped": outcome.skipped, "seconds": elapsed}  # fmt: skip
        result.history.append(entry)
        log.record("train", entry)
        result.iterations, result.consumed_samples = step, loader.consumed_samples
        if step % config.logging.log_interval == 0 or step == t.train_iters:
            processed = t.global_batch_size * config.data.seq_length
            line = (f"step {step:>6} | loss {outcome.loss:.4f} | ppl {math.exp(min(outcome.loss, 50)):.2f} | "
                    f"lr {lr:.3e} | grad norm {outcome.grad_norm or float('nan'):.3f} | "
                    f"{processed / elapsed:,.0f} tokens/s | samples {loader.consumed_samples:,}")  # fmt: skip
            scalars = {"train/loss": outcome.loss, "train/lr": lr, "train/tokens_per_s": processed / elapsed}
            if runtime.device.type == "cuda":
                tflops = flops_per_token * processed / elapsed / runtime.world_size / 1e12
                line += f" | {tflops:.1f} TFLOP/s/GPU" + (f" | MFU {tflops * 1e12 / peak:.1%}" if peak else "")
                scalars["train/tflops_per_gpu"] = tflops
            epochs = epochs_per_source(train_data, loader.consumed_samples)
            line += " | epochs " + ", ".join(f"{Path(name).name} {value:.3f}" for name, value in epochs.items())
            log.say(line)
            log.scalars(step, scalars)
        if t.eval_interval and step % t.eval_interval == 0 and step != t.train_iters:
            validate(step)
        if t.exit_interval and step % t.exit_interval == 0 and step != t.train_iters:
            if ckpt.save:
                save(step)
            log.say(f"stopping at step {step} (training.exit_interval); relaunch to resume")
            log.close()
            return result
        if ckpt.save and ckpt.save_interval and step % ckpt.save_interval == 0 and step != t.train_iters:
            save(step)

    validate(result.iterations)
    if ckpt.save:
        save(result.iterations)
    total_flops = sum(p["flops"] for p in result.compute) or 1.0
    log.say("compute: " + "; ".join(
        f"{p['name']} ({p['objective']}) {p['tokens']:,} tokens, {p['flops']:.3g} FLOPs = {p['flops'] / total_flops:.0%}"
        for p in result.compute))  # fmt: skip
    final = result.validation[-1]
    log.say(f"done: {config.name} trained to step {result.iterations} ({result.consumed_samples:,} samples); "
            f"validation perplexity {final['perplexity']:.2f}"
            + (f"; checkpoint {result.checkpoint}" if result.checkpoint else ""))  # fmt: skip
    log.close()
    return result
