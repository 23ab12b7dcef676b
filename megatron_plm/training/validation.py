"""Validation: the same ``eval_iters`` global batches of the valid split each time, so losses at
different steps compare like for like."""

from __future__ import annotations

import math

import numpy as np

from megatron_plm.training.config import TrainConfig
from megatron_plm.runtime.distributed import Runtime
from megatron_plm.training.build import TrainingState
from megatron_plm.training.data import batch_loader
from megatron_plm.training.step import evaluate


class Validator:
    def __init__(self, config: TrainConfig, state: TrainingState, valid_data, runtime: Runtime, tokenizer=None):
        self.config, self.state, self.data, self.runtime = config, state, valid_data, runtime
        self.tokenizer = tokenizer
        """The run's tokenizer; a subword one also gets per-residue figures."""
        self.residues: int | None = None
        """Supervised residues of the validation samples, for per-residue figures of subword runs."""

    def due(self, step: int) -> bool:
        """Whether to validate after ``step`` (every ``training.eval_interval`` steps; the trainer also
        validates once at the end)."""
        interval = self.config.training.eval_interval
        return bool(interval) and step % interval == 0

    def __call__(self, step: int) -> dict:
        """Collective: the validation entry at ``step`` (loss per supervised token, perplexity)."""
        t = self.config.training
        valid = batch_loader(self.config, self.runtime, self.data)
        loss, tokens = evaluate(self.state, [valid.next_step() for _ in range(t.eval_iters)], self.runtime)
        entry = {"step": step, "loss": loss, "perplexity": math.exp(loss), "tokens": tokens}
        if self.config.data.tokenizer is not None:  # per residue too, so runs with different vocabularies compare
            if self.tokenizer is None:
                from megatron_plm.data.tokenizers.subword import load_tokenizer

                self.tokenizer = load_tokenizer(self.config.data.tokenizer)
            if self.residues is None:
                self.residues = supervised_residues(self.data, t.eval_iters * t.global_batch_size, self.tokenizer)
            per_residue = loss * tokens / self.residues
            entry.update(
                loss_per_residue=per_residue, perplexity_per_residue=math.exp(per_residue), residues=self.residues
            )
        return entry


def supervised_residues(dataset, num_samples: int, tokenizer) -> int:
    """Residues under the supervised labels of the first ``num_samples`` samples (framing tokens count
    one): the denominator of per-residue loss. Every rank computes it over all the samples."""
    from megatron_plm.data.tokenizers.subword import token_residues

    per_token = token_residues(tokenizer)
    total = 0
    for index in range(num_samples):
        sample = dataset[index]
        total += int((per_token[np.asarray(sample["labels"])] * (np.asarray(sample["loss_mask"]) > 0)).sum())
    return total
