"""The ALMR fit recovers a known relation between the optimal ALMR and the learning rate from
synthetic sweep results with noise, and refuses degenerate sweeps with one clear line.

Synthetic results: 9 ALMRs x 7 learning rates, 16 validation batches per run, each batch loss the
true loss plus Gaussian noise (sd 0.01, so each run's loss has sd 0.0025). Every language's true
loss is monotone in the ALMR (as in CPT: more of the additional language lowers its loss and
raises the others'), and the optimum of the objective is exactly almr*(lr):
- weighted (weight 0.5): zh = 3 + 2 (1 - a)^2, en = 2 + 4 (1 - a*) a, so the objective is
  const + (a - a*)^2;
- constrained (tolerance 2%): en = 2 (1 + 0.02 (a / a*)^2) reaches 1.02 x its pre-CPT loss 2
  exactly at a*, and zh = 4 - a falls with a.
Stated tolerances: without noise every optimum is within 0.01 of the truth (a tenth of the ALMR
spacing: the interpolation between swept ALMRs), the generating model fits best and its parameters
are within 2%. With noise every optimum is within 0.06 ALMR and within 4 bootstrap standard
deviations of the truth, and the slope b (or the exponent k) is within 15% of the truth and within
4 of its bootstrap standard deviations. (Over 5 seeds x 4 cases the errors of the optima divided
by their bootstrap sd had an sd of 1.1-1.3, the bootstrap is calibrated; the largest optimum error
was 0.048, the largest slope error 14% and 2.7 sd.)
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from megatron_cpt.almr.fit import RunLosses, SweepResults, fit, format_fit
from megatron_cpt.almr.objective import Objective
from megatron_cpt.errors import UserError

ALMRS = [0.05, 0.15, 0.25, 0.35, 0.45, 0.55, 0.65, 0.75, 0.85]
LRS = [1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3]
BATCHES = 16


def log_linear(lr):
    return 0.9 + 0.05 * math.log(lr)  # 0.324 at 1e-5 .. 0.555 at 1e-3


def power_law(lr):
    return 2.0 * lr ** 0.2  # 0.200 at 1e-5 .. 0.502 at 1e-3


def true_losses(kind: str, almr: float, best: float) -> dict[str, float]:
    if kind == "weighted":
        return {"zh": 3.0 + 2.0 * (1.0 - almr) ** 2, "en": 2.0 + 4.0 * (1.0 - best) * almr}
    return {"zh": 4.0 - almr, "en": 2.0 * (1.0 + 0.02 * (almr / best) ** 2)}


def _run(name, almr, lr, losses: dict[str, float], noise: float, rng) -> RunLosses:
    batches = {lang: tuple(value + noise * rng.standard_normal(BATCHES)) for lang, value in
               losses.items()}
    return RunLosses(name=name, almr=almr, lr=lr, batches=batches,
                     losses={lang: float(np.mean(b)) for lang, b in batches.items()})


def synthetic(relation, kind: str, noise: float, almrs=ALMRS, lrs=LRS, seed=0) -> SweepResults:
    rng = np.random.default_rng(seed)
    runs = [_run(f"almr{a:g}_lr{lr:g}", a, lr, true_losses(kind, a, relation(lr)), noise, rng)
            for lr in lrs for a in almrs]
    reference = _run("reference", None, None, {"zh": 6.0, "en": 2.0}, noise, rng)
    return SweepResults(additional_language="zh", languages=("zh", "en"), runs=tuple(runs),
                        reference=reference)


OBJECTIVES = {"weighted": Objective("weighted", weight=0.5),
              "constrained": Objective("constrained", tolerance=0.02)}


@pytest.mark.parametrize("kind", ["weighted", "constrained"])
@pytest.mark.parametrize("relation, model, params", [
    (log_linear, "log-linear", {"a": 0.9, "b": 0.05}),
    (power_law, "power-law", {"c": 2.0, "k": 0.2})])
def test_noise_free_results_give_the_exact_relation(kind, relation, model, params):
    result = fit(synthetic(relation, kind, noise=0.0), OBJECTIVES[kind], bootstrap=0)
    for optimum in result.optima:
        assert optimum.in_relation
        assert abs(optimum.almr - relation(optimum.lr)) <= 0.01
    assert result.best_model == model
    found = result.best_relation.params
    for name, value in params.items():
        assert found[name] == pytest.approx(value, rel=0.02)
    assert result.best_relation.r2 > 0.999
    assert result.replicates == 0 and result.optima[0].std is None


@pytest.mark.parametrize("kind", ["weighted", "constrained"])
@pytest.mark.parametrize("relation, model, slope", [
    (log_linear, "log-linear", ("b", 0.05)), (power_law, "power-law", ("k", 0.2))])
def test_noisy_results_recover_the_relation_within_tolerance(kind, relation, model, slope):
    result = fit(synthetic(relation, kind, noise=0.01, seed=3), OBJECTIVES[kind], bootstrap=200,
                 seed=1)
    assert result.replicates == 200 and result.validation_batches == BATCHES
    for optimum in result.optima:
        error = abs(optimum.almr - relation(optimum.lr))
        assert error < 0.06 and error < 4 * optimum.std, optimum
        assert optimum.feasible_share == 1.0
    fitted = next(r for r in result.relations if r.model == model)
    name, value = slope
    error = abs(fitted.params[name] - value)
    assert error < 0.15 * value and error < 4 * fitted.param_std[name], fitted
    assert fitted.dof == len(LRS) - 2
    assert fitted.chi2_per_dof is not None
    assert fitted.r2 > 0.9


def test_the_fit_is_deterministic_and_recommends_at_a_target_lr():
    results = synthetic(log_linear, "weighted", noise=0.01, seed=5)
    first = fit(results, OBJECTIVES["weighted"], target_lr=3e-6, seed=7)
    again = fit(results, OBJECTIVES["weighted"], target_lr=3e-6, seed=7)
    assert first.to_dict() == again.to_dict()
    rec = first.recommendation
    assert rec.extrapolated and rec.lr == 3e-6
    assert abs(rec.almr - log_linear(3e-6)) < 0.03
    assert rec.low < rec.almr < rec.high and rec.high - rec.low < 0.1
    inside = fit(results, OBJECTIVES["weighted"], target_lr=3e-4).recommendation
    assert not inside.extrapolated and abs(inside.almr - log_linear(3e-4)) < 0.02
    text = format_fit(first)
    assert "recommended: ALMR" in text and "EXTRAPOLATED" in text and "(95%: " in text


@pytest.mark.parametrize("target_lr, clipped", [(1e-12, 0.0), (100.0, 1.0)])
def test_a_recommendation_outside_0_1_is_clipped_with_a_warning(target_lr, clipped):
    # log_linear gives -0.48 at 1e-12 and 1.13 at 100: far beyond the swept learning rates.
    result = fit(synthetic(log_linear, "weighted", noise=0.01, seed=5), OBJECTIVES["weighted"],
                 target_lr=target_lr, bootstrap=50)
    rec = result.recommendation
    assert rec.extrapolated and rec.almr == clipped
    assert 0.0 <= rec.low <= rec.almr <= rec.high <= 1.0
    [warning] = [w for w in result.warnings if "outside [0, 1]" in w]
    given = re.match(r"the log-linear relation gives ALMR (\S+) at lr (\S+), outside \[0, 1\]: an "
                     r"extrapolation beyond the grid; clipped to (\S+)$", warning)
    assert given, warning
    assert float(given[1]) == pytest.approx(log_linear(target_lr), abs=0.1)
    assert float(given[2]) == target_lr and float(given[3]) == clipped
    assert f"recommended: ALMR {clipped:.3f} (95%: " in format_fit(result)


def test_two_learning_rates_use_the_log_linear_relation():
    # Noise-free power-law optima: both relations pass through both points; by rounding alone
    # the power law has the lower RMSE here.
    result = fit(synthetic(power_law, "weighted", noise=0.0, lrs=[2e-5, 1e-3]),
                 OBJECTIVES["weighted"], bootstrap=0)
    assert {r.model for r in result.relations} == {"log-linear", "power-law"}
    assert all(r.dof == 0 and r.rmse < 1e-12 for r in result.relations)
    assert result.best_model == "log-linear"
    assert any(w.startswith("2 learning rates in the relation") and "log-linear" in w
               for w in result.warnings)


def test_without_a_target_the_lowest_objective_learning_rate_is_recommended():
    # A per-LR offset of every loss, 0.5 per decade away from 1e-4, makes 1e-4 the best LR.
    results = synthetic(log_linear, "weighted", noise=0.0)
    runs = tuple(RunLosses(r.name, r.almr, r.lr, {k: v + abs(math.log10(r.lr) + 4) * 0.5
                                                  for k, v in r.losses.items()}, r.batches)
                 for r in results.runs)
    result = fit(SweepResults("zh", ("zh", "en"), runs, results.reference),
                 OBJECTIVES["weighted"], bootstrap=0)
    assert result.recommendation.lr == 1e-4
    assert result.recommendation.almr == pytest.approx(log_linear(1e-4), abs=0.01)


def test_diverged_runs_are_left_out_and_a_diverged_lr_is_named():
    results = synthetic(log_linear, "weighted", noise=0.0)
    nan = {"zh": float("nan"), "en": float("nan")}
    runs = tuple(RunLosses(r.name, r.almr, r.lr, nan, r.batches) if r.lr == 1e-3 and r.almr > 0.2
                 else r for r in results.runs)
    result = fit(SweepResults("zh", ("zh", "en"), runs, results.reference),
                 OBJECTIVES["weighted"], bootstrap=0)
    assert [o.lr for o in result.optima if o.in_relation] == LRS[:-1]
    assert any(w.startswith("lr 0.001: fewer than 3 ALMRs") for w in result.warnings)


def _error(results, objective=OBJECTIVES["weighted"], **kwargs) -> str:
    with pytest.raises(UserError) as info:
        fit(results, objective, bootstrap=0, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_degenerate_sweeps_give_one_line_errors():
    one_lr = synthetic(log_linear, "weighted", 0.0, lrs=[1e-4])
    assert _error(one_lr).startswith("the sweep has 1 learning rate(s) (0.0001): relating")
    one_almr = synthetic(log_linear, "weighted", 0.0, almrs=[0.33])
    assert _error(one_almr).startswith("the sweep has 1 ALMR value(s) (0.33): finding the best")
    two = synthetic(log_linear, "weighted", 0.0, almrs=[0.2, 0.5])
    assert "needs at least 3" in _error(two)

    base = synthetic(log_linear, "weighted", 0.0)
    nan = {"zh": float("nan"), "en": float("nan")}
    all_nan = SweepResults("zh", ("zh", "en"),
                           tuple(RunLosses(r.name, r.almr, r.lr, nan, {}) for r in base.runs),
                           base.reference)
    assert _error(all_nan) == "every validation loss of the sweep is NaN: nothing to fit"
    hole = SweepResults("zh", ("zh", "en"), base.runs[1:], base.reference)
    assert _error(hole) == "the sweep grid is incomplete: no run for almr 0.05 lr 1e-05"
    no_reference = SweepResults("zh", ("zh", "en"), base.runs, None)
    assert _error(no_reference, OBJECTIVES["constrained"]).startswith(
        "--objective constrained: needs the finite pre-CPT losses")
    assert _error(base, original=["fr"]).startswith("--original: expected languages")
    assert _error(base, Objective("weighted", weight=2.0)) == "--weight: must be in [0, 1], got 2.0"


def test_optima_at_the_grid_edge_are_refused_for_the_relation():
    # The optimum runs off the grid: every LR pinned at 0.85 or beyond.
    results = synthetic(lambda lr: 0.95, "weighted", 0.0)
    message = _error(results)
    assert message.startswith("fewer than 2 learning rates have an optimum inside the ALMR grid")
    assert "lr 1e-05: at the grid edge" in message and "widen --almr" in message
    # The constraint cannot be met at any swept ALMR: en above tolerance everywhere.
    strict = _error(synthetic(lambda lr: 0.01, "constrained", 0.0), OBJECTIVES["constrained"])
    assert "lr 0.001: infeasible" in strict
