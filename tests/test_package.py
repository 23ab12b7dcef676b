import subprocess
import sys

from conftest import REPO


def test_import_has_no_side_effects():
    """Importing the package must not import megatron-core nor patch torch."""
    code = (
        "import sys, torch; before = torch.cuda.current_device; "
        "import megatron_plm; "
        "assert 'megatron.core' not in sys.modules, 'megatron.core imported'; "
        "assert torch.cuda.current_device is before, 'torch.cuda patched'; "
        "assert not torch.overrides._get_current_function_mode_stack(), 'a TorchFunctionMode is active'; "
        "print('clean')"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "clean"


def test_cli_lists_commands():
    out = subprocess.run([sys.executable, "-m", "megatron_plm", "--help"], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert all(command in out.stdout for command in ("env", "preprocess", "train"))


def test_cli_env_reports_this_machine():
    import torch

    out = subprocess.run([sys.executable, "-m", "megatron_plm", "env"], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert torch.__version__ in out.stdout
    assert ("gloo" in out.stdout) == (not torch.cuda.is_available())
