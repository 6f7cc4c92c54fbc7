"""Run shellcheck on a generated script (skipped without it, unless CI requires it)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest


def assert_shellcheck_clean(text: str, tmp_path: Path) -> None:
    if shutil.which("shellcheck") is None:
        if os.environ.get("MEGATRON_CPT_REQUIRE_SLURM") == "1":
            pytest.fail("shellcheck is not installed (Debian package shellcheck)")
        pytest.skip("shellcheck is not installed")
    path = tmp_path / "script.sh"
    path.write_text(text)
    proc = subprocess.run(["shellcheck", str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout
