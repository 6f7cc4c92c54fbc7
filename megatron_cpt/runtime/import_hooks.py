"""The one mechanism behind this package's import hooks (``deferred_compile``, ``cpu_emulation``):
a loader that runs a module's own code, then patches the module before anyone can use it."""

from __future__ import annotations

import importlib.abc
from typing import Callable


class PatchAfterLoad(importlib.abc.Loader):
    def __init__(self, inner: importlib.abc.Loader, patch: Callable[[object], None]):
        self._inner = inner
        self._patch = patch

    def create_module(self, spec):
        return self._inner.create_module(spec)

    def exec_module(self, module):
        self._inner.exec_module(module)
        self._patch(module)

    def __getattr__(self, name):
        return getattr(self._inner, name)
