"""A run's checkpoint directory: which checkpoints are whole, which one to resume, what to prune.

    CKPT_DIR/step_000010/      a whole checkpoint (renamed into place when every rank had written)
    CKPT_DIR/step_000020.tmp/  a write that has not finished, or never will (the writer was killed)
    CKPT_DIR/latest            the name of the newest whole checkpoint, replaced last

Only whole checkpoints are ever read: resuming prefers ``latest`` and falls back to the newest whole
``step_*`` directory. Reads the file system only (no collectives, no torch), so the Slurm batch
script's requeue decision can use it too.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Optional

LATEST = "latest"
# Where a write in progress lives (``dist_io.save_dist_checkpoint``), before its rename.
PARTIAL_SUFFIX = ".tmp"
# What model and layout wrote a checkpoint; dist_io writes it last, just before the rename.
META_FILE = "megatron_cpt.json"
_STEP_DIR = re.compile(r"^step_(\d+)$")


def checkpoint_dir(recipe) -> Path:
    """Where a recipe's run saves and resumes: ``checkpoint.dir``, else RUN_DIR/checkpoints."""
    return Path(recipe.checkpoint.dir or Path(recipe.logging.run_dir) / "checkpoints")


def step_dir_name(step: int) -> str:
    return f"step_{step:06d}"


def is_complete(directory: str | Path) -> bool:
    return (Path(directory) / META_FILE).is_file() and (Path(directory) / "metadata.json").is_file()


def whole_checkpoints(ckpt_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, directory) of every whole ``step_*`` checkpoint, oldest first."""
    return sorted((int(m.group(1)), p) for p in Path(ckpt_dir).glob("step_*")
                  if (m := _STEP_DIR.match(p.name)) and is_complete(p))


def find_resume_checkpoint(ckpt_dir: str | Path) -> Optional[Path]:
    """The newest whole checkpoint in ``ckpt_dir``, or None."""
    ckpt_dir = Path(ckpt_dir)
    marker = ckpt_dir / LATEST
    if marker.is_file():
        candidate = ckpt_dir / marker.read_text().strip()
        if is_complete(candidate):
            return candidate
    whole = whole_checkpoints(ckpt_dir)
    return whole[-1][1] if whole else None


def checkpoint_step(path: Path) -> int:
    """The step of a ``step_N`` checkpoint directory."""
    match = _STEP_DIR.match(Path(path).name)
    if not match:
        raise ValueError(f"'{path}' is not a step_N checkpoint directory")
    return int(match.group(1))


def checkpoint_bytes(path: str | Path) -> int:
    """The size of a checkpoint directory's files."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def shortage_of_space(ckpt_dir: str | Path, pending_writes: int = 0) -> Optional[str]:
    """Why the next checkpoint would not fit on ``ckpt_dir``'s file system, or None: it needs as
    much as the newest whole checkpoint (and as much again for each write still in progress)."""
    newest = find_resume_checkpoint(ckpt_dir)
    if newest is None:
        return None  # nothing to measure the next one by
    needed = checkpoint_bytes(newest) * (1 + pending_writes)
    free = shutil.disk_usage(ckpt_dir).free
    if free >= needed:
        return None
    return (f"no room for the next checkpoint in '{ckpt_dir}': {free / 1e9:.3f} GB free, the last "
            f"one ({newest.name}) took {needed / (1 + pending_writes) / 1e9:.3f} GB; free space and "
            f"run the same command again to resume from {newest.name}")


def remove_partial_writes(ckpt_dir: str | Path) -> list[str]:
    """Remove what writes that never finished left behind (``step_N.tmp``, ``latest.tmp``) and
    return their names. Only at the start of a run, before anything writes: a start is the only
    writer of its checkpoint directory."""
    removed = []
    for path in sorted(Path(ckpt_dir).glob(f"*{PARTIAL_SUFFIX}")):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path.name)
    return removed


def prune(ckpt_dir: str | Path, keep_last: int) -> None:
    """Remove all but the newest ``keep_last`` whole checkpoints."""
    for _, path in whole_checkpoints(ckpt_dir)[:-keep_last]:
        shutil.rmtree(path, ignore_errors=True)
