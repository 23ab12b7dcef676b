"""The training loop: ``megatron-plm train --config FILE [dotted.key=value ...]``.

Top to bottom: model, optimizer, LR schedule (``build``) -> resume or ``init_from`` (``restore``)
-> datasets and the batch loader at the consumed-sample count -> steps (log and ``metrics``,
``validation``, checkpoint; stop on a signal, ``preemption``) -> final validation and checkpoint.
The compute ledger (``ledger``) counts tokens and FLOPs per phase.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from megatron_plm.training.config import TrainConfig, check_sizes
from megatron_plm.data.samples.builder import epochs_per_source
from megatron_plm.runtime.distributed import Runtime
from megatron_plm.training.build import TrainingState, build_run
from megatron_plm.training.checkpointer import Checkpointer
from megatron_plm.training.data import batch_loader, build_datasets
from megatron_plm.training.ledger import ComputeLedger
from megatron_plm.training.metrics import EtaClock, RunLog
from megatron_plm.training.preemption import StopSignals
from megatron_plm.training.restore import restore
from megatron_plm.training.step import train_step
from megatron_plm.training.validation import Validator


class TrainingStopped(RuntimeError):
    """The run cannot continue (e.g. repeated non-finite losses); no checkpoint was written for it."""


HISTORY_LIMIT = 10_000
"""Entries :class:`TrainResult` keeps in memory of each kind (the newest); ``metrics.jsonl`` has them all."""


@dataclass
class TrainResult:
    iterations: int
    consumed_samples: int
    history: list[dict] = field(default_factory=list)
    """The newest :data:`HISTORY_LIMIT` steps of this launch: step, loss, lr, grad_norm, tokens, skipped."""
    validation: list[dict] = field(default_factory=list)
    """The newest :data:`HISTORY_LIMIT` validations: step, loss, perplexity."""
    checkpoint: Path | None = None
    transferred: list[str] = field(default_factory=list)
    """Tensors loaded by ``checkpoint.init_from``."""
    compute: list[dict] = field(default_factory=list)
    """Tokens and FLOPs per training phase: earlier runs this one started from, then this one."""
    stopped_by: str | None = None
    """The signal that stopped this launch after a save (the run continues on relaunch)."""
    already_done: bool = False
    """The checkpoint was already at ``training.train_iters``: nothing was trained or saved."""

    def record(self, entry: dict) -> None:
        _append_bounded(self.history, entry)

    def record_validation(self, entry: dict) -> None:
        _append_bounded(self.validation, entry)


def _append_bounded(entries: list, entry) -> None:
    """Append, dropping the oldest beyond :data:`HISTORY_LIMIT` (in batches, so appending stays O(1))."""
    entries.append(entry)
    if len(entries) >= 2 * HISTORY_LIMIT:
        del entries[:-HISTORY_LIMIT]


def _check_outputs(config: TrainConfig) -> None:
    """Every output path is writable before the first step (a read-only checkpoint.save once failed
    only after training had finished)."""
    from megatron_plm.checkpoint.distributed import check_writable

    metrics = config.metrics_path()
    if metrics and metrics.is_dir():
        raise ValueError(f"logging.metrics_file={metrics} is a directory; give a file name")
    outputs = {
        "checkpoint.save": config.checkpoint.save,
        "logging.run_dir": config.run_dir(),
        "logging.tensorboard_dir": config.logging.tensorboard_dir,
        "logging.metrics_file": metrics and metrics.parent,
    }
    for name, directory in outputs.items():
        if directory:
            check_writable(directory, name)


def _check_memory(config: TrainConfig, runtime: Runtime) -> None:
    """Refuse a run whose first step could not fit (seq_length=1000000 once tried to allocate 1 TB)."""
    from megatron_plm.training.planner import make_plan

    if runtime.on_gpu:
        available, where = torch.cuda.mem_get_info(runtime.device)[1], torch.cuda.get_device_name(runtime.device)
    else:
        available, where = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "this machine's memory"
    p = config.parallel
    plan = make_plan(config, gpus=runtime.world_size, accelerator="h100-80gb" if runtime.on_gpu else "cpu")
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


class Trainer:
    """One launch of a run, built top to bottom in :meth:`__init__` (tokenizer, model and optimizer, restore,
    data, validator, checkpointer), then :meth:`train`: step, validate when due, save when due, stop."""

    def __init__(self, config: TrainConfig, runtime: Runtime):
        from megatron_plm.data.tokenizers.subword import load_tokenizer

        self.tokenizer = load_tokenizer(config.data.tokenizer)  # once: the model's vocabulary, the data, validation
        self.config, self.runtime = config.resolve(self.tokenizer), runtime
        config, t = self.config, self.config.training
        check_sizes(config)
        if runtime.is_main_process:
            _check_outputs(config)
        _check_memory(config, runtime)
        self.log = RunLog(config, runtime)
        self.state = build_run(config, runtime)
        self.start = restore(config, self.state, self.log.say)
        self.result = TrainResult(
            iterations=self.start.iteration,
            consumed_samples=self.start.consumed_samples,
            transferred=self.start.transferred,
        )
        if self.start.finished:
            return
        self.log.start_at(self.start.iteration)
        self.ledger = ComputeLedger(config, runtime, self.start.compute)
        self.result.compute = self.ledger.phases
        self.train_data, valid_data = build_datasets(config, self.tokenizer)
        self.validator = Validator(config, self.state, valid_data, runtime, self.tokenizer)
        self.loader = batch_loader(config, runtime, self.train_data, self.start.consumed_samples)
        self.checkpointer = Checkpointer(config, self.state)
        self.clock = EtaClock(self.start.iteration + 1, t.train_iters)
        self.skipped_in_a_row = 0

    def train(self) -> TrainResult:
        config, t, log, result = self.config, self.config.training, self.log, self.result
        if self.start.finished:
            log.say(
                f"{config.name} is already at step {self.start.iteration} (training.train_iters={t.train_iters}): "
                "nothing to train; raise training.train_iters to continue"
            )
            result.already_done = True
            log.close()
            return result
        log.say(describe_run(config, self.runtime, self.start.iteration + 1))
        # The signal window covers the final validation and save too: a SIGTERM there lets them finish
        # (the handler only records it), and the launch then exits 75 like any signal-triggered save.
        with StopSignals(self.runtime, t.exit_signal) as signals:
            for step in range(self.start.iteration + 1, t.train_iters + 1):
                self.step(step)
                if step == t.train_iters:
                    break
                if self.validator.due(step):
                    self.validate(step)
                stop = stop_reason(step, t, signals)
                if self.checkpointer.due(step, stopping=stop is not None):
                    self.save(step)
                if stop:
                    result.stopped_by = signals.name() if stop.startswith("on ") else None
                    kept = (
                        "relaunch to resume"
                        if self.checkpointer.enabled
                        else "no checkpoint.save, so these steps are not kept"
                    )
                    log.say(f"stopping after step {step} {stop}; {kept}")
                    log.close()
                    return result
            self.validate(result.iterations)
            if self.checkpointer.due(result.iterations, last=True):
                self.save(result.iterations)
            if signals.agreed():  # received during the final validation or save, which both completed
                result.stopped_by = signals.name()
                log.say(f"{signals.name()} received during the final save; the run is complete")
        log.say(self.ledger.summary())
        log.say(
            f"done: {config.name} trained to step {result.iterations} ({result.consumed_samples:,} samples); "
            f"validation perplexity {result.validation[-1]['perplexity']:.2f}"
            + (f"; checkpoint {result.checkpoint}" if result.checkpoint else "")
        )
        log.close()
        return result

    def step(self, step: int) -> dict:
        """One optimizer step, its bookkeeping and its log line."""
        config, t, runtime = self.config, self.config.training, self.runtime
        started = time.perf_counter()
        outcome = train_step(self.state, [b.to(runtime.device) for b in self.loader.next_step()], runtime)
        in_a_row = self.skipped_in_a_row + 1 if outcome.skipped else 0
        self.skipped_in_a_row = check_skipped(outcome, step, in_a_row, t, self.log)
        if not outcome.skipped:
            self.state.scheduler.step(increment=1)
        consumed = self.loader.consumed_samples
        entry = step_entry(config, self.state, step, outcome, time.perf_counter() - started, consumed)
        self.ledger.add(t.global_batch_size * config.data.seq_length)
        self.result.record(entry)
        self.result.iterations, self.result.consumed_samples = step, consumed
        show = step % config.logging.log_interval == 0 or step == t.train_iters
        line = step_line(entry, self.ledger, self.train_data) + " | " + self.clock.describe(step) if show else None
        self.log.train(entry, line)
        return entry

    def validate(self, step: int) -> None:
        entry = self.validator(step)
        self.result.record_validation(entry)
        self.log.validation({**entry, "tokens_seen": self.loader.consumed_samples * self.config.data.seq_length})

    def save(self, step: int) -> None:
        self.result.checkpoint = self.checkpointer.save(step, self.loader.consumed_samples, self.ledger.phases)
        self.log.say(f"saved checkpoint {self.result.checkpoint}")


def train(config: TrainConfig, runtime: Runtime) -> TrainResult:
    """``megatron-plm train``: one launch of the run ``config`` describes (resuming where it stopped)."""
    return Trainer(config, runtime).train()


def check_skipped(outcome, step: int, in_a_row: int, t, log: RunLog) -> int:
    """Report a skipped update; stop the run (no checkpoint) after ``training.max_skipped_steps`` in a row."""
    if outcome.skipped:
        log.say(f"step {step}: non-finite loss ({outcome.loss}); update skipped")
        if in_a_row >= t.max_skipped_steps:
            raise TrainingStopped(
                f"{in_a_row} consecutive steps with a non-finite loss (last at step {step}); "
                "stopped without saving. Lower optimizer.lr or check the data."
            )
    return in_a_row


def stop_reason(step: int, t, signals: StopSignals) -> str | None:
    """Why this launch stops after ``step`` (before ``train_iters``), or None. Collective (the signal check)."""
    if signals.agreed():
        return f"on {signals.name()}"
    if t.exit_interval and step % t.exit_interval == 0:
        return "(training.exit_interval)"
    return None


def describe_run(config: TrainConfig, runtime: Runtime, first_step: int) -> str:
    p, t = runtime.parallel, config.training
    return (
        f"{config.name}: {config.objective.upper()} {config.model.num_layers} layers x {config.model.hidden_size}, "
        f"steps {first_step}..{t.train_iters}, global batch {t.global_batch_size} x "
        f"{config.data.seq_length} tokens; TP {p.tensor_model_parallel_size} x PP {p.pipeline_model_parallel_size} "
        f"x DP {runtime.data_parallel_size} on {runtime.device.type if runtime.on_gpu else 'cpu'}"
    )


def step_entry(
    config: TrainConfig, state: TrainingState, step: int, outcome, seconds: float, consumed_samples: int
) -> dict:
    """The metrics record of one step (``tokens`` are supervised tokens; ``tokens_seen`` all tokens so far)."""
    processed = config.training.global_batch_size * config.data.seq_length
    return {
        "step": step,
        "loss": outcome.loss,
        "perplexity": math.exp(min(outcome.loss, 50)),
        "lr": state.optimizer.param_groups[0]["lr"],
        "grad_norm": outcome.grad_norm,
        "tokens": outcome.tokens,
        "skipped": outcome.skipped,
        "seconds": seconds,
        "tokens_per_s": processed / seconds,
        "samples": consumed_samples,
        "tokens_seen": consumed_samples * config.data.seq_length,
    }


def step_line(entry: dict, ledger: ComputeLedger, train_data) -> str:
    line = (
        f"step {entry['step']:>6} | loss {entry['loss']:.4f} | ppl {entry['perplexity']:.2f} | "
        f"lr {entry['lr']:.3e} | grad norm {entry['grad_norm'] or float('nan'):.3f} | "
        f"{entry['tokens_per_s']:,.0f} tokens/s | samples {entry['samples']:,}"
    )
    rates = ledger.rates(entry["tokens_per_s"])
    if "tflops_per_gpu" in rates:
        line += f" | {rates['tflops_per_gpu']:.1f} TFLOP/s/GPU" + (
            f" | MFU {rates['mfu']:.1%}" if "mfu" in rates else ""
        )
    epochs = epochs_per_source(train_data, entry["samples"])
    return line + " | epochs " + ", ".join(f"{Path(name).name} {value:.3f}" for name, value in epochs.items())
