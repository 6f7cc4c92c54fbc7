"""Fit the ALMR study: the best ALMR at each learning rate with its 95% interval, the relation
between the two with the interval of its slope, the direction in words where the interval allows
one, and a recommendation (docs/ALMR.md).

    results = collect("runs/almr_demo")            # final validation losses of every run
    result = fit(results, Objective("constrained", tolerance=0.02), target_lr=1.5e-5)
    print(format_fit(result))

A grid point's loss is the mean over its seed replicates. The intervals are the central 95% of
bootstrap replicates that resample the validation batches and, with 2 or more seeds per point, the
run-to-run variation (``bootstrap.py``); with one seed they cover the validation batches only, and
the fit then states no direction.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Optional, Sequence

import numpy as np

from megatron_cpt.almr.bootstrap import LossGrid, loss_grid, replicate
from megatron_cpt.almr.objective import Objective, find_optima, find_optimum
from megatron_cpt.almr.relation import (LEVEL, MODELS, SLOPES, RelationFit, fit_params_many,
                                        fit_relation, interval, predict)
from megatron_cpt.almr.results import (RunLosses, SweepResults, collect, run_losses,  # noqa: F401
                                       with_accuracy)
from megatron_cpt.errors import UserError

POWER = 0.8  # of the detectable slope: the share of repeated sweeps that find it


@dataclass(frozen=True)
class LrOptimum:
    lr: float
    almr: float  # NaN when infeasible
    value: float  # the objective at the optimum
    at_edge: bool
    feasible: bool
    in_relation: bool  # used to fit the relation (feasible, not at the edge of the grid)
    std: Optional[float]  # bootstrap standard deviation of the optimal ALMR
    low: Optional[float]  # its 95% interval (bootstrap percentiles)
    high: Optional[float]
    feasible_share: Optional[float]  # share of replicates with a feasible optimum


@dataclass(frozen=True)
class Recommendation:
    lr: float
    almr: float
    low: Optional[float]  # 95% interval, clipped to [0, 1]
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
    losses: dict[str, list[list[float]]]  # language -> [lr index][almr index], mean over seeds
    reference: Optional[dict[str, float]]
    optima: tuple[LrOptimum, ...]
    relations: tuple[RelationFit, ...]
    best_model: str
    recommendation: Recommendation
    replicates: int  # bootstrap replicates (0: no uncertainty)
    validation_batches: int
    warnings: tuple[str, ...]
    accuracy_task: Optional[str] = None
    accuracy_items: int = 0  # items of accuracy_task resampled by the bootstrap
    seeds: tuple[int, ...] = ()  # the seed replicates of every point
    covers: str = ""  # what the intervals cover, in words
    verdict: str = ""  # how the optimum moves with the learning rate, as far as the interval says
    detectable_slope: Optional[float] = None  # |b| found at 95% with power 80%
    seed_losses: Optional[dict[str, list[list[list[float]]]]] = None  # [lr][almr][seed] (R >= 2)

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


def _lr_optima(objective: Objective, grid: LossGrid, losses: dict[str, np.ndarray],
               reference: Optional[dict], additional: str, original: Sequence[str], lr_index: int,
               finite: np.ndarray):
    """``find_optima`` at one LR over the ALMRs marked ``finite``; ``losses`` {language: [N, L, A]},
    ``reference`` {language: [N]}."""
    add = losses[additional][:, lr_index, finite].T
    orig = np.stack([losses[lang][:, lr_index, finite].T for lang in original])
    ref = None if reference is None else np.stack([reference[lang] for lang in original])
    return find_optima(objective, grid.almrs[finite], add, orig, ref)


def fit(results: SweepResults, objective: Objective = Objective(),
        original: Optional[Sequence[str]] = None, target_lr: Optional[float] = None,
        bootstrap: int = 1000, seed: int = 0) -> AlmrFit:
    """Best ALMR per learning rate with its 95% interval, the fitted relations, the direction in
    words, and a recommendation."""
    objective.validate()
    additional = results.additional_language
    original = tuple(original) if original else tuple(
        lang for lang in results.languages if lang != additional)
    unknown = [lang for lang in (additional, *original) if lang not in results.languages]
    if unknown or not original or additional in original:
        raise UserError(f"--original: expected languages of the sweep other than {additional} "
                        f"({', '.join(results.languages)}), got {', '.join(original) or 'none'}")
    languages = (additional, *original)
    grid = loss_grid(results, languages)
    means = grid.means
    if all(np.isnan(runs).all() for runs in grid.runs.values()):
        raise UserError("every validation loss of the sweep is NaN: nothing to fit")
    reference = grid.reference
    if objective.kind == "constrained":
        if reference is None or not all(math.isfinite(reference[lang]) for lang in original):
            raise UserError("--objective constrained: needs the finite pre-CPT losses of the "
                            "reference run (or use --objective weighted)")

    warnings = []
    diverged = grid.diverged()
    if diverged and len(grid.seeds) > 1:
        warnings.append(f"diverged: {'; '.join(diverged)}: the point of each is left out at its "
                        f"learning rate")
    finite = np.isfinite(np.stack([means[lang] for lang in languages])).all(axis=0)  # [L, A]
    point_losses = {lang: m[None] for lang, m in means.items()}
    point_reference = None if reference is None else {k: np.array([v]) for k, v in reference.items()}
    point = []
    for i, lr in enumerate(grid.lrs):
        if finite[i].sum() < 3:
            point.append(None)
            warnings.append(f"lr {lr:g}: fewer than 3 ALMRs with finite losses (diverged runs); "
                            f"left out")
            continue
        almr, value, at_edge = _lr_optima(objective, grid, point_losses, point_reference,
                                          additional, original, i, finite[i])
        point.append((float(almr[0]), float(value[0]), bool(at_edge[0])))

    reps = replicate(grid, bootstrap, seed)
    rep_almr = np.full((reps.count, len(grid.lrs)), np.nan)
    for i, optimum in enumerate(point):
        if optimum is not None and reps.count:
            rep_almr[:, i] = _lr_optima(objective, grid, reps.losses, reps.reference, additional,
                                        original, i, finite[i])[0]
    accuracy = results.accuracy_task
    batches = reps.batch_sizes.get(original[0] if accuracy else additional, 0)
    covers = _covers(reps, batches, len(grid.seeds))
    if reps.count == 0:
        warnings.append("no per-batch validation losses (or fewer than 2 batches) and one seed "
                        "per point: no uncertainty")

    optima = []
    for i, (lr, optimum) in enumerate(zip(grid.lrs, point)):
        feasible = optimum is not None and math.isfinite(optimum[0])
        column = rep_almr[:, i][np.isfinite(rep_almr[:, i])]
        std = float(np.std(column, ddof=1)) if feasible and len(column) > 1 else None
        bounds = interval(column) if std is not None else None
        optima.append(LrOptimum(
            lr=float(lr), almr=optimum[0] if feasible else math.nan,
            value=optimum[1] if feasible else math.nan, at_edge=feasible and optimum[2],
            feasible=feasible, in_relation=feasible and not optimum[2], std=std,
            low=bounds[0] if bounds else None, high=bounds[1] if bounds else None,
            feasible_share=len(column) / reps.count if reps.count else None))
        if optimum is not None and not feasible:
            warnings.append(f"lr {lr:g}: no swept ALMR satisfies the objective; left out")
        elif feasible and optimum[2]:
            warnings.append(f"lr {lr:g}: the optimum {optimum[0]:g} is at the edge of the ALMR "
                            f"grid (the true one may lie beyond it); left out of the relation")

    used = [i for i, o in enumerate(optima) if o.in_relation]
    if len(used) < 2:
        states = "; ".join(f"lr {o.lr:g}: " + ("at the grid edge" if o.at_edge else
                                               "infeasible" if not o.feasible else "interior")
                           for o in optima)
        raise UserError(f"fewer than 2 learning rates have an optimum inside the ALMR grid "
                        f"({states}): widen --almr or change the objective")
    stds = [optima[i].std for i in used]
    sigmas = np.array(stds, dtype=float) if all(s is not None for s in stds) else None
    used_reps = rep_almr[:, used] if reps.count else None
    relations = [r for model in MODELS if (r := fit_relation(
        model, grid.lrs[used], np.array([optima[i].almr for i in used]), sigmas, used_reps))]
    if len(used) == 2:
        # Both relations pass through both points: their RMSEs differ by rounding only.
        best = next(r for r in relations if r.model == "log-linear")
        warnings.append("2 learning rates in the relation: it is determined exactly, with no "
                        "goodness of fit, and the log-linear relation is used (both fit exactly)")
    else:
        best = min(relations, key=lambda r: r.rmse)
    if best.chi2_per_dof is not None and best.chi2_per_dof > 4:
        scatter = (f"the optima scatter around the {best.model} relation "
                   f"{math.sqrt(best.chi2_per_dof):.1f}x more than their bootstrap errors")
        warnings.append(
            f"{scatter}: the relation's form does not describe them" if reps.seed_level else
            f"{scatter}: run-to-run variation, which one seed per point does not measure, may "
            f"outweigh the validation-batch noise the intervals cover (sweep with --seeds 2 or "
            f"more)")
    log_linear = next(r for r in relations if r.model == "log-linear")
    recommendation = _recommend(optima, used, best, used_reps, grid.lrs, sigmas, target_lr,
                                warnings)
    seed_losses = None
    if len(grid.seeds) > 1:
        seed_losses = {lang: runs.tolist() for lang, runs in grid.runs.items()}
    return AlmrFit(
        objective=objective, objective_text=objective.describe(additional, original, accuracy),
        additional_language=additional, original_languages=original,
        almrs=tuple(float(a) for a in grid.almrs), lrs=tuple(float(lr) for lr in grid.lrs),
        losses={lang: m.tolist() for lang, m in means.items()}, reference=reference,
        optima=tuple(optima), relations=tuple(relations), best_model=best.model,
        recommendation=recommendation, replicates=reps.count, validation_batches=batches,
        warnings=tuple(warnings), accuracy_task=accuracy,
        accuracy_items=reps.batch_sizes.get(additional, 0) if accuracy else 0,
        seeds=tuple(s for s in grid.seeds if s is not None), covers=covers,
        verdict=_verdict(log_linear, reps.seed_level, len(grid.seeds)),
        detectable_slope=_detectable(log_linear) if reps.seed_level else None,
        seed_losses=seed_losses)


def _covers(reps, batches: int, seeds: int) -> str:
    if reps.count == 0:
        return "nothing: no bootstrap"
    parts = []
    if reps.batch_sizes:
        parts.append(f"the {batches} validation batches")
    if reps.seed_level:
        parts.append(f"run-to-run variation ({seeds} seeds per point)")
    text = " and ".join(parts)
    return text if reps.seed_level else f"{text} only, not run-to-run variation (1 seed per point)"


def _verdict(log_linear: RelationFit, seed_level: bool, seeds: int) -> str:
    """The direction in words, only where the 95% interval of the slope allows it."""
    bounds = (log_linear.param_interval or {}).get("b")
    if bounds is None:
        return "no verdict: no interval for the slope"
    if not seed_level:
        return (f"no verdict: with {seeds} seed per point the interval of the slope leaves out "
                f"run-to-run variation (sweep with --seeds 2 or more)")
    low, high = bounds
    span = f"b = {log_linear.params['b']:.3f}, 95% interval {low:.3f} to {high:.3f}"
    if high < 0:
        return f"the optimum falls as the learning rate rises (slope < 0 at 95%: {span})"
    if low > 0:
        return f"the optimum rises with the learning rate (slope > 0 at 95%: {span})"
    return f"no significant dependence at this scale (the slope's interval includes 0: {span})"


def _detectable(log_linear: RelationFit) -> Optional[float]:
    """The smallest |b| that a sweep like this one finds at the intervals' level (two-sided) in
    ``POWER`` of its repeats: (z_(1+level)/2 + z_power) bootstrap sds of b."""
    from scipy.stats import norm

    if not log_linear.param_std:
        return None
    return float((norm.ppf((1 + LEVEL) / 2) + norm.ppf(POWER)) * log_linear.param_std["b"])


def _share(value: Optional[float]) -> Optional[float]:
    """An ALMR (or a bound of its interval) clipped to [0, 1]."""
    return None if value is None else min(1.0, max(0.0, value))


def _recommend(optima, used, best: RelationFit, rep_almr, lrs, sigmas, target_lr,
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
    bounds = None
    if rep_almr is not None:
        params = fit_params_many(best.model, lrs[used], rep_almr, sigmas)
        bounds = interval(np.asarray(predict(best.model, params, target_lr)))
    fitted = lrs[used]
    if not 0.0 <= almr <= 1.0:
        warnings.append(f"the {best.model} relation gives ALMR {almr:.3f} at lr {target_lr:g}, "
                        f"outside [0, 1]: an extrapolation beyond the grid; clipped to "
                        f"{_share(almr):g}")
    return Recommendation(
        lr=float(target_lr), almr=_share(almr),
        low=_share(bounds[0]) if bounds else None, high=_share(bounds[1]) if bounds else None,
        basis=f"the {best.model} relation ({best.formula}) at the target learning rate",
        extrapolated=not fitted.min() <= target_lr <= fitted.max())


def _list(values) -> str:
    return ", ".join(f"{v:g}" for v in values) or "none"


def _bounds(low: Optional[float], high: Optional[float], digits: int = 3) -> str:
    return "-" if low is None else f"{low:.{digits}f} to {high:.{digits}f}"


def format_fit(result: AlmrFit) -> str:
    seeds = (f" x {len(result.seeds)} seeds ({', '.join(str(s) for s in result.seeds)})"
             if len(result.seeds) > 1 else "")
    lines = [f"objective: {result.objective_text}",
             f"grid: ALMR {_list(result.almrs)} x LR {_list(result.lrs)}{seeds}; bootstrap "
             f"{result.replicates} replicates over {result.validation_batches} validation batches"
             + (f" and {result.accuracy_items} {result.accuracy_task} items"
                if result.accuracy_task else "")
             + (f" and {len(result.seeds)} seeds" if len(result.seeds) > 1 else ""),
             f"intervals ({LEVEL:.0%}) cover: {result.covers}",
             f"  {'lr':>9} {'best ALMR':>9} {f'{LEVEL:.0%} interval':>16} {'objective':>9}  note"]
    for o in result.optima:
        note = ("infeasible" if not o.feasible else "at grid edge" if o.at_edge else "")
        lines.append(f"  {o.lr:>9.3g} {o.almr:>9.3f} {_bounds(o.low, o.high):>16} "
                     f"{o.value:>9.4f}  {note}")
    for r in result.relations:
        params = ", ".join(
            f"{k} = {v:.4g}" + (f" ({_bounds(*r.param_interval[k], digits=4)})"
                                if r.param_interval and r.param_interval.get(k) else "")
            for k, v in r.params.items())
        chi2 = f", chi2/dof {r.chi2_per_dof:.2f}" if r.chi2_per_dof is not None else ""
        mark = "  <- best" if r.model == result.best_model else ""
        lines.append(f"{r.model:>10}: {r.formula}: {params}; R^2 {r.r2:.3f}, RMSE {r.rmse:.4f}"
                     f"{chi2}{mark}")
    lines.append(f"verdict: {result.verdict}")
    if result.detectable_slope is not None:
        lines.append(f"power: this sweep finds a slope |{SLOPES['log-linear']}| >= "
                     f"{result.detectable_slope:.3f} (ALMR per e-fold of the learning rate) at "
                     f"{LEVEL:.0%} in {POWER:.0%} of repeats")
    rec = result.recommendation
    interval_text = "" if rec.low is None else f" ({LEVEL:.0%}: {_bounds(rec.low, rec.high)})"
    lines.append(f"recommended: ALMR {rec.almr:.3f}{interval_text} at LR {rec.lr:.3g}: {rec.basis}"
                 + ("; EXTRAPOLATED beyond the swept learning rates" if rec.extrapolated else ""))
    lines.extend(f"warning: {w}" for w in result.warnings)
    return "\n".join(lines)
