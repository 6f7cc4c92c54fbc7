"""The sweep's losses as arrays, and bootstrap replicates of them that vary as the losses would if
the sweep were run again: with other validation batches and, with seed replicates, other seeds.

A grid point's loss is the mean over its R seed replicates. Two sources of noise, crossed (every
run evaluates the same validation batches), each resampled on its own in every replicate:

- **Validation batches.** The batch indices are drawn once, with replacement, and applied to every
  run and to the reference (a paired bootstrap): a run's loss moves by the resampled mean minus the
  full mean of its batch losses (per-item errors for an accuracy).
- **Seeds** (R >= 2). The run-to-run variation, from the residuals of the runs around their
  point's mean. One residual vector per (ALMR, seed) holds that seed's residuals at every learning
  rate and in every language: at one ALMR a seed reads the same training samples whatever the
  learning rate, so what it does to the losses is shared across learning rates, and a vector keeps
  that together. The vectors of all ALMRs are pooled (the spread is taken to be the same at every
  ALMR, which lets 3 seeds x 5 ALMRs estimate it from 10 degrees of freedom rather than 2), scaled
  by sqrt(R / (R - 1)) (a residual is smaller than the noise it estimates), and each replicate adds
  to each ALMR's losses the mean of R vectors drawn from the pool with replacement.

Resampling two crossed factors independently (Owen's "pigeonhole" bootstrap) counts their
interaction twice: the intervals err on the wide side. With one seed per point there is no seed
level: the intervals then cover the validation batches only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from megatron_cpt.almr.results import RunLosses, SweepResults
from megatron_cpt.errors import UserError


@dataclass(frozen=True)
class LossGrid:
    almrs: np.ndarray  # [A], increasing
    lrs: np.ndarray  # [L], increasing
    seeds: tuple[int, ...]  # the replicates of every point
    runs: dict[str, np.ndarray]  # language -> final loss of every run [L, A, S] (NaN: diverged)
    batches: dict[str, np.ndarray]  # language -> per-batch losses [L, A, S, B] (NaN: diverged)
    reference: Optional[dict[str, float]]
    reference_batches: dict[str, np.ndarray]  # language -> [B]

    @property
    def means(self) -> dict[str, np.ndarray]:
        """Each point's loss [L, A]: the mean over its seeds, NaN when one of them diverged."""
        return {lang: runs.mean(axis=-1) for lang, runs in self.runs.items()}

    def diverged(self) -> list[str]:
        """'almr A lr L seed S' of every diverged run."""
        first = next(iter(self.runs.values()))
        return [f"almr {self.almrs[a]:g} lr {self.lrs[i]:g} seed {self.seeds[s]}"
                for i, a, s in zip(*np.nonzero(np.isnan(first)))]


def _list(values) -> str:
    return ", ".join(f"{v:g}" for v in values) or "none"


def loss_grid(results: SweepResults, languages: Sequence[str]) -> LossGrid:
    """The runs as arrays; one-line errors for a grid that cannot be fitted."""
    almrs = sorted({r.almr for r in results.runs})
    lrs = sorted({r.lr for r in results.runs})
    seeds = tuple(sorted({r.seed for r in results.runs}, key=lambda s: (s is None, s or 0)))
    if len(lrs) < 2:
        raise UserError(f"the sweep has {len(lrs)} learning rate(s) ({_list(lrs)}): relating the "
                        f"best ALMR to the learning rate needs at least 2 (3 for a goodness of fit)")
    if len(almrs) < 3:
        raise UserError(f"the sweep has {len(almrs)} ALMR value(s) ({_list(almrs)}): finding the "
                        f"best ALMR at a learning rate needs at least 3")
    cells = {(r.lr, r.almr, r.seed): r for r in results.runs}
    missing = [f"almr {a:g} lr {lr:g}" + (f" seed {s}" if len(seeds) > 1 else "")
               for lr in lrs for a in almrs for s in seeds if (lr, a, s) not in cells]
    if missing:
        raise UserError(f"the sweep grid is incomplete: no run for {', '.join(missing)}")
    grid_runs = [[[cells[(lr, a, s)] for s in seeds] for a in almrs] for lr in lrs]
    runs = {lang: np.array([[[run.losses[lang] for run in point] for point in row]
                            for row in grid_runs]) for lang in languages}
    everyone = list(results.runs) + ([results.reference] if results.reference else [])
    batches, reference_batches = {}, {}
    for lang in languages:
        sizes = {len(r.batches.get(lang, ())) for r in everyone if math.isfinite(r.losses[lang])}
        if len(sizes) == 1 and min(sizes) >= 2:
            size = sizes.pop()
            batches[lang] = np.array([[[_batches(run, lang, size) for run in point]
                                       for point in row] for row in grid_runs])
            if results.reference:
                reference_batches[lang] = _batches(results.reference, lang, size)
    if len(batches) < len(languages):  # the batch level for every language, or for none
        batches, reference_batches = {}, {}
    reference = ({lang: results.reference.losses[lang] for lang in languages}
                 if results.reference else None)
    return LossGrid(almrs=np.array(almrs), lrs=np.array(lrs), seeds=seeds, runs=runs,
                    batches=batches, reference=reference, reference_batches=reference_batches)


def _batches(run: RunLosses, language: str, size: int) -> np.ndarray:
    if not math.isfinite(run.losses[language]):
        return np.full(size, np.nan)
    return np.array(run.batches[language], dtype=float)


@dataclass(frozen=True)
class Replicates:
    losses: dict[str, np.ndarray]  # language -> [N, L, A]
    reference: Optional[dict[str, np.ndarray]]  # language -> [N]
    count: int  # N (0: neither level could be resampled)
    batch_sizes: dict[str, int]  # language -> validation batches (items) resampled; {} if none
    seed_level: bool  # run-to-run variation resampled (R >= 2)


def replicate(grid: LossGrid, count: int, seed: int) -> Replicates:
    """``count`` bootstrap replicates of the point losses (and of the reference)."""
    means = grid.means
    seed_level = len(grid.seeds) >= 2
    if count <= 0 or not (grid.batches or seed_level):
        return Replicates({}, None, 0, {}, False)
    rng = np.random.default_rng(seed)
    losses = {lang: np.broadcast_to(m, (count, *m.shape)).copy() for lang, m in means.items()}
    reference = None
    if grid.reference is not None:
        reference = {lang: np.full(count, value) for lang, value in grid.reference.items()}
    sizes = {lang: b.shape[-1] for lang, b in grid.batches.items()}
    # The same draw for every language with that many values (validation batches, or items).
    index = {size: rng.integers(0, size, size=(count, size)) for size in sorted(set(sizes.values()))}
    for lang, batches in grid.batches.items():
        draw = index[sizes[lang]]
        # [L, A, S, N]: each run's resampled mean minus its full mean, then the mean over seeds.
        shift = batches[..., draw].mean(axis=-1) - batches.mean(axis=-1)[..., None]
        losses[lang] += np.moveaxis(shift.mean(axis=2), -1, 0)
        if reference is not None and lang in grid.reference_batches:
            ref = grid.reference_batches[lang]
            reference[lang] += ref[draw].mean(axis=-1) - ref.mean()
    if seed_level:
        _add_seed_noise(grid, losses, rng, count)
    return Replicates(losses, reference, count, sizes, seed_level)


def _add_seed_noise(grid: LossGrid, losses: dict[str, np.ndarray], rng, count: int) -> None:
    languages = list(grid.runs)
    runs = np.stack([grid.runs[lang] for lang in languages], axis=-1)  # [L, A, S, K]
    seeds = runs.shape[2]
    residuals = runs - runs.mean(axis=2, keepdims=True)
    vectors = np.moveaxis(residuals, 0, 2)  # [A, S, L, K]: one vector per (ALMR, seed)
    pool = vectors.reshape(-1, *vectors.shape[2:])
    complete = np.isfinite(pool).all(axis=(1, 2))
    pool = pool[complete]
    if len(pool) == 0:
        return
    pool = pool * math.sqrt(seeds / (seeds - 1)) * _small_sample_factor(
        complete.reshape(vectors.shape[:2]).any(axis=1).sum() * (seeds - 1))
    draw = rng.integers(0, len(pool), size=(count, runs.shape[1], seeds))  # [N, A, S]
    noise = pool[draw].mean(axis=2)  # [N, A, L, K]
    for k, lang in enumerate(languages):
        losses[lang] += np.swapaxes(noise[..., k], 1, 2)


def _small_sample_factor(dof: int) -> float:
    """t_dof / z at the intervals' level: the noise level comes from ``dof`` degrees of freedom,
    and an interval from an estimated sd is a t interval, wider than a normal one."""
    from scipy.stats import norm, t

    from megatron_cpt.almr.relation import LEVEL

    quantile = (1 + LEVEL) / 2
    return float(t.ppf(quantile, dof) / norm.ppf(quantile))
