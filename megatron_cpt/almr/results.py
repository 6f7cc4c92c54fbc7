"""What an ALMR sweep measured: the final validation losses of every run (per language, and per
validation batch for the bootstrap), and of the pre-CPT reference.

    results = collect("runs/almr_demo")

``collect(sweep_dir, accuracy_task="ceval")`` scores the additional language by a benchmark's
accuracy instead (``eval_acc/<task>``, recorded by runs with an ``eval`` section): its "loss" is
the error 1 - accuracy, and its per-item errors are resampled as the batches are.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from megatron_cpt.almr.sweep import read_plan, run_state
from megatron_cpt.errors import UserError
from megatron_cpt.run_files import ACCURACY, ITEM_CORRECT, LANGUAGE_BATCH_LOSSES, LANGUAGE_LOSS


@dataclass(frozen=True)
class RunLosses:
    name: str
    almr: Optional[float]  # None for the pre-CPT reference
    lr: Optional[float]
    losses: dict[str, float]  # language -> final validation loss (NaN when the run diverged)
    batches: dict[str, tuple[float, ...]]  # language -> loss of each validation batch
    seed: Optional[int] = None  # train.seed of the run (a seed replicate of its grid point)


@dataclass(frozen=True)
class SweepResults:
    additional_language: str
    languages: tuple[str, ...]
    runs: tuple[RunLosses, ...]
    reference: Optional[RunLosses]  # the losses before CPT
    accuracy_task: Optional[str] = None  # the additional language scored by 1 - its accuracy


def _float(value) -> float:
    return float("nan") if value is None else float(value)


def run_losses(name: str, almr: Optional[float], lr: Optional[float], record: dict,
               languages: Sequence[str], where: str, seed: Optional[int] = None) -> RunLosses:
    """One run's final evaluation record (a metrics.jsonl line) as per-language losses."""
    losses, batches = {}, {}
    for language in languages:
        if LANGUAGE_LOSS + language not in record:
            raise UserError(f"{where}: no {LANGUAGE_LOSS}{language} at step {record.get('step')} "
                            f"(the final step must be evaluated: train.eval_interval divides "
                            f"train.steps)")
        losses[language] = _float(record[LANGUAGE_LOSS + language])
        batches[language] = tuple(_float(v) for v in record.get(LANGUAGE_BATCH_LOSSES + language) or ())
    return RunLosses(name=name, almr=almr, lr=lr, losses=losses, batches=batches, seed=seed)


def with_accuracy(losses: RunLosses, record: Optional[dict], language: str, task: str,
                  where: str) -> RunLosses:
    """``losses`` with ``language`` scored by 1 - the accuracy on ``task`` in ``record`` (NaN
    without a record: a diverged run, or a reference evaluated without the task)."""
    if record is None:
        error, errors = float("nan"), ()
    elif ACCURACY + task not in record or ITEM_CORRECT + task not in record:
        raise UserError(f"{where}: no {ACCURACY}{task} at step {record.get('step')} (the final "
                        f"step must be evaluated: a recipe eval section with task {task} whose "
                        f"eval.interval divides train.steps)")
    else:
        error = 1.0 - _float(record[ACCURACY + task])
        errors = tuple(1.0 - float(c) for c in record[ITEM_CORRECT + task])
    return RunLosses(losses.name, losses.almr, losses.lr, {**losses.losses, language: error},
                     {**losses.batches, language: errors}, losses.seed)


def collect(sweep_dir: str | Path, accuracy_task: Optional[str] = None) -> SweepResults:
    """The final validation losses of every run of a sweep; a run not finished is an error.
    With ``accuracy_task`` the additional language is scored by that task's error instead."""
    plan = read_plan(sweep_dir)
    runs, reference = [], None
    for run in plan.runs:
        run_dir = plan.run_dir(run)
        state = run_state(run_dir, plan.final_step(run))
        if state.status == "pending":
            raise UserError(f"{run_dir}: not run yet (no metrics.jsonl); run `megatron-cpt almr "
                            f"sweep` again to finish the sweep")
        if state.status == "partial":
            raise UserError(f"{run_dir}: unfinished (step {state.step} of "
                            f"{plan.final_step(run)}); run `megatron-cpt almr sweep` again to "
                            f"resume it")
        if state.status == "diverged":  # its losses are NaN: the fit leaves its point out
            losses = RunLosses(run.name, run.almr, run.lr,
                               {lang: math.nan for lang in plan.languages}, {}, run.seed)
        else:
            losses = run_losses(run.name, run.almr, run.lr, state.final, plan.languages,
                                str(run_dir / "metrics.jsonl"), run.seed)
        if accuracy_task:
            record = state.final
            if run.kind == "reference" and record and ACCURACY + accuracy_task not in record:
                record = None  # evaluated before CPT without the task: no accuracy to compare
            losses = with_accuracy(losses, record, plan.additional_language, accuracy_task,
                                   str(run_dir / "metrics.jsonl"))
        if run.kind == "reference":
            reference = losses
        else:
            runs.append(losses)
    return SweepResults(additional_language=plan.additional_language,
                        languages=tuple(plan.languages), runs=tuple(runs), reference=reference,
                        accuracy_task=accuracy_task)
