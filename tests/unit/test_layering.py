"""Modules stay on their floor: ``profile`` reads a run's files through ``megatron_cpt.run_files``
and imports nothing from ``train``."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import megatron_cpt.profile


def test_profile_imports_nothing_from_train():
    modules = [f"megatron_cpt.profile.{m.name}"
               for m in pkgutil.iter_modules(megatron_cpt.profile.__path__)]
    assert "megatron_cpt.profile.report" in modules
    code = ("import importlib, sys\n"
            f"for name in {modules!r}:\n"
            "    importlib.import_module(name)\n"
            "print(sorted(m for m in sys.modules if m.startswith('megatron_cpt.train')))\n")
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True,
                         text=True, check=True, timeout=120).stdout
    assert out.strip() == "[]", out
