"""Validation: the same ``eval_iters`` global batches of the valid split each time, so losses at
different steps compare like for like."""

from __future__ import annotations

import math

from megatron_plm.config import TrainConfig
from megatron_plm.data.loader import BatchLoader
from megatron_plm.runtime import Runtime
from megatron_plm.training.build import TrainingState
from megatron_plm.training.step import evaluate


class Validator:
    def __init__(self, config: TrainConfig, state: TrainingState, valid_data, runtime: Runtime):
        self.config, self.state, self.data, self.runtime = config, state, valid_data, runtime

    def __call__(self, step: int) -> dict:
        """Collective: the validation entry at ``step`` (loss per supervised token, perplexity)."""
        t = self.config.training
        valid = BatchLoader(self.data, t.global_batch_size, t.micro_batch_size, self.runtime.dp_rank,
                            self.runtime.data_parallel_size, causal=self.config.objective == "clm")  # fmt: skip
        loss, tokens = evaluate(self.state, [valid.next_step() for _ in range(t.eval_iters)], self.runtime)
        return {"step": step, "loss": loss, "perplexity": math.exp(loss), "tokens": tokens}
