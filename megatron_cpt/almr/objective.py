"""What "the best ALMR" means at one learning rate: an objective over the final validation losses,
minimized on curves interpolated between the swept ALMRs (docs/ALMR.md, "Objectives").

- ``constrained`` (default): the lowest additional-language loss among the ALMRs that keep every
  original-language loss within ``tolerance`` (a fraction) of its value before CPT.
- ``weighted``: ``weight x additional + (1 - weight) x mean of the original languages``.

Each language's loss is interpolated over the ALMR grid by a shape-preserving piecewise cubic
(PCHIP: between two swept ALMRs it stays between their losses, so it adds no minimum that the runs
do not show; a quadratic fitted to a falling, flattening loss curve turns up at its end and puts a
false optimum there), then evaluated on a dense grid between the smallest and largest swept ALMR
(never beyond it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

import numpy as np

from megatron_cpt.errors import UserError

DENSE_POINTS = 1001


@dataclass(frozen=True)
class Objective:
    kind: Literal["constrained", "weighted"] = "constrained"
    """``constrained``: lowest additional-language loss with the original languages within
    ``tolerance`` of their pre-CPT loss; ``weighted``: a weighted sum of the two."""
    tolerance: float = 0.02
    """constrained: allowed rise of each original-language loss, as a fraction of its pre-CPT value."""
    weight: float = 0.5
    """weighted: the additional language's weight; the original languages share ``1 - weight``."""

    def validate(self) -> "Objective":
        if self.kind not in ("constrained", "weighted"):
            raise UserError(f"--objective: expected constrained or weighted, got {self.kind!r}")
        if not 0.0 <= self.tolerance < 1.0:
            raise UserError(f"--tolerance: must be in [0, 1), got {self.tolerance}")
        if not 0.0 <= self.weight <= 1.0:
            raise UserError(f"--weight: must be in [0, 1], got {self.weight}")
        return self

    def describe(self, additional: str, original: tuple[str, ...],
                 accuracy_task: Optional[str] = None) -> str:
        """In words; with ``accuracy_task`` the additional language is scored by that task's
        error (1 - accuracy) instead of its validation loss."""
        others = ", ".join(original)
        score = f"{accuracy_task} error (1 - accuracy)" if accuracy_task else f"{additional} loss"
        if self.kind == "constrained":
            best = f"highest {accuracy_task} accuracy" if accuracy_task else f"lowest {score}"
            return (f"{best} with each of {others} at most {self.tolerance:.1%} above its "
                    f"pre-CPT loss")
        return (f"lowest {self.weight:g} x {score} + {1 - self.weight:g} x mean ({others}) loss")


@dataclass(frozen=True)
class Optimum:
    almr: float  # NaN when no ALMR of the grid range satisfies the objective
    value: float  # the objective there (a loss)
    at_edge: bool  # at the smallest or largest swept ALMR: the true optimum may lie outside
    feasible: bool


def interpolant(almrs: np.ndarray, losses: np.ndarray):
    """The loss as a function of the ALMR through the swept points (``almrs`` increasing)."""
    from scipy.interpolate import PchipInterpolator

    return PchipInterpolator(almrs, losses, extrapolate=False)


def objective_curve(objective: Objective, almrs: np.ndarray, additional: np.ndarray,
                    original: np.ndarray, reference: Optional[np.ndarray],
                    at: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
    """(ALMRs, objective there; inf where infeasible) on ``at``, default a dense grid over
    [min(almrs), max(almrs)].

    ``additional``: losses at ``almrs``; ``original``: [languages, almrs]; ``reference``: the
    pre-CPT loss of each original language (needed by ``constrained``). Each may have a trailing
    axis of N bootstrap replicates (the curves are then [points, N]).
    """
    grid = np.linspace(almrs.min(), almrs.max(), DENSE_POINTS) if at is None else at
    add_curve = interpolant(almrs, additional)(grid)
    orig_curves = np.stack([interpolant(almrs, row)(grid) for row in original])
    if objective.kind == "weighted":
        return grid, objective.weight * add_curve + (1 - objective.weight) * orig_curves.mean(axis=0)
    bound = reference[:, None] * (1.0 + objective.tolerance)
    return grid, np.where((orig_curves <= bound).all(axis=0), add_curve, np.inf)


def find_optimum(objective: Objective, almrs: np.ndarray, additional: np.ndarray,
                 original: np.ndarray, reference: Optional[np.ndarray]) -> Optimum:
    """The objective's minimum over [min(almrs), max(almrs)] (arguments as ``objective_curve``)."""
    almr, value, at_edge = find_optima(objective, almrs, additional[:, None], original[..., None],
                                       None if reference is None else reference[:, None])
    if not np.isfinite(value[0]):
        return Optimum(almr=float("nan"), value=float("nan"), at_edge=False, feasible=False)
    return Optimum(almr=float(almr[0]), value=float(value[0]), at_edge=bool(at_edge[0]),
                   feasible=True)


def find_optima(objective: Objective, almrs: np.ndarray, additional: np.ndarray,
                original: np.ndarray, reference: Optional[np.ndarray]):
    """``find_optimum`` of N replicates at once (``additional`` [A, N], ``original`` [K, A, N],
    ``reference`` [K, N]): the optimal ALMR [N] (NaN where infeasible), the objective there and
    whether it is at the edge of the grid."""
    grid, values = objective_curve(objective, almrs, additional, original, reference)
    best = np.argmin(values, axis=0)
    value = values[best, np.arange(values.shape[1])]
    feasible = np.isfinite(value)
    almr = np.where(feasible, grid[best], np.nan)
    return almr, np.where(feasible, value, np.nan), feasible & ((best == 0) | (best == len(grid) - 1))
