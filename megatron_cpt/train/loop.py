"""The training loop as named steps, each with one call site:

    state = build_state(recipe)                    # megatron_cpt.train.state
    until a stop reason:
        record = train_one_step(state)             # one optimizer step on the next global batch
        evals = maybe_evaluate(state, record)      # validation every train.eval_interval steps,
                                                   # benchmarks every eval.interval steps
        reason = stops.agree(...)                  # finished, SIGTERM or wall-clock budget: all ranks
        maybe_checkpoint(state, record, reason)    # every save_interval steps, and when stopping
        record_step(state, record, evals)          # metrics.jsonl + TensorBoard + log line
    finally: progress.jsonl end line, metrics closed

Run by every rank of a job (``megatron-cpt train`` starts the ranks); see ``megatron_cpt.train.cli``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from megatron_cpt.config.recipe import Recipe
from megatron_cpt import run_files
from megatron_cpt.train.preemption import StopReason, StopRequests
from megatron_cpt.train.state import TrainState, build_state, is_logging_rank, log
from megatron_cpt.train.step import StepResult


class NonFiniteLossError(RuntimeError):
    """Training stopped on a NaN/inf loss (``train.nonfinite_loss=stop`` or too many skips)."""


@dataclass
class TrainOutcome:
    last_step: int
    last_loss: float
    checkpoint: str | None
    stop_reason: StopReason
    message: str = ""  # why it stopped, when the reason alone does not say


@dataclass
class StepRecord:
    """What one step did, as the loop records it."""

    result: StepResult
    timing: dict[str, float]  # step time and its breakdown (megatron_cpt.train.timers)
    batch_digest: str | None
    checkpoint_save_s: float | None = None  # time the step spent saving (or scheduling a save)
    checkpoint_background: bool = False  # the save was written in the background (async_save)

    @property
    def finite(self) -> bool:
        return math.isfinite(self.result.loss)

    @property
    def step_time_s(self) -> float:
        return self.timing["step_time_s"]


def train_one_step(state: TrainState) -> StepRecord:
    from megatron_cpt.data.datasets import global_batch_digest, microbatches
    from megatron_cpt.train.step import train_step

    cfg, progress = state.recipe, state.progress
    gbs = cfg.train.global_batch_size
    state.timers.start(progress.step + 1)
    # Which samples this step trains on, comparable across layouts and resumes.
    digest = (global_batch_digest(state.data.train, progress.consumed_samples, gbs)
              if cfg.data.batch_digest and is_logging_rank() else None)
    batches = state.timers.batches(microbatches(state.data.train, progress.consumed_samples,
                                                cfg.train, state.dp_rank, state.dp_size))
    result = train_step(state.model, state.optimizer, state.scheduler, batches,
                        state.num_microbatches, cfg.train.seq_length, cfg.train.micro_batch_size,
                        skip_nonfinite=cfg.train.nonfinite_loss == "skip", timers=state.timers)
    progress.step += 1
    progress.consumed_samples += gbs
    return StepRecord(result, state.timers.stop(progress.step), digest)


def maybe_evaluate(state: TrainState, record: StepRecord) -> dict[str, float]:
    from megatron_cpt.train.evaluation import evaluate_validation_sets

    interval, step = state.recipe.train.eval_interval, state.progress.step
    if not record.finite:
        return {}
    values = {}
    if interval and step % interval == 0:
        values.update(evaluate_validation_sets(state.model, state.data, state.recipe,
                                               state.dp_rank, state.dp_size,
                                               state.num_microbatches))
    if state.benchmarks is not None and state.benchmarks.due(step):
        values.update(state.benchmarks.evaluate(state.model, step))
    return values


def record_step(state: TrainState, record: StepRecord, evals: dict[str, float]) -> None:
    """Write the step's metrics and log line; apply the non-finite-loss policy."""
    from megatron_cpt.profile.throughput import peak_memory_gb
    from megatron_cpt.train.schedule import current_lr

    cfg, progress, result = state.recipe, state.progress, record.result
    values = {"loss": result.loss, "lr": current_lr(state.optimizer), "tokens": result.tokens,
              **record.timing, **state.throughput.values(record.step_time_s), **peak_memory_gb()}
    if "pipeline_bubble" in record.timing:
        values["pipeline_bubble_estimate"] = state.throughput.bubble_estimate
    if record.checkpoint_save_s is not None:
        values["checkpoint_save_s"] = record.checkpoint_save_s
        if record.checkpoint_background:
            values["checkpoint_background"] = True
    if not record.finite:
        state.consecutive_skips += 1
        progress.skipped_steps += 1
        state.metrics.write(progress.step, {**values, "skipped": True})
        if cfg.train.nonfinite_loss == "stop" or state.consecutive_skips > cfg.train.max_skipped_steps:
            raise NonFiniteLossError(
                f"step {progress.step}: non-finite loss (train.nonfinite_loss="
                f"{cfg.train.nonfinite_loss}, {state.consecutive_skips} consecutive)")
        return
    state.consecutive_skips = 0
    state.last_loss = result.loss
    elapsed = record.step_time_s
    values.update({"grad_norm": result.grad_norm, "consumed_samples": progress.consumed_samples,
                   "tokens_per_s": result.tokens / elapsed if elapsed > 0 else None,
                   "batch_digest": record.batch_digest, **evals})
    state.metrics.write(progress.step, values)
    if progress.step % cfg.logging.log_interval == 0:
        log(f"step {progress.step}/{cfg.train.steps} loss {result.loss:.4f} lr {values['lr']:.3e} "
            f"grad_norm {result.grad_norm or 0:.3f} {elapsed:.2f}s")


def maybe_checkpoint(state: TrainState, record: StepRecord, reason: StopReason) -> StopReason:
    """Save every ``checkpoint.save_interval`` steps, and when the run stops: always when it can
    resume later, at its end when ``checkpoint.save_at_end``. Sets ``record.checkpoint_save_s``.

    Returns the stop reason, which becomes ``NO_SPACE`` when a due save would not fit on the
    checkpoint file system: the run then stops without writing (``latest`` stays whole)."""
    from megatron_cpt.checkpointing.dist_io import writing_checkpoint
    from megatron_cpt.train.checkpoint import room_for_next_checkpoint, save_training_checkpoint

    cfg, step = state.recipe, state.progress.step
    if state.checkpoint_writes is not None:
        # Commit the background writes every rank has finished; before the run stops, all of them.
        with writing_checkpoint(state.ckpt_dir):
            state.checkpoint_writes.maybe_finalize_async_calls(blocking=reason != StopReason.NONE)
    if state.saved_step == step or (not record.finite and cfg.train.nonfinite_loss == "stop"):
        return reason
    interval = cfg.checkpoint.save_interval
    due = (bool(interval) and step % interval == 0) or reason.saves or (
        reason == StopReason.FINISHED and cfg.checkpoint.save_at_end)
    if not due:
        return reason
    pending = state.checkpoint_writes.get_num_unfinalized_calls() if state.checkpoint_writes else 0
    shortage = room_for_next_checkpoint(state.ckpt_dir, pending)
    if shortage is not None:
        if state.checkpoint_writes is not None:  # the writes already under way still commit
            state.checkpoint_writes.maybe_finalize_async_calls(blocking=True)
        state.stop_message = shortage
        return StopReason.NO_SPACE
    start = time.perf_counter()
    background = state.checkpoint_writes if reason == StopReason.NONE else None
    state.last_saved = save_training_checkpoint(
        state.ckpt_dir, state.model, state.optimizer, state.scheduler, state.progress, cfg.model,
        cfg.parallel, cfg.checkpoint.keep_last, background=background,
        reshardable=cfg.checkpoint.reshardable, extra_meta=state.data.checkpoint_meta)
    record.checkpoint_save_s = time.perf_counter() - start
    state.saved_step = step
    if background is None:  # the time a stop's (blocking) save takes
        state.longest_save_s = max(state.longest_save_s, record.checkpoint_save_s)
    else:
        record.checkpoint_background = True
        log(f"writing {state.last_saved.name} in the background")
    return reason


def run_training(recipe: Recipe, stops: StopRequests) -> TrainOutcome:
    """``stops``: installed by the caller as early as it can (``train.worker``)."""
    state = build_state(recipe)
    run_dir = recipe.logging.run_dir
    if is_logging_rank():
        run_files.record_start(run_dir, state.progress.step, state.final_step,
                               cpu_threads=state.cpu_threads)
    reason = StopReason.FINISHED if state.progress.step >= state.final_step else StopReason.NONE
    ended = "failed"
    try:
        while reason == StopReason.NONE:
            record = train_one_step(state)
            evals = maybe_evaluate(state, record)
            reason = stops.agree(finished=state.progress.step >= state.final_step,
                                 next_step_s=record.step_time_s + state.longest_save_s)
            reason = maybe_checkpoint(state, record, reason)
            record_step(state, record, evals)
        ended = reason.label
        if reason.saves:  # a stop without a save says why in the job's last line (train.worker)
            log(f"stopped after step {state.progress.step} ({ended}); resume from "
                f"{state.last_saved}")
    except NonFiniteLossError:
        ended = "nonfinite"
        raise
    finally:
        if is_logging_rank():
            run_files.record_end(run_dir, state.progress.step, ended,
                                    str(state.last_saved) if state.last_saved else None)
        state.metrics.close()
    return TrainOutcome(state.progress.step, state.last_loss,
                        str(state.last_saved) if state.last_saved else None, reason,
                        state.stop_message)
