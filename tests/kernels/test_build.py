"""Every kernel of csrc/ is built wherever nvcc is (the CPU machines included), so a kernel that no
longer compiles fails here instead of silently falling back to its reference."""

import ast
import importlib
import os
import shutil

import pytest

KERNELS = ("rotary", "bias_gelu")


def nvcc_found() -> bool:
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or "/usr/local/cuda"
    return bool(shutil.which("nvcc")) or os.path.exists(os.path.join(home, "bin", "nvcc"))


@pytest.mark.skipif(not nvcc_found(), reason="no nvcc here: the extensions are optional and not built")
@pytest.mark.parametrize("kernel", KERNELS)
def test_kernel_extension_was_built(kernel):
    module = importlib.import_module(f"megatron_plm.kernels.{kernel}")
    assert module.kernel_available(), f"megatron_plm.kernels._{kernel}_cuda was not built; see pip install -e . -v"


def test_setup_declares_every_kernel():
    from conftest import REPO

    declared = next(line for line in (REPO / "setup.py").read_text().splitlines() if line.startswith("CUDA_KERNELS"))
    assert ast.literal_eval(declared.split("=", 1)[1].strip()) == KERNELS
    for kernel in KERNELS:
        assert (REPO / "csrc" / kernel / f"{kernel}.cu").exists()
        assert (REPO / "csrc" / kernel / f"{kernel}_binding.cpp").exists()
