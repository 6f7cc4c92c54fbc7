"""A stand-in for an installed Transformer Engine on a machine without CUDA, for CPU tests.

Put ``tests/stubs`` on ``PYTHONPATH`` and ``import transformer_engine`` succeeds, as do imports
of any of its submodules and names, so megatron-core takes its Transformer Engine paths. Every
name is a class: subclassing it and reading attributes work (megatron-core does both when it
imports its TE extensions), but constructing or calling one raises ``AssertionError``, as a real TE
layer does in its constructor where CUDA is absent. Each such attempt is also appended, one name a
line, to the file named by ``TE_STUB_LOG`` when that variable is set, so a test can tell whether
anything tried to build a TE layer. The exceptions are the two TE functions that megatron-core
calls on its local (non-TE) layers whenever TE imports, and that work on the CPU in the real TE
(``_CPU_SAFE``): the QKV split of its attention, and the CPU-offload context of its transformer
block, which is a no-op unless offloading is on.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import os
import sys
import types

__version__ = "2.7.0"


def _refuse(name: str):
    log = os.environ.get("TE_STUB_LOG")
    if log:
        with open(log, "a") as handle:
            handle.write(name + "\n")
    raise AssertionError(f"{name}: TransformerEngine needs CUDA (transformer_engine stub)")


class _StubMeta(type):
    def __getattr__(cls, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _stub(f"{cls.__qualname__}.{name}")

    def __call__(cls, *args, **kwargs):
        _refuse(cls.__qualname__)


def _stub(qualname: str) -> type:
    return _StubMeta(qualname.rsplit(".", 1)[-1], (), {"__qualname__": qualname})


class _SplitAlongDim:
    @staticmethod
    def apply(tensor, dim, sizes):
        import torch

        return torch.split(tensor, sizes, dim=dim)


def _get_cpu_offload_context(enabled, *unused):
    if enabled:
        _refuse("transformer_engine.pytorch.cpu_offload.get_cpu_offload_context(enabled=True)")
    return contextlib.nullcontext(), (lambda tensor: tensor)


_CPU_SAFE = {
    "transformer_engine.pytorch.attention._SplitAlongDim": _SplitAlongDim,
    "transformer_engine.pytorch.cpu_offload.get_cpu_offload_context": _get_cpu_offload_context,
}


class _StubModule(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        qualname = f"{self.__name__}.{name}"
        return _CPU_SAFE.get(qualname) or _stub(qualname)


class _SubmoduleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Every ``transformer_engine.X.Y`` imports as a stub module."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname.startswith(__name__ + "."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        module = _StubModule(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module):
        pass


sys.meta_path.insert(0, _SubmoduleFinder())
sys.modules[__name__].__class__ = _StubModule
