"""megatron-core imported through megatron_plm: torch.compile's import cost deferred, behaviour kept."""

import subprocess
import sys
import textwrap

import torch

from megatron_plm import lazy_compile


def test_decorated_functions_compile_on_their_first_call(monkeypatch):
    compiled = []

    def record(model=None, **options):
        compiled.append((model, options))
        return lambda *args: ("compiled", model(*args))

    monkeypatch.setattr(torch, "compile", record)
    with lazy_compile.lazy_torch_compile():
        assert torch.compile is not record

        @torch.compile
        def double(x):
            return 2 * x

        @torch.compile(dynamic=True)
        def triple(x):
            return 3 * x

    assert torch.compile is record and compiled == []  # restored; nothing compiled yet
    assert double.__name__ == "double"
    assert double(2) == ("compiled", 4) and double(3) == ("compiled", 6)
    assert triple(1) == ("compiled", 3)
    assert [(model.__name__, options) for model, options in compiled] == [("double", {}), ("triple", {"dynamic": True})]


def test_importing_megatron_core_through_the_package_leaves_the_compiler_unloaded():
    script = textwrap.dedent(
        """
        import sys
        import megatron_plm
        assert "torch" not in sys.modules  # the package itself stays light
        import torch
        real = torch.compile
        from megatron.core import jit
        from megatron.core.fusions import fused_bias_gelu
        assert torch.compile is real, "torch.compile left patched"
        assert "torch._inductor" not in sys.modules and "torch._dynamo.convert_frame" not in sys.modules
        assert jit.jit_fuser.__qualname__.startswith("_lazy"), jit.jit_fuser
        assert fused_bias_gelu.bias_gelu.__wrapped__.__code__.co_name == "bias_gelu"
        assert not any(type(f).__name__ == "_MegatronCoreFinder" for f in sys.meta_path)  # one shot
        print("ok")
        """
    )
    run = subprocess.run([sys.executable, "-W", "ignore", "-c", script], capture_output=True, text=True)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-3000:]
