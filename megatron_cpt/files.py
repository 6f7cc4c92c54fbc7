"""Files written whole or not at all: the content goes to a temporary name next to the target,
which is then renamed over it, so a reader (or a rerun after a crash) never sees half a file.

    write_atomic(run_dir / "job.sbatch", script, mode=0o755)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional


def write_atomic(path: str | Path, data: str | bytes, mode: Optional[int] = None) -> Path:
    """Write ``data`` (text as UTF-8) to ``path`` through a rename; ``mode``: its permissions
    (default: the umask's)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        if isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            tmp.write_text(data, encoding="utf-8")
        if mode is not None:
            tmp.chmod(mode)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
