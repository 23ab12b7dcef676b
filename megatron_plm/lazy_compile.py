"""Import megatron-core without paying for ``torch.compile`` until a compiled function is called.

megatron-core (and Transformer Engine, which it imports when present) decorate their fusion
functions with ``torch.compile`` at import time (``megatron.core.jit.jit_fuser``). The decorator
itself compiles nothing, but it imports TorchDynamo and Inductor: about 3 s of every process's
start-up on the dev machine (``import megatron.core.datasets.indexed_dataset``: 7.3 s, 4.2 s with
this), paid by every rank of every launch and by tools that only read a corpus. Our model configs
switch those fusions off, so the compile usually never happens.

:func:`install` (called when ``megatron_plm`` is imported) adds a one-shot import hook: while
``megatron.core`` is being imported, ``torch.compile(fn)`` returns a wrapper that calls the real
``torch.compile(fn)`` on its first call. What gets compiled, and how, is unchanged; only when the
compiler is imported moves. Outside that import ``torch.compile`` is never touched.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.abc
import importlib.util
import sys

TARGET = "megatron.core"


def _lazy(compile_now):
    def compile_later(model=None, **options):
        if model is None:  # used as @torch.compile(...)
            return lambda function: compile_later(function, **options)
        if not callable(model) or not hasattr(model, "__code__"):
            return compile_now(model, **options)  # a module or other callable: nothing to gain
        compiled = None

        @functools.wraps(model)
        def call(*args, **kwargs):
            nonlocal compiled
            if compiled is None:
                compiled = compile_now(model, **options)
            return compiled(*args, **kwargs)

        return call

    return compile_later


@contextlib.contextmanager
def lazy_torch_compile():
    """``torch.compile`` applied to plain functions inside this block compiles on their first call."""
    import torch

    compile_now = torch.compile
    torch.compile = _lazy(compile_now)
    try:
        yield
    finally:
        torch.compile = compile_now


class _LazyCompileLoader(importlib.abc.Loader):
    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        with lazy_torch_compile():
            self.loader.exec_module(module)


class _MegatronCoreFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname != TARGET:
            return None
        uninstall()  # one shot: the spec below comes from the finders that follow
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            spec.loader = _LazyCompileLoader(spec.loader)
        return spec


def install() -> None:
    """Hook the first import of megatron-core (nothing to do if it is already imported)."""
    if TARGET not in sys.modules and not any(isinstance(f, _MegatronCoreFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _MegatronCoreFinder())


def uninstall() -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _MegatronCoreFinder)]
