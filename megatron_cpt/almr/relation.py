"""The relation between the optimal ALMR and the learning rate, fitted two ways:

    log-linear   almr* = a + b ln(lr)
    power-law    almr* = c lr^k          (fitted as ln almr* = ln c + k ln lr)

Both are weighted least squares (weights 1 / sigma^2 from the bootstrap when there is one) and are
compared by their residuals in ALMR units. Every bootstrap replicate is fitted the same way (all at
once); a parameter's interval is the central 95% of its replicates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

MODELS = ("log-linear", "power-law")
FORMULAS = {"log-linear": "almr = a + b ln(lr)", "power-law": "almr = c lr^k"}
SLOPES = {"log-linear": "b", "power-law": "k"}  # the parameter that says how the optimum moves
# Bootstrap sigmas below this (an optimum pinned in every replicate) would get unbounded weight.
SIGMA_FLOOR = 1e-3
LEVEL = 0.95  # of every interval


@dataclass(frozen=True)
class RelationFit:
    model: str
    params: dict[str, float]
    param_std: Optional[dict[str, float]]  # over the bootstrap replicates
    r2: float  # in ALMR units, unweighted
    rmse: float  # in ALMR units, unweighted
    chi2_per_dof: Optional[float]  # weighted by the bootstrap sigmas; None without them or dof 0
    dof: int
    param_interval: Optional[dict[str, tuple[float, float]]] = None  # 95%, over the replicates

    @property
    def formula(self) -> str:
        return FORMULAS[self.model]

    def predict(self, lr) -> np.ndarray:
        return predict(self.model, self.params, lr)


def predict(model: str, params: dict, lr) -> np.ndarray:
    """The relation at ``lr``; with parameter arrays [N], one prediction per replicate."""
    x = np.log(np.asarray(lr, dtype=float))
    if model == "log-linear":
        return params["a"] + params["b"] * x
    return params["c"] * np.exp(params["k"] * x)


def interval(values: np.ndarray) -> Optional[tuple[float, float]]:
    """The central ``LEVEL`` of the finite values (bootstrap percentiles), or None."""
    values = values[np.isfinite(values)]
    if len(values) < 2:
        return None
    tail = (1.0 - LEVEL) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def fit_params_many(model: str, lrs: np.ndarray, almrs: np.ndarray,
                    sigmas: Optional[np.ndarray]) -> dict[str, np.ndarray]:
    """Weighted least-squares parameters of each row of ``almrs`` [N, n]; NaN for a row the model
    cannot describe (not finite; for the power law, an optimum <= 0)."""
    x = np.log(lrs)
    sigma = np.ones(len(lrs)) if sigmas is None else np.maximum(sigmas, SIGMA_FLOOR)
    almrs = np.atleast_2d(almrs)
    usable = np.isfinite(almrs).all(axis=1)
    if model == "log-linear":
        y, weights = almrs, np.broadcast_to(1.0 / sigma ** 2, almrs.shape)
    else:
        usable &= (np.where(np.isfinite(almrs), almrs, 1.0) > 0).all(axis=1)
        safe = np.where(usable[:, None], almrs, 1.0)
        # In log space the sigma of ln(almr) is sigma / almr.
        y, weights = np.log(safe), (safe / sigma) ** 2
    y = np.where(usable[:, None], y, 0.0)
    total = weights.sum(axis=1)
    x_mean = (weights * x).sum(axis=1) / total
    y_mean = (weights * y).sum(axis=1) / total
    dx = x - x_mean[:, None]
    slope = (weights * dx * (y - y_mean[:, None])).sum(axis=1) / (weights * dx ** 2).sum(axis=1)
    intercept = y_mean - slope * x_mean
    slope, intercept = np.where(usable, slope, np.nan), np.where(usable, intercept, np.nan)
    if model == "log-linear":
        return {"a": intercept, "b": slope}
    return {"c": np.exp(intercept), "k": slope}


def fit_params(model: str, lrs: np.ndarray, almrs: np.ndarray,
               sigmas: Optional[np.ndarray]) -> Optional[dict[str, float]]:
    """Least-squares parameters, or None when the model cannot describe the points (power-law
    needs every optimum > 0)."""
    params = fit_params_many(model, lrs, almrs[None, :], sigmas)
    if not all(np.isfinite(v[0]) for v in params.values()):
        return None
    return {name: float(v[0]) for name, v in params.items()}


def fit_relation(model: str, lrs: np.ndarray, almrs: np.ndarray, sigmas: Optional[np.ndarray],
                 replicate_almrs: Optional[np.ndarray] = None) -> Optional[RelationFit]:
    """The relation through the optima ``almrs`` and, with ``replicate_almrs`` [N, n] (the optima
    of the bootstrap replicates), the spread and 95% interval of its parameters."""
    params = fit_params(model, lrs, almrs, sigmas)
    if params is None:
        return None
    residuals = almrs - predict(model, params, lrs)
    spread = float(((almrs - almrs.mean()) ** 2).sum())
    dof = len(lrs) - 2
    chi2 = None
    if sigmas is not None and dof > 0:
        chi2 = float(((residuals / np.maximum(sigmas, SIGMA_FLOOR)) ** 2).sum() / dof)
    param_std = param_interval = None
    if replicate_almrs is not None:
        replicates = fit_params_many(model, lrs, replicate_almrs, sigmas)
        finite = {k: v[np.isfinite(v)] for k, v in replicates.items()}
        if all(len(v) > 1 for v in finite.values()):
            param_std = {k: float(np.std(v, ddof=1)) for k, v in finite.items()}
            param_interval = {k: interval(v) for k, v in finite.items()}
    return RelationFit(model=model, params=params, param_std=param_std,
                       r2=1.0 - float((residuals ** 2).sum()) / spread if spread > 0 else 1.0,
                       rmse=float(np.sqrt((residuals ** 2).mean())), chi2_per_dof=chi2, dof=dof,
                       param_interval=param_interval)
