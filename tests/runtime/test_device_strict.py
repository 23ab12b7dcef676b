"""The device-strict CPU shim: it refuses, on the CPU, the mixed-device operations a GPU refuses.

The whole suite runs with ``MEGATRON_PLM_DEVICE_STRICT=1`` (tests/conftest.py), so every training,
validation and evaluation test is also a rehearsal of GPU placement; these tests pin the rules."""

import pytest
import torch
from conftest import REPO

from megatron_plm.runtime import cpu
from megatron_plm.runtime.cpu import DevicePlacementError

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU shim is only for machines without a GPU")


def test_the_suite_runs_device_strict():
    assert cpu.strict_requested(), "tests/conftest.py sets MEGATRON_PLM_DEVICE_STRICT=1 for every test"


def test_host_tensor_meeting_gpu_tensor_is_refused():
    with cpu.cpu_runtime(strict=True):
        on_gpu = torch.ones(3, device="cuda")
        with pytest.raises(DevicePlacementError, match="same device"):
            torch.zeros(3) + on_gpu
        with pytest.raises(DevicePlacementError, match="same device"):
            torch.cat([torch.zeros(3), on_gpu])


def test_accumulating_gpu_values_into_a_host_tensor_is_refused():
    """The loss-report bug of issue 27: ``total = torch.zeros(2); total += report``."""
    with cpu.cpu_runtime(strict=True):
        report = torch.stack([torch.tensor(1.5, device="cuda"), torch.tensor(3.0, device="cuda")])
        total = torch.zeros(2, dtype=torch.float64)
        with pytest.raises(DevicePlacementError, match="add_ mixes"):
            total += report.double()
        scalar = torch.zeros((), dtype=torch.float64)
        with pytest.raises(DevicePlacementError):
            scalar.add_(report.double().sum())


def test_what_cuda_allows_passes():
    with cpu.cpu_runtime(strict=True):
        x = torch.arange(6.0).cuda()
        assert x.device == torch.device("cuda", 0)  # reported where it would be, so allocations follow it
        beside = torch.zeros(6, device=x.device)
        assert (x + beside).device.type == "cuda"
        assert (x * torch.tensor(2.0)).sum().item() == 30.0  # a 0-dim host tensor is a scalar
        back = x.cpu()
        assert back.device.type == "cpu" and torch.equal(back + torch.ones(6), torch.arange(1.0, 7.0))
        moved = torch.from_numpy(back.numpy()).to(torch.device("cuda", 0))
        assert moved.device.type == "cuda"
        assert x[torch.tensor([0, 2])].tolist() == [0.0, 2.0]  # host index tensors are allowed
        y = x.to(torch.float64)
        assert y.device.type == "cuda"
    assert torch.zeros(1).device.type == "cpu"


def test_untracked_tensors_are_not_checked():
    """Tensors the shim never saw (made before it, or by autograd) are not reported as mixing."""
    before = torch.ones(3)
    with cpu.cpu_runtime(strict=True):
        assert (before + torch.ones(3, device="cuda")).tolist() == [2.0, 2.0, 2.0]


def test_host_tensor_in_a_collective_is_refused_but_gloo_groups_take_it():
    import torch.distributed as dist

    store = dist.HashStore()
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        with cpu.cpu_runtime(strict=True):
            on_host = torch.ones(2)
            with pytest.raises(DevicePlacementError, match="NCCL"):
                dist.all_reduce(on_host)
            on_gpu = torch.ones(2, device="cuda")
            dist.all_reduce(on_gpu)
            gloo = dist.new_group(ranks=[0], backend="gloo")
            dist.all_reduce(on_host, group=gloo)  # megatron-core's gloo groups are for host tensors
            assert on_host.tolist() == [1.0, 1.0]
    finally:
        dist.destroy_process_group()


def test_strict_runtime_trains_and_validates_on_a_virtual_gpu(tmp_path, sample_corpus):
    """One training step and one validation of the tiny CLM, placed as on a GPU: the runtime's device is
    ``cuda:0``, every batch and loss report goes there, and the loss is still the real one."""
    import math

    from megatron_plm.training.config import load_config
    from megatron_plm.data.samples.builder import DataBuilder
    from megatron_plm.data.samples.loader import BatchLoader
    from megatron_plm.data.samples.splits import Split
    from megatron_plm.runtime.distributed import initialize
    from megatron_plm.training.build import build_run
    from megatron_plm.training.step import evaluate, train_step

    config = load_config(
        REPO / "examples/configs/tiny_clm.yaml",
        [f"data.sources=[{{prefix: {sample_corpus}}}]", "training.train_iters=1", "training.global_batch_size=4"],
    )
    cpu.uninstall()
    with initialize(config.parallel, seed=1) as runtime:
        assert runtime.device == torch.device("cuda", 0) and not runtime.on_gpu and cpu.strict()
        state = build_run(config, runtime)
        t = config.training
        data = DataBuilder(config.data, config.objective).build(Split.TRAIN, 2 * t.global_batch_size)
        loader = BatchLoader(data, t.global_batch_size, t.micro_batch_size, 0, 1, causal=True)
        result = train_step(state, [b.to(runtime.device) for b in loader.next_step()], runtime)
        assert math.isfinite(result.loss) and result.tokens > 0 and not result.skipped
        loss, tokens = evaluate(state, [loader.next_step()], runtime)
        assert math.isfinite(loss) and tokens > 0
