"""The fit's 95% intervals cover the true optimum and the true slope of synthetic loss surfaces at
about their nominal rate when the runs vary from seed to seed, and state a direction only when the
interval of the slope excludes 0.

Synthetic sweeps: the study's grid (ALMR 0.1-0.9 x LR 1e-3, 3e-3, 1e-2), 3 seeds per point, 8
validation batches per run. The optimum is a* = -0.091 - 0.1 ln(lr) (0.60, 0.49, 0.37), and
- weighted (0.5): zh = 3 + 2 (1 - a)^2, en = 2 + 4 (1 - a*) a, so the objective is
  const + (a - a*)^2;
- constrained (2%): zh = 4 - a, en = 2 (1 + 0.02 (a / a*)^2), at its bound exactly at a*.
Each run's losses: the true loss + a seed effect (sd 0.02, half of its variance shared by the
learning rates of one ALMR and seed, which read the same samples) + each validation batch's own
difficulty (sd 0.05, the same for every run and the reference) + batch noise (sd 0.01).
The true optimum is that of the surface through the true losses at the swept ALMRs (the
interpolation between them is the method's, not noise: here within 0.015 of a*), and the true
slope that of the relation through those optima. Over 100 sweeps per objective (fixed seeds, so
the test is deterministic) the intervals of the optima cover the truth 95.3% of the time for
either objective, those of the slope 95% (weighted) and 98% (constrained); intervals from one seed
per point, which cover the validation batches only, cover the optima 22% and the slope 18% of the
time (40 sweeps).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from megatron_cpt.almr.fit import RunLosses, SweepResults, fit, format_fit
from megatron_cpt.almr.objective import Objective

ALMRS = (0.1, 0.3, 0.5, 0.7, 0.9)
LRS = (1e-3, 3e-3, 1e-2)
BATCHES = 8
SLOPE = -0.1
SWEEPS, REPLICATES = 100, 200
OBJECTIVES = {"weighted": Objective("weighted", weight=0.5),
              "constrained": Objective("constrained", tolerance=0.02)}


def optimum(lr: float, slope: float = SLOPE) -> float:
    return 0.6 + slope * math.log(lr / 1e-3)


def true_losses(kind: str, almr: float, best: float) -> dict[str, float]:
    if kind == "weighted":
        return {"zh": 3.0 + 2.0 * (1.0 - almr) ** 2, "en": 2.0 + 4.0 * (1.0 - best) * almr}
    return {"zh": 4.0 - almr, "en": 2.0 * (1.0 + 0.02 * (almr / best) ** 2)}


def synthetic(kind: str, rng, seeds: int = 3, seed_sd: float = 0.02, batch_sd: float = 0.01,
              difficulty_sd: float = 0.05, slope: float = SLOPE) -> SweepResults:
    languages = ("zh", "en")
    difficulty = {lang: rng.normal(0.0, difficulty_sd, BATCHES) for lang in languages}
    runs = []
    for almr in ALMRS:
        for seed in range(seeds):
            shared = {lang: rng.normal(0.0, seed_sd * math.sqrt(0.5)) for lang in languages}
            for lr in LRS:
                true = true_losses(kind, almr, optimum(lr, slope))
                batches = {lang: tuple(true[lang] + shared[lang] + difficulty[lang]
                                       + rng.normal(0.0, seed_sd * math.sqrt(0.5))
                                       + rng.normal(0.0, batch_sd, BATCHES))
                           for lang in languages}
                runs.append(RunLosses(f"almr{almr:g}_lr{lr:g}_seed{seed}", almr, lr,
                                      {lang: float(np.mean(b)) for lang, b in batches.items()},
                                      batches, seed=seed))
    before = {"zh": 6.0, "en": 2.0}
    batches = {lang: tuple(value + difficulty[lang] + rng.normal(0.0, batch_sd, BATCHES))
               for lang, value in before.items()}
    reference = RunLosses("reference", None, None,
                          {lang: float(np.mean(b)) for lang, b in batches.items()}, batches)
    return SweepResults("zh", languages, tuple(runs), reference)


def truth(kind: str, slope: float = SLOPE):
    """The optima and the slope of the noise-free sweep."""
    free = fit(synthetic(kind, np.random.default_rng(0), seeds=1, seed_sd=0.0, batch_sd=0.0,
                         difficulty_sd=0.0, slope=slope), OBJECTIVES[kind], bootstrap=0)
    return [o.almr for o in free.optima], free.relations[0].params["b"]


def coverage(kind: str, seeds: int, sweeps: int = SWEEPS):
    optima, slope = truth(kind)
    assert all(abs(a - optimum(lr)) < 0.015 for a, lr in zip(optima, LRS))
    rng = np.random.default_rng(2026)
    hits, slope_hits = 0, 0
    for sweep in range(sweeps):
        result = fit(synthetic(kind, rng, seeds=seeds), OBJECTIVES[kind], bootstrap=REPLICATES,
                     seed=sweep)
        hits += sum(o.low <= a <= o.high for o, a in zip(result.optima, optima)
                    if o.low is not None)
        low, high = result.relations[0].param_interval["b"]
        slope_hits += low <= slope <= high
    return hits / (sweeps * len(LRS)), slope_hits / sweeps


@pytest.mark.parametrize("kind", ["weighted", "constrained"])
def test_intervals_cover_the_true_optimum_and_slope_at_about_95_percent(kind):
    optima, slope = coverage(kind, seeds=3)
    assert 0.92 <= optima <= 0.98, optima
    assert 0.92 <= slope <= 1.0, slope


def test_intervals_from_one_seed_per_point_miss_the_run_to_run_variation():
    optima, slope = coverage("weighted", seeds=1, sweeps=40)
    assert optima < 0.4 and slope < 0.4


def test_the_verdict_says_only_what_the_slope_interval_allows():
    rng = np.random.default_rng(11)
    falls = fit(synthetic("weighted", rng, seed_sd=0.005), OBJECTIVES["weighted"])
    assert falls.relations[0].param_interval["b"][1] < 0
    assert falls.verdict.startswith("the optimum falls as the learning rate rises (slope < 0 at "
                                    "95%: b = -0.")
    assert falls.covers == "the 8 validation batches and run-to-run variation (3 seeds per point)"
    assert 0 < falls.detectable_slope < 0.1
    text = format_fit(falls)
    assert "verdict: the optimum falls" in text and "power: this sweep finds a slope |b| >= " in text

    flat = fit(synthetic("weighted", rng, slope=0.0), OBJECTIVES["weighted"])
    low, high = flat.relations[0].param_interval["b"]
    assert low < 0 < high
    assert flat.verdict.startswith("no significant dependence at this scale (the slope's "
                                   "interval includes 0: b = ")

    one_seed = fit(synthetic("weighted", rng, seeds=1, seed_sd=0.005), OBJECTIVES["weighted"])
    assert one_seed.verdict.startswith("no verdict: with 1 seed per point")
    assert one_seed.covers.endswith("only, not run-to-run variation (1 seed per point)")
    assert one_seed.detectable_slope is None
