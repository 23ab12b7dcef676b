"""One optimizer step through megatron-core's pipeline schedules.

The forward-step / loss-function contract is megatron-core's
(``get_forward_backward_func``): the loss function returns the *sum* of token
losses, the number of supervised tokens, and a report; with
``calculate_per_token_loss`` megatron-core divides the gradients once by the global
token count (all microbatches, all data-parallel ranks), so every supervised token
weighs the same whatever the layout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import torch

from megatron_plm.data.samples.batch import Batch
from megatron_plm.runtime.distributed import Runtime
from megatron_plm.training.build import TrainingState

LOSS_KEY = "lm loss"


def _loss_from_token_losses(loss_mask: torch.Tensor):
    def loss_func(token_losses: torch.Tensor):
        # token_losses: [b, s] cross-entropy per position from GPTModel(labels=...).
        mask = loss_mask.to(token_losses.dtype)
        loss_sum = (token_losses.float() * mask.float()).sum()
        num_tokens = loss_mask.sum().to(torch.int)
        return loss_sum, num_tokens, {LOSS_KEY: torch.stack([loss_sum.detach(), num_tokens.float()])}

    return loss_func


def forward_step(data_iterator, model):
    batch: Batch = next(data_iterator)
    token_losses = model(**batch.model_inputs(), labels=batch.labels)
    return token_losses, _loss_from_token_losses(batch.loss_mask)


@dataclass(frozen=True)
class StepResult:
    loss: float
    """Mean loss per supervised token over the global batch."""
    tokens: int
    """Supervised tokens in the global batch."""
    grad_norm: float | None
    skipped: bool


def reduce_loss_reports(reports: list[dict], runtime: Runtime) -> tuple[float, int]:
    """Sum the (loss_sum, tokens) reports of the last stage over microbatches and DP ranks,
    then share the result with every rank (other pipeline stages hold no reports)."""
    total = torch.zeros(2, dtype=torch.float64, device=runtime.device)  # NCCL reduces device tensors only
    for report in reports:
        total += report[LOSS_KEY].double()
    groups = runtime.process_groups
    torch.distributed.all_reduce(total, group=groups.dp_cp)
    if runtime.parallel.pipeline_model_parallel_size > 1:
        last_stage_rank = torch.distributed.get_global_rank(
            groups.pp, runtime.parallel.pipeline_model_parallel_size - 1
        )
        torch.distributed.broadcast(total, src=last_stage_rank, group=groups.pp)
    loss_sum, tokens = total.tolist()
    return (loss_sum / tokens if tokens else float("nan")), int(tokens)


def _forward_backward(state: TrainingState, microbatches: list[Batch], *, forward_only: bool) -> list[dict]:
    from megatron.core.pipeline_parallel import get_forward_backward_func

    if state.packed_sequences:
        microbatches = [batch.pack() for batch in microbatches]
    first = microbatches[0]
    return get_forward_backward_func()(
        forward_step_func=forward_step,
        data_iterator=iter(microbatches),
        model=state.model,
        num_microbatches=len(microbatches),
        seq_length=first.tokens.shape[1],
        micro_batch_size=first.tokens.shape[0],
        forward_only=forward_only,
    )


def train_step(state: TrainingState, microbatches: Iterable[Batch], runtime: Runtime) -> StepResult:
    """Forward and backward over this rank's microbatches, then one optimizer step.

    A non-finite loss or gradient norm skips the update (parameters and optimizer state are left
    untouched), so a bad batch can never poison the weights or a later checkpoint.
    """
    microbatches = list(microbatches)
    for chunk in state.model:
        chunk.zero_grad_buffer()
    state.optimizer.zero_grad()
    reports = _forward_backward(state, microbatches, forward_only=False)
    loss, tokens = reduce_loss_reports(reports, runtime)
    found_inf, grad_norm = optimizer_step(state.optimizer, finite=math.isfinite(loss))
    return StepResult(loss=loss, tokens=tokens, grad_norm=grad_norm, skipped=found_inf)


@torch.no_grad()
def optimizer_step(optimizer, *, finite: bool = True) -> tuple[bool, float]:
    """megatron-core's ``optimizer.step()`` from its pieces, with one gradient-norm all-reduce: the
    norm that decides whether to skip is the norm that clips. Returns ``(skipped, grad norm)``."""
    from megatron.core.optimizer.clip_grads import clip_grad_by_total_norm_fp32

    found_inf = optimizer.prepare_grads()  # main grads ready, inf/nan checked (mixed precision)
    grad_norm = float(optimizer.get_grad_norm())
    if found_inf or not finite or not math.isfinite(grad_norm):
        optimizer.zero_grad()
        return True, grad_norm
    for part in getattr(optimizer, "chained_optimizers", [optimizer]):
        params = part.get_parameters()
        if part.config.clip_grad > 0 and params and not getattr(part, "is_stub_optimizer", False):
            clip_grad_by_total_norm_fp32(
                params,
                max_norm=part.config.clip_grad,
                total_norm=grad_norm,
                use_decoupled_grad=part.config.use_precision_aware_optimizer_no_fp8_or_ds_fp8,
            )
    return not optimizer.step_with_ready_grads(), grad_norm


@torch.no_grad()
def evaluate(state: TrainingState, steps: list[list[Batch]], runtime: Runtime) -> tuple[float, int]:
    """Mean loss per supervised token over the given global batches (forward only)."""
    for chunk in state.model:
        chunk.eval()
    reports = []
    try:
        for microbatches in steps:
            reports += _forward_backward(state, [b.to(runtime.device) for b in microbatches], forward_only=True)
    finally:
        for chunk in state.model:
            chunk.train()
    return reduce_loss_reports(reports, runtime)
