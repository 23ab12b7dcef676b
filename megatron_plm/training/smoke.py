"""A short, real CLM training run on a FASTA file or a preprocessed corpus: the install and layout check.

It trains a small causal protein LM through the full megatron-core stack (parallel
state, TP/PP model chunks, DDP, the pipeline schedule, the optimizer) on real
sequences, and prints the loss per step. Run it on one process or under
``torchrun`` with any TP/PP layout; with ``--load-weights`` every layout starts
from the same weights and so must print the same losses.

Samples are one protein each, framed ``1 ... 2`` (N->C), cropped to the context
and right-padded; padding carries no loss. (Packed samples with document
boundaries belong to the datasets, not to this check.)
"""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from megatron_plm.data.corpus import Corpus
from megatron_plm.data.fasta import read_fasta
from megatron_plm.data.tokenizer import ProteinTokenizer
from megatron_plm.models.config import ModelConfig
from megatron_plm.runtime import ParallelConfig, Runtime
from megatron_plm.training.build import OptimizerConfig
from megatron_plm.data.batch import Batch


def tiny_model_config(seq_length: int = 128) -> ModelConfig:
    """2 layers x 64 wide: seconds per step on two CPU cores."""
    return ModelConfig(num_layers=2, hidden_size=64, num_attention_heads=4, seq_length=seq_length)


@dataclass(kw_only=True)
class SmokeConfig:
    fasta: Path | None = None
    """FASTA of training sequences (plain or gzip)."""
    data_prefix: Path | None = None
    """Or a corpus written by ``megatron-plm preprocess`` (PREFIX.bin/.idx)."""
    steps: int = 20
    global_batch_size: int = 8
    """Sequences per optimizer step, over all data-parallel ranks."""
    micro_batch_size: int = 2
    num_sequences: int = 512
    """Read this many sequences from the start of the file and cycle through them."""
    seed: int = 1234
    model: ModelConfig = field(default_factory=tiny_model_config)
    optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(lr=3e-3))
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    load_weights: Path | None = None
    """Start from these weights (a checkpoint of this model saved at any layout)."""
    save_initial_weights: Path | None = None
    """Save the freshly initialised weights here before the first step."""
    metrics_json: Path | None = None
    """Write per-step metrics here (rank 0)."""

    def validate(self, data_parallel_size: int) -> None:
        if (self.fasta is None) == (self.data_prefix is None):
            raise ValueError("give exactly one of --fasta or --data-prefix")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        per_rank, remainder = divmod(self.global_batch_size, data_parallel_size)
        if remainder or per_rank % self.micro_batch_size:
            raise ValueError(
                f"global_batch_size ({self.global_batch_size}) must be a multiple of micro_batch_size "
                f"({self.micro_batch_size}) x data-parallel size ({data_parallel_size})"
            )


def load_clm_examples(cfg: SmokeConfig, tokenizer: ProteinTokenizer) -> list[np.ndarray]:
    """The first ``cfg.num_sequences`` sequences, framed for CLM and cropped to ``seq_length + 1`` tokens."""
    if cfg.data_prefix is not None:
        dataset = Corpus.open(cfg.data_prefix).indexed_dataset()
        residues = (dataset[i] for i in range(min(cfg.num_sequences, len(dataset))))
    else:
        records = itertools.islice(read_fasta(cfg.fasta), cfg.num_sequences)
        residues = (tokenizer.encode(record.sequence) for record in records)
    return [tokenizer.frame_clm(ids)[: cfg.model.seq_length + 1] for ids in residues]


def collate_clm(examples: list[np.ndarray], seq_length: int, pad_id: int) -> Batch:
    padded = np.full((len(examples), seq_length + 1), pad_id, dtype=np.int64)
    for row, example in enumerate(examples):
        padded[row, : len(example)] = example
    tokens = torch.from_numpy(padded[:, :-1].copy())
    labels = torch.from_numpy(padded[:, 1:].copy())
    positions = torch.arange(seq_length).unsqueeze(0).expand(len(examples), -1).contiguous()
    return Batch(tokens=tokens, labels=labels, loss_mask=(labels != pad_id).float(), position_ids=positions)


def microbatches_for_step(
    examples: list[np.ndarray], step: int, cfg: SmokeConfig, runtime: Runtime, pad_id: int
) -> list[Batch]:
    """This data-parallel rank's share of the step's global batch, cut into microbatches."""
    start = step * cfg.global_batch_size
    global_batch = [examples[(start + i) % len(examples)] for i in range(cfg.global_batch_size)]
    per_rank = cfg.global_batch_size // runtime.data_parallel_size
    mine = global_batch[runtime.dp_rank * per_rank : (runtime.dp_rank + 1) * per_rank]
    return [
        collate_clm(mine[i : i + cfg.micro_batch_size], cfg.model.seq_length, pad_id)
        for i in range(0, per_rank, cfg.micro_batch_size)
    ]


def run_smoke(cfg: SmokeConfig, runtime: Runtime) -> list[dict]:
    """Train for ``cfg.steps`` steps; returns the per-step metrics (identical on every rank)."""
    from megatron_plm.checkpoint.weights import load_model_weights, save_model_weights
    from megatron_plm.training.build import build_training_state
    from megatron_plm.training.step import train_step

    cfg.validate(runtime.data_parallel_size)
    tokenizer = ProteinTokenizer()
    cfg.model.vocab_size = tokenizer.vocab_size
    examples = load_clm_examples(cfg, tokenizer)
    state = build_training_state(cfg.model, cfg.optimizer, runtime)
    if cfg.load_weights is not None:
        load_model_weights(state.unwrapped(), cfg.load_weights)
    if cfg.save_initial_weights is not None:
        save_model_weights(state.unwrapped(), cfg.save_initial_weights)

    def say(text: str) -> None:
        if runtime.is_main_process:
            print(text, flush=True)

    parallel = runtime.parallel
    say(
        f"megatron_plm smoke run: {len(examples)} sequences from {cfg.fasta or cfg.data_prefix}, "
        f"world {runtime.world_size} = TP {parallel.tensor_model_parallel_size} x "
        f"PP {parallel.pipeline_model_parallel_size} x DP {runtime.data_parallel_size}, "
        f"device {runtime.device.type}{' (CPU shim)' if runtime.cpu_shim else ''}"
    )
    say(f"{'step':>5} {'loss':>9} {'ppl':>8} {'grad_norm':>10} {'tokens':>7} {'tokens/s':>9}")
    metrics = []
    for step in range(cfg.steps):
        started = time.perf_counter()
        result = train_step(state, microbatches_for_step(examples, step, cfg, runtime, tokenizer.pad), runtime)
        elapsed = time.perf_counter() - started
        row = {
            "step": step + 1,
            "loss": result.loss,
            "grad_norm": result.grad_norm,
            "tokens": result.tokens,
            "seconds": elapsed,
        }
        metrics.append(row)
        say(
            f"{step + 1:>5} {result.loss:>9.4f} {np.exp(result.loss):>8.2f} "
            f"{(result.grad_norm or float('nan')):>10.4f} {result.tokens:>7} {result.tokens / elapsed:>9.0f}"
        )
    if cfg.metrics_json is not None and runtime.is_main_process:
        payload = {"config": {"parallel": asdict(parallel), "steps": cfg.steps}, "steps": metrics}
        cfg.metrics_json.write_text(json.dumps(payload, indent=2))
    return metrics
