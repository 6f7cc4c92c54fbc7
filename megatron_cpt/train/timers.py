"""Where a training step's time goes, measured at the step's boundaries.

``StepTimers.start(step)`` / ``stop()`` bracket one optimizer step on every rank. Inside:

- data wait: time spent in ``next()`` of the micro-batch iterator (``batches()`` wraps it);
- forward-backward: megatron-core's own ``forward-backward`` timer (its schedule sets it when
  ``TransformerConfig.timers`` is given), less the data wait and the exposed gradient sync;
- exposed gradient sync: megatron-core's ``all-grads-sync`` timer around the data-parallel
  gradient reduction in ``finalize_model_grads`` (what overlap did not hide);
- optimizer: ``phase("optimizer")`` around ``optimizer.step()``.

Every ``logging.detail_interval`` steps, the step is *sampled*: megatron-core's per-micro-batch
``forward-compute`` / ``backward-compute`` timers run too (they synchronise the GPU at each
micro-batch, so only then), giving the measured pipeline bubble: the share of forward-backward time
spent outside compute and the gradient sync (pipeline waits and transfers). The step time of every
rank is gathered as well (min, max, slowest rank). ``logging.trace_steps: [A, B]`` records a
``torch.profiler`` trace of steps A to B on every rank (Chrome trace JSON, also readable by
TensorBoard's profiler plugin) in ``RUN_DIR/trace/``.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import torch
import torch.distributed as dist


def _synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class StepTimers:
    def __init__(self, model_config, detail_interval: int, trace_steps: Optional[list[int]],
                 trace_dir: Path):
        self._config = model_config  # the TransformerConfig megatron-core's schedules read
        self._config.barrier_with_L1_time = False  # measure, never add barriers to the run
        self._detail_interval = detail_interval
        self._trace_steps = trace_steps
        self._trace_dir = trace_dir
        self._profiler = None
        self._mcore = None
        self._phases: dict[str, float] = {}
        self._start = 0.0
        self.sampled = False

    def start(self, step: int) -> None:
        """Before step ``step`` (1-based) begins."""
        from megatron.core.timers import Timers

        self.sampled = bool(self._detail_interval) and step % self._detail_interval == 0
        # A fresh set per step: level 2 adds the per-micro-batch compute timers.
        self._mcore = Timers(log_level=2 if self.sampled else 1, log_option="max")
        self._config.timers = self._mcore
        self._phases = {"data_wait": 0.0}
        if self._trace_steps and step == self._trace_steps[0]:
            self._profiler = torch.profiler.profile(record_shapes=True, with_stack=False)
            self._profiler.start()
        _synchronize()
        self._start = time.perf_counter()

    def batches(self, iterator: Iterator[dict]) -> Iterator[dict]:
        """The micro-batches of this step, with the time spent waiting for each one counted."""
        while True:
            begin = time.perf_counter()
            try:
                batch = next(iterator)
            except StopIteration:
                return
            finally:
                self._phases["data_wait"] += time.perf_counter() - begin
            yield batch

    @contextmanager
    def phase(self, name: str):
        _synchronize()
        begin = time.perf_counter()
        try:
            yield
        finally:
            _synchronize()
            self._phases[name] = self._phases.get(name, 0.0) + time.perf_counter() - begin

    def stop(self, step: int) -> dict[str, float]:
        """After step ``step``: its time and breakdown (and more on sampled steps), in seconds."""
        _synchronize()
        step_time = time.perf_counter() - self._start
        self._config.timers = None  # evaluation and checkpoints are not part of the step
        schedule = self._read("forward-backward", 1)
        grad_sync = self._read("all-grads-sync", 1)
        data_wait = self._phases["data_wait"]
        values = {"step_time_s": step_time, "data_wait_s": data_wait,
                  "forward_backward_s": max(schedule - data_wait - grad_sync, 0.0),
                  "grad_sync_s": grad_sync, "optimizer_s": self._phases.get("optimizer", 0.0)}
        if self.sampled:
            compute = self._read("forward-compute", 2) + self._read("backward-compute", 2) - data_wait
            busy = schedule - data_wait - grad_sync
            values["pipeline_bubble"] = max(busy - compute, 0.0) / busy if busy > 0 else 0.0
            values.update(_gather_step_times(step_time))
        if self._profiler is not None and step == self._trace_steps[1]:
            self._profiler.stop()
            self._trace_dir.mkdir(parents=True, exist_ok=True)
            first, last = self._trace_steps
            self._profiler.export_chrome_trace(
                str(self._trace_dir / f"rank_{dist.get_rank()}.steps_{first}-{last}.pt.trace.json"))
            self._profiler = None
        return values

    def _read(self, name: str, level: int) -> float:
        return self._mcore(name, log_level=level).elapsed(reset=True)


def _gather_step_times(step_time: float) -> dict[str, float]:
    """Every rank's step time: the fastest, the slowest and which rank was slowest."""
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    times = torch.zeros(dist.get_world_size(), dtype=torch.float64, device=device)
    dist.all_gather_into_tensor(times, torch.tensor([step_time], dtype=torch.float64, device=device))
    return {"step_time_min_s": times.min().item(), "step_time_max_s": times.max().item(),
            "slowest_rank": int(times.argmax().item())}
