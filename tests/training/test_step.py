"""The optimizer step with one gradient-norm reduction updates exactly as megatron-core's ``optimizer.step()``."""

import torch

from conftest import REPO
from megatron_plm.training.config import load_config
from megatron_plm.runtime.distributed import initialize
from megatron_plm.training.build import build_run
from megatron_plm.training.step import _forward_backward, optimizer_step


def test_one_reduction_matches_megatron_cores_step(sample_corpus):
    from megatron_plm.data.samples.builder import DataBuilder
    from megatron_plm.data.samples.loader import BatchLoader
    from megatron_plm.data.samples.splits import Split

    config = load_config(
        REPO / "examples/configs/tiny_clm.yaml",
        [
            f"data.sources=[{{prefix: {sample_corpus}}}]",
            "data.seq_length=64",
            "training.global_batch_size=4",
            "training.micro_batch_size=4",
            "optimizer.clip_grad=0.05",  # small enough that clipping acts
        ],
    )
    data = DataBuilder(config.data, config.objective).build(Split.TRAIN, 4)
    batch = BatchLoader(data, 4, 4, 0, 1, causal=True).next_step()
    params, norms, calls = [], [], []
    for ours in (True, False):
        with initialize(config.parallel, seed=config.training.seed) as runtime:
            state = build_run(config, runtime)
            _forward_backward(state, [b.to(runtime.device) for b in batch], forward_only=False)
            all_reduce = torch.distributed.all_reduce
            counted = []
            torch.distributed.all_reduce = lambda *a, **k: counted.append(1) or all_reduce(*a, **k)
            try:
                if ours:
                    skipped, norm = optimizer_step(state.optimizer)
                else:
                    success, norm, _ = state.optimizer.step()
                    skipped = not success
            finally:
                torch.distributed.all_reduce = all_reduce
            assert not skipped
            norms.append(float(norm))
            calls.append(len(counted))
            params.append([p.detach().clone() for p in state.unwrapped()[0].parameters()])
    assert norms[0] == norms[1] > 0.05
    assert all(torch.equal(a, b) for a, b in zip(*params))
    # megatron-core's step reduces the norm once; train_step used to reduce it once more before calling it.
    assert calls[0] == calls[1] == 1
