"""The CPU shim: what it redirects, and that it leaves torch exactly as it found it."""

import pytest
import torch

from megatron_plm.runtime import cpu

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU shim is only for machines without a GPU")


def test_cuda_device_arguments_land_on_cpu():
    with cpu.cpu_runtime():
        a = torch.zeros(3, device="cuda")
        b = torch.ones(2, device=torch.device("cuda", 0))
        c = torch.empty(4, device=torch.cuda.current_device())
        d = torch.arange(3).cuda()
        e = torch.arange(3).to("cuda:0")
    assert {t.device.type for t in (a, b, c, d, e)} == {"cpu"}
    assert torch.equal(d, torch.arange(3))


def test_tensor_type_reports_cuda_names_for_megatron_optimizers():
    with cpu.cpu_runtime():
        assert torch.zeros(1).type() == "torch.cuda.FloatTensor"
        assert torch.zeros(1, dtype=torch.bfloat16).type() == "torch.cuda.BFloat16Tensor"
        # type(dtype) still converts.
        assert torch.zeros(1).type(torch.float64).dtype == torch.float64
    assert torch.zeros(1).type() == "torch.FloatTensor"


def test_install_and_uninstall_restore_torch():
    originals = (torch.cuda.current_device, torch.cuda.get_rng_state, torch.cuda.manual_seed)
    with cpu.cpu_runtime():
        assert cpu.is_installed()
        assert torch.cuda.current_device() == 0
    assert not cpu.is_installed()
    assert (torch.cuda.current_device, torch.cuda.get_rng_state, torch.cuda.manual_seed) == originals
    assert not torch.overrides._get_current_function_mode_stack()
    with pytest.raises((AssertionError, RuntimeError), match="CUDA"):
        torch.zeros(1, device="cuda")  # a CPU build of torch refuses again once the shim is gone


def test_megatron_rng_tracker_forks_independent_streams():
    """The TP-region RNG stream must differ from the default stream and be reproducible."""
    from megatron.core.tensor_parallel import random as mcore_random

    def draws(seed):
        mcore_random.initialize_rng_tracker(force_reset=True)
        tracker = mcore_random.get_cuda_rng_tracker()
        tracker.reset()
        torch.cuda.manual_seed(seed)
        tracker.add("model-parallel-rng", seed + 2718)
        with tracker.fork("model-parallel-rng"):
            inside = torch.rand(4)
        outside = torch.rand(4)
        return inside, outside

    with cpu.cpu_runtime():
        first = draws(5)
        second = draws(5)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert not torch.equal(first[0], first[1])
