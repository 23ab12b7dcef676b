"""A run's data: its train and valid datasets, and the batch loader every rank draws from.

One tokenizer serves the whole run (loaded once by the trainer): the model's vocabulary, the corpora's
check, and validation's per-residue figures."""

from __future__ import annotations

from megatron_plm.data.samples.builder import DataBuilder
from megatron_plm.data.samples.loader import BatchLoader
from megatron_plm.data.samples.splits import Split
from megatron_plm.runtime.distributed import Runtime
from megatron_plm.training.config import TrainConfig


def build_datasets(config: TrainConfig, tokenizer=None):
    """The train split sized for ``train_iters`` global batches, and the valid split for one validation."""
    t = config.training
    builder = DataBuilder(config.data, config.objective, tokenizer)
    return (
        builder.build(Split.TRAIN, t.train_iters * t.global_batch_size),
        builder.build(Split.VALID, t.eval_iters * t.global_batch_size),
    )


def batch_loader(config: TrainConfig, runtime: Runtime, dataset, consumed_samples: int = 0) -> BatchLoader:
    """This rank's loader over ``dataset``: global batches of ``training.global_batch_size`` samples from
    ``consumed_samples`` on, cut into its micro-batches."""
    t = config.training
    return BatchLoader(
        dataset,
        t.global_batch_size,
        t.micro_batch_size,
        runtime.dp_rank,
        runtime.data_parallel_size,
        causal=config.objective == "clm",
        consumed_samples=consumed_samples,
    )
