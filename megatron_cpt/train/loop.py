"""The training loop as named steps, each with one call site:

    state = build_state(recipe)              # megatron_cpt.train.state
    while step < final step:
        result = train_one_step(state)         # one optimizer step on the next global batch
        evals = maybe_evaluate(state, result)  # validation sets every train.eval_interval steps
        record_step(state, result, evals)      # metrics.jsonl + TensorBoard + log line; NaN policy
        maybe_checkpoint(state)                # every checkpoint.save_interval steps
    maybe_checkpoint(state, at_end=True)
    finally: teardown

Run by every rank of a job (``megatron-cpt train`` starts the ranks); see ``megatron_cpt.train.cli``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from megatron_cpt.config.recipe import Recipe
from megatron_cpt.train.state import TrainState, build_state, is_logging_rank, log
from megatron_cpt.train.step import StepResult


class NonFiniteLossError(RuntimeError):
    """Training stopped on a NaN/inf loss (``train.nonfinite_loss=stop`` or too many skips)."""


@dataclass
class TrainOutcome:
    last_step: int
    last_loss: float
    checkpoint: str | None


@dataclass
class StepRecord:
    """What one step did, as the loop records it."""

    result: StepResult
    timing: dict[str, float]  # step time and its breakdown (megatron_cpt.train.timers)
    batch_digest: str | None

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

    interval = state.recipe.train.eval_interval
    if not math.isfinite(record.result.loss) or not interval or state.progress.step % interval:
        return {}
    return evaluate_validation_sets(state.model, state.data, state.recipe, state.dp_rank,
                                    state.dp_size, state.num_microbatches)


def record_step(state: TrainState, record: StepRecord, evals: dict[str, float]) -> None:
    """Write the step's metrics and log line; apply the non-finite-loss policy."""
    from megatron_cpt.profile.throughput import peak_memory_gb
    from megatron_cpt.train.schedule import current_lr

    cfg, progress, result = state.recipe, state.progress, record.result
    values = {"loss": result.loss, "lr": current_lr(state.optimizer), "tokens": result.tokens,
              **record.timing, **state.throughput.values(record.step_time_s), **peak_memory_gb()}
    if "pipeline_bubble" in record.timing:
        values["pipeline_bubble_estimate"] = state.throughput.bubble_estimate
    if not math.isfinite(result.loss):
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


def maybe_checkpoint(state: TrainState, at_end: bool = False) -> None:
    """Save every ``checkpoint.save_interval`` steps, and at the end unless that step is saved."""
    from megatron_cpt.train.checkpoint import save_training_checkpoint

    cfg, step = state.recipe, state.progress.step
    if state.saved_step == step:
        return
    interval = cfg.checkpoint.save_interval
    due = cfg.checkpoint.save_at_end if at_end else bool(interval) and step % interval == 0
    if not due:
        return
    start = time.perf_counter()
    state.last_saved = save_training_checkpoint(
        state.ckpt_dir, state.model, state.optimizer, state.scheduler, state.progress, cfg.model,
        cfg.parallel, cfg.checkpoint.keep_last)
    state.saved_step = step
    # Added to this step's record; the launch work sizes its pre-emption warning from it.
    state.metrics.write(step, {"checkpoint_save_s": time.perf_counter() - start})


def run_training(recipe: Recipe) -> TrainOutcome:
    state = build_state(recipe)
    try:
        while state.progress.step < state.final_step:
            record = train_one_step(state)
            evals = maybe_evaluate(state, record)
            record_step(state, record, evals)
            maybe_checkpoint(state)
        maybe_checkpoint(state, at_end=True)
    finally:
        state.metrics.close()
    return TrainOutcome(state.progress.step, state.last_loss,
                        str(state.last_saved) if state.last_saved else None)
