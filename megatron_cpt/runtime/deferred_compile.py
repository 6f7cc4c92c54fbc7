"""megatron-core's ``torch.compile`` decorators, applied at a kernel's first call instead of at import.

megatron-core 0.16 decorates about twenty fused kernels with ``jit_fuser`` (``megatron/core/jit.py``:
``torch.compile`` on torch >= 2.2) when its modules are imported. Compilation itself waits for a
kernel's first call, but the decorator imports TorchDynamo and Inductor right away: about 2 s of
CPU in every process that imports megatron-core (the CLI, each rank, each conversion), whether or
not any of those kernels ever runs. None runs on the dense-GPT paths of this product unless a
fusion flag asks for it.

``install()`` (called by ``megatron_cpt/__init__.py``, before anything imports megatron-core)
replaces ``jit_fuser`` as soon as ``megatron.core.jit`` is loaded by a decorator that calls the
real ``torch.compile`` on the kernel at its first call, with the same arguments. What gets compiled,
and when, is unchanged. Imports nothing itself.
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.machinery
import sys

from megatron_cpt.runtime.import_hooks import PatchAfterLoad

_JIT_MODULE = "megatron.core.jit"


def deferred(compile_fn):
    """``compile_fn`` (``torch.compile``) applied at the decorated function's first call."""

    def decorator(fn=None, **options):
        if fn is None:  # used as ``@jit_fuser(...)``
            return lambda inner: decorator(inner, **options)
        compiled = []

        @functools.wraps(fn)
        def first_call_compiles(*args, **kwargs):
            if not compiled:
                compiled.append(compile_fn(fn, **options))
            return compiled[0](*args, **kwargs)

        return first_call_compiles

    return decorator


class _DeferJitFuser(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname != _JIT_MODULE:
            return None
        # The file on sys.path, as the default finder sees it (other finders may consult this one).
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        if spec is not None and spec.loader is not None:
            spec.loader = PatchAfterLoad(spec.loader, _defer_jit_fuser)
        return spec


def _defer_jit_fuser(module) -> None:
    import torch

    if module.jit_fuser is torch.compile:
        module.jit_fuser = deferred(torch.compile)


def install() -> None:
    """Defer megatron-core's ``jit_fuser`` in this process. Idempotent; a no-op once megatron-core
    is imported."""
    if _JIT_MODULE in sys.modules or any(isinstance(f, _DeferJitFuser) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _DeferJitFuser())
