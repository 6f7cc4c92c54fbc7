"""Fit the ALMR study: the best ALMR at each learning rate, with a bootstrap uncertainty, and the
relation between the two (docs/ALMR.md).

    results = collect("runs/almr_demo")            # final validation losses of every run
    result = fit(results, Objective("constrained", tolerance=0.02), target_lr=1.5e-5)
    print(format_fit(result))

The uncertainty comes from the validation set: every run evaluates the same validation batches,
so one bootstrap replicate resamples the batch indices once and applies them to every run and to
the pre-CPT reference alike (a paired bootstrap). It does not cover run-to-run (seed) variation.

``collect(sweep_dir, accuracy_task="ceval")`` scores the additional language by a benchmark's
accuracy instead (``eval_acc/<task>``, recorded by runs with an ``eval`` section): its "loss" is
the error 1 - accuracy, and its per-item errors are resampled as the batches are.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from megatron_cpt.almr.objective import Objective, find_optimum
from megatron_cpt.almr.sweep import read_plan, run_state
from megatron_cpt.almr.relation import MODELS, RelationFit, fit_params, fit_relation, predict
from megatron_cpt.errors import UserError
from megatron_cpt.run_files import ACCURACY, ITEM_CORRECT, LANGUAGE_BATCH_LOSSES, LANGUAGE_LOSS


@dataclass(frozen=True)
class RunLosses:
    name: str
    almr: Optional[float]  # None for the pre-CPT reference
    lr: Optional[float]
    losses: dict[str, float]  # language -> final validation loss (NaN when the run diverged)
    batches: dict[str, tuple[float, ...]]  # language -> loss of each validation batch


@dataclass(frozen=True)
class SweepResults:
    additional_language: str
    languages: tuple[str, ...]
    runs: tuple[RunLosses, ...]
    reference: Optional[RunLosses]  # the losses before CPT
    accuracy_task: Optional[str] = None  # the additional language scored by 1 - its accuracy


@dataclass(frozen=True)
class LrOptimum:
    lr: float
    almr: float  # NaN when infeasible
    value: float  # the objective at the optimum
    at_edge: bool
    feasible: bool
    in_relation: bool  # used to fit the relation (feasible, not at the edge of the grid)
    std: Optional[float]  # bootstrap standard deviation of the optimal ALMR
    low: Optional[float]  # almr -/+ std
    high: Optional[float]
    feasible_share: Optional[float]  # share of replicates with a feasible optimum


@dataclass(frozen=True)
class Recommendation:
    lr: float
    almr: float
    low: Optional[float]
    high: Optional[float]
    basis: str  # how it was obtained, in words
    extrapolated: bool


@dataclass(frozen=True)
class AlmrFit:
    objective: Objective
    objective_text: str
    additional_language: str
    original_languages: tuple[str, ...]
    almrs: tuple[float, ...]
    lrs: tuple[float, ...]
    losses: dict[str, list[list[float]]]  # language -> [lr index][almr index]
    reference: Optional[dict[str, float]]
    optima: tuple[LrOptimum, ...]
    relations: tuple[RelationFit, ...]
    best_model: str
    recommendation: Recommendation
    replicates: int  # bootstrap replicates (0: no per-batch losses, no uncertainty)
    validation_batches: int
    warnings: tuple[str, ...]
    accuracy_task: Optional[str] = None
    accuracy_items: int = 0  # items of accuracy_task resampled by the bootstrap

    @property
    def additional_score(self) -> str:
        """What the additional language's values are."""
        return f"{self.accuracy_task} error" if self.accuracy_task else "validation loss"

    @property
    def best_relation(self) -> RelationFit:
        return next(r for r in self.relations if r.model == self.best_model)

    def to_dict(self) -> dict:
        return _finite(asdict(self))


def _finite(value):
    """JSON has no NaN: write null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _float(value) -> float:
    return float("nan") if value is None else float(value)


def run_losses(name: str, almr: Optional[float], lr: Optional[float], record: dict,
               languages: Sequence[str], where: str) -> RunLosses:
    """One run's final evaluation record (a metrics.jsonl line) as per-language losses."""
    losses, batches = {}, {}
    for language in languages:
        if LANGUAGE_LOSS + language not in record:
            raise UserError(f"{where}: no {LANGUAGE_LOSS}{language} at step {record.get('step')} "
                            f"(the final step must be evaluated: train.eval_interval divides "
                            f"train.steps)")
        losses[language] = _float(record[LANGUAGE_LOSS + language])
        batches[language] = tuple(_float(v) for v in record.get(LANGUAGE_BATCH_LOSSES + language) or ())
    return RunLosses(name=name, almr=almr, lr=lr, losses=losses, batches=batches)


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
                     {**losses.batches, language: errors})


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
        if state.status == "diverged":  # its losses are NaN: the fit leaves it out
            losses = RunLosses(run.name, run.almr, run.lr,
                               {lang: float("nan") for lang in plan.languages}, {})
        else:
            losses = run_losses(run.name, run.almr, run.lr, state.final, plan.languages,
                                str(run_dir / "metrics.jsonl"))
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


def _grid(results: SweepResults, languages: Sequence[str]):
    almrs = sorted({r.almr for r in results.runs})
    lrs = sorted({r.lr for r in results.runs})
    if len(lrs) < 2:
        raise UserError(f"the sweep has {len(lrs)} learning rate(s) ({_list(lrs)}): relating the "
                        f"best ALMR to the learning rate needs at least 2 (3 for a goodness of fit)")
    if len(almrs) < 3:
        raise UserError(f"the sweep has {len(almrs)} ALMR value(s) ({_list(almrs)}): finding the "
                        f"best ALMR at a learning rate needs at least 3")
    cells = {(r.lr, r.almr): r for r in results.runs}
    missing = [f"almr {a:g} lr {lr:g}" for lr in lrs for a in almrs if (lr, a) not in cells]
    if missing:
        raise UserError(f"the sweep grid is incomplete: no run for {', '.join(missing)}")
    losses = {lang: np.array([[cells[(lr, a)].losses[lang] for a in almrs] for lr in lrs])
              for lang in languages}
    return np.array(almrs), np.array(lrs), cells, losses


def _list(values) -> str:
    return ", ".join(f"{v:g}" for v in values) or "none"


def _replicates(results: SweepResults, cells, almrs, lrs, languages, count: int, seed: int):
    """Bootstrap replicates of the loss grids: {language: [R, lr, almr]}, reference {language: [R]},
    and the number of resampled values per language. Each replicate shifts the recorded loss by
    the resampled mean minus the full mean of the per-batch losses (per-item errors for an
    accuracy), so replicates center on the recorded (token-weighted) loss."""
    runs = list(results.runs) + ([results.reference] if results.reference else [])
    sizes = {}
    for lang in languages:
        # Diverged runs (all losses NaN) have no batches; they stay NaN in every replicate.
        found = {len(r.batches.get(lang, ())) for r in runs if math.isfinite(r.losses[lang])}
        if count <= 0 or len(found) != 1 or min(found) < 2:
            return None, None, {}
        sizes[lang] = found.pop()
    rng = np.random.default_rng(seed)
    # The same draw for every language with that many values (validation batches, or items).
    index = {size: rng.integers(0, size, size=(count, size)) for size in sorted(set(sizes.values()))}

    def resample(run: RunLosses, language: str) -> np.ndarray:
        if not math.isfinite(run.losses[language]):
            return np.full(count, np.nan)
        per_batch = np.array(run.batches[language])
        return run.losses[language] + per_batch[index[len(per_batch)]].mean(axis=1) - per_batch.mean()

    grids = {lang: np.stack([np.stack([resample(cells[(lr, a)], lang) for a in almrs], axis=-1)
                             for lr in lrs], axis=1) for lang in languages}
    reference = ({lang: resample(results.reference, lang) for lang in languages}
                 if results.reference else None)
    return grids, reference, sizes


def _optima_at(objective, almrs, losses, reference, additional, original, lr_index):
    """Optimum at one LR over the ALMRs whose losses are all finite (None: fewer than 3)."""
    add = losses[additional][lr_index]
    orig = np.stack([losses[lang][lr_index] for lang in original])
    finite = np.isfinite(add) & np.isfinite(orig).all(axis=0)
    if finite.sum() < 3:
        return None
    ref = None if reference is None else np.array([reference[lang] for lang in original])
    return find_optimum(objective, almrs[finite], add[finite], orig[:, finite], ref)


def fit(results: SweepResults, objective: Objective = Objective(),
        original: Optional[Sequence[str]] = None, target_lr: Optional[float] = None,
        bootstrap: int = 200, seed: int = 0) -> AlmrFit:
    """Best ALMR per learning rate, its bootstrap interval, the fitted relations and a recommendation."""
    objective.validate()
    additional = results.additional_language
    original = tuple(original) if original else tuple(
        lang for lang in results.languages if lang != additional)
    unknown = [lang for lang in (additional, *original) if lang not in results.languages]
    if unknown or not original or additional in original:
        raise UserError(f"--original: expected languages of the sweep other than {additional} "
                        f"({', '.join(results.languages)}), got {', '.join(original) or 'none'}")
    languages = (additional, *original)
    almrs, lrs, cells, losses = _grid(results, languages)
    if all(np.isnan(grid).all() for grid in losses.values()):
        raise UserError("every validation loss of the sweep is NaN: nothing to fit")
    reference = None
    if results.reference is not None:
        reference = {lang: results.reference.losses[lang] for lang in languages}
    if objective.kind == "constrained":
        if reference is None or not all(math.isfinite(reference[lang]) for lang in original):
            raise UserError("--objective constrained: needs the finite pre-CPT losses of the "
                            "reference run (or use --objective weighted)")

    warnings = []
    point = [_optima_at(objective, almrs, losses, reference, additional, original, i)
             for i in range(len(lrs))]
    for lr, optimum in zip(lrs, point):
        if optimum is None:
            warnings.append(f"lr {lr:g}: fewer than 3 ALMRs with finite losses (diverged runs); "
                            f"left out")
    rep_losses, rep_reference, sizes = _replicates(results, cells, almrs, lrs, languages,
                                                   bootstrap, seed)
    replicates = 0 if rep_losses is None else bootstrap
    accuracy = results.accuracy_task
    batches = sizes.get(original[0] if accuracy else additional, 0)
    if replicates == 0:
        warnings.append("no per-batch validation losses (or fewer than 2 batches): no bootstrap "
                        "uncertainty")
    rep_almr = np.full((replicates, len(lrs)), np.nan)
    for r in range(replicates):
        grids = {lang: rep_losses[lang][r] for lang in languages}
        ref = None if rep_reference is None else {lang: rep_reference[lang][r] for lang in languages}
        for i, optimum in enumerate(point):
            if optimum is not None:
                rep_almr[r, i] = _optima_at(objective, almrs, grids, ref, additional, original,
                                            i).almr

    optima = []
    for i, (lr, optimum) in enumerate(zip(lrs, point)):
        feasible = optimum is not None and optimum.feasible
        column = rep_almr[:, i][np.isfinite(rep_almr[:, i])]
        std = float(np.std(column, ddof=1)) if feasible and len(column) > 1 else None
        almr = optimum.almr if feasible else float("nan")
        optima.append(LrOptimum(
            lr=float(lr), almr=almr, value=optimum.value if feasible else float("nan"),
            at_edge=feasible and optimum.at_edge, feasible=feasible,
            in_relation=feasible and not optimum.at_edge, std=std,
            low=None if std is None else almr - std, high=None if std is None else almr + std,
            feasible_share=len(column) / replicates if replicates else None))
        if optimum is not None and not optimum.feasible:
            warnings.append(f"lr {lr:g}: no swept ALMR satisfies the objective; left out")
        elif feasible and optimum.at_edge:
            warnings.append(f"lr {lr:g}: the optimum {optimum.almr:g} is at the edge of the ALMR "
                            f"grid (the true one may lie beyond it); left out of the relation")

    used = [i for i, o in enumerate(optima) if o.in_relation]
    if len(used) < 2:
        states = "; ".join(f"lr {o.lr:g}: " + ("at the grid edge" if o.at_edge else
                                               "infeasible" if not o.feasible else "interior")
                           for o in optima)
        raise UserError(f"fewer than 2 learning rates have an optimum inside the ALMR grid "
                        f"({states}): widen --almr or change the objective")
    relations = _fit_relations(lrs[used], np.array([optima[i].almr for i in used]),
                               rep_almr[:, used], [optima[i].std for i in used])
    if len(used) == 2:
        # Both relations pass through both points: their RMSEs differ by rounding only.
        best = next(r for r in relations if r.model == "log-linear")
        warnings.append("2 learning rates in the relation: it is determined exactly, with no "
                        "goodness of fit, and the log-linear relation is used (both fit exactly)")
    else:
        best = min(relations, key=lambda r: r.rmse)
    if best.chi2_per_dof is not None and best.chi2_per_dof > 4:
        warnings.append(
            f"the optima scatter around the {best.model} relation {math.sqrt(best.chi2_per_dof):.1f}"
            f"x more than their bootstrap errors: run-to-run variation (data order) outweighs the "
            f"validation-batch noise that the intervals cover, so they understate the uncertainty")
    recommendation = _recommend(optima, used, best, rep_almr, lrs, target_lr, warnings)
    return AlmrFit(
        objective=objective, objective_text=objective.describe(additional, original, accuracy),
        additional_language=additional, original_languages=original,
        almrs=tuple(float(a) for a in almrs), lrs=tuple(float(lr) for lr in lrs),
        losses={lang: grid.tolist() for lang, grid in losses.items()}, reference=reference,
        optima=tuple(optima), relations=tuple(relations), best_model=best.model,
        recommendation=recommendation, replicates=replicates, validation_batches=batches,
        warnings=tuple(warnings), accuracy_task=accuracy,
        accuracy_items=sizes.get(additional, 0) if accuracy else 0)


def _fit_relations(lrs: np.ndarray, almrs: np.ndarray, rep_almr: np.ndarray,
                   stds: list[Optional[float]]) -> list[RelationFit]:
    sigmas = np.array(stds, dtype=float) if all(s is not None for s in stds) else None
    complete = [row for row in rep_almr if np.isfinite(row).all()]
    fits = []
    for model in MODELS:
        replicate_params = [p for row in complete if (p := fit_params(model, lrs, row, sigmas))]
        relation = fit_relation(model, lrs, almrs, sigmas, replicate_params)
        if relation is not None:
            fits.append(relation)
    return fits


def _share(value: Optional[float]) -> Optional[float]:
    """An ALMR (or a bound of its interval) clipped to [0, 1]."""
    return None if value is None else min(1.0, max(0.0, value))


def _recommend(optima, used, best: RelationFit, rep_almr, lrs, target_lr,
               warnings: list[str]) -> Recommendation:
    if target_lr is None:
        # The swept learning rate whose optimum reaches the lowest objective: the joint choice.
        chosen = min((optima[i] for i in used), key=lambda o: o.value)
        return Recommendation(lr=chosen.lr, almr=chosen.almr, low=_share(chosen.low),
                              high=_share(chosen.high),
                              basis="the swept learning rate with the lowest objective at its "
                                    "optimal ALMR", extrapolated=False)
    if target_lr <= 0:
        raise UserError(f"--target-lr: must be positive, got {target_lr}")
    almr = float(best.predict(target_lr))
    sigmas = np.array([optima[i].std for i in used], dtype=float)
    sigmas = None if np.isnan(sigmas).any() else sigmas
    predictions = []
    for row in rep_almr[:, used]:
        params = fit_params(best.model, lrs[used], row, sigmas) if np.isfinite(row).all() else None
        if params is not None:
            predictions.append(float(predict(best.model, params, target_lr)))
    std = float(np.std(predictions, ddof=1)) if len(predictions) > 1 else None
    fitted = lrs[used]
    if not 0.0 <= almr <= 1.0:
        warnings.append(f"the {best.model} relation gives ALMR {almr:.3f} at lr {target_lr:g}, "
                        f"outside [0, 1]: an extrapolation beyond the grid; clipped to "
                        f"{_share(almr):g}")
    return Recommendation(
        lr=float(target_lr), almr=_share(almr),
        low=None if std is None else _share(almr - std),
        high=None if std is None else _share(almr + std),
        basis=f"the {best.model} relation ({best.formula}) at the target learning rate",
        extrapolated=not fitted.min() <= target_lr <= fitted.max())


def format_fit(result: AlmrFit) -> str:
    lines = [f"objective: {result.objective_text}",
             f"grid: ALMR {_list(result.almrs)} x LR {_list(result.lrs)}; bootstrap "
             f"{result.replicates} replicates over {result.validation_batches} validation batches"
             + (f" and {result.accuracy_items} {result.accuracy_task} items"
                if result.accuracy_task else ""),
             f"  {'lr':>9} {'best ALMR':>9} {'+- (1 sd)':>9} {'objective':>9}  note"]
    for o in result.optima:
        interval = f"{o.std:.3f}" if o.std is not None else "-"
        note = ("infeasible" if not o.feasible else "at grid edge" if o.at_edge else "")
        lines.append(f"  {o.lr:>9.3g} {o.almr:>9.3f} {interval:>9} {o.value:>9.4f}  {note}")
    for r in result.relations:
        params = ", ".join(f"{k} = {v:.4g}" + (f" +- {r.param_std[k]:.2g}" if r.param_std else "")
                           for k, v in r.params.items())
        chi2 = f", chi2/dof {r.chi2_per_dof:.2f}" if r.chi2_per_dof is not None else ""
        mark = "  <- best" if r.model == result.best_model else ""
        lines.append(f"{r.model:>10}: {r.formula}: {params}; R^2 {r.r2:.3f}, RMSE {r.rmse:.4f}"
                     f"{chi2}{mark}")
    rec = result.recommendation
    interval = ""
    if rec.low is not None and 0 < rec.low and rec.high < 1:
        interval = f" (+- {rec.high - rec.almr:.3f})"
    elif rec.low is not None:  # clipped to [0, 1]
        interval = f" (1 sd: {rec.low:.3f} to {rec.high:.3f})"
    lines.append(f"recommended: ALMR {rec.almr:.3f}{interval} at LR {rec.lr:.3g}: {rec.basis}"
                 + ("; EXTRAPOLATED beyond the swept learning rates" if rec.extrapolated else ""))
    lines.extend(f"warning: {w}" for w in result.warnings)
    return "\n".join(lines)
