"""Per-step metrics to ``RUN_DIR/metrics.jsonl`` and TensorBoard, written by one rank only."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

# Validation loss of each language (sources weighted by their training tokens), and the same per
# validation batch, a list (what the ALMR fit's bootstrap resamples; jsonl only, not TensorBoard).
LANGUAGE_LOSS = "val_loss_by_language/"
LANGUAGE_BATCH_LOSSES = "val_batch_loss_by_language/"
# Benchmark accuracy of each task (megatron_cpt.eval), and 1/0 per item, a list (resampled by the
# ALMR fit when it takes an accuracy as its objective; jsonl only).
ACCURACY = "eval_acc/"
ITEM_CORRECT = "eval_item_correct/"


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else str(value)
    return value


class MetricsWriter:
    def __init__(self, run_dir: str | Path, tensorboard: bool, enabled: bool):
        self.enabled = enabled
        self._jsonl = None
        self._tb = None
        if not enabled:
            return
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(run_dir / "metrics.jsonl", "a", buffering=1)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def write(self, step: int, values: dict[str, Any]) -> None:
        """Append the record of ``step`` (one per step)."""
        if not self.enabled:
            return
        record = {"step": step, **{k: _clean(v) for k, v in values.items()}}
        self._jsonl.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)) and value is not None and math.isfinite(value):
                    self._tb.add_scalar(key, value, step)

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
        if self._tb is not None:
            self._tb.flush()
            self._tb.close()


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The records of ``RUN_DIR/metrics.jsonl``, one per step, in file order."""
    from megatron_cpt.errors import UserError

    path = Path(run_dir) / "metrics.jsonl"
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise UserError(f"{path}: line {number} is not JSON ({exc.msg})") from None
    return records


def blocking_save_times(records: list[dict]) -> list[float]:
    """``checkpoint_save_s`` of the blocking saves: a stop's save always blocks, and a background
    save's record holds only the time to schedule it."""
    return [r["checkpoint_save_s"] for r in records
            if r.get("checkpoint_save_s") is not None and not r.get("checkpoint_background")]
