"""The relation between the optimal ALMR and the learning rate, fitted two ways:

    log-linear   almr* = a + b ln(lr)
    power-law    almr* = c lr^k          (fitted as ln almr* = ln c + k ln lr)

Both are weighted least squares (weights 1 / sigma^2 from the bootstrap when there is one) and are
compared by their residuals in ALMR units.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

MODELS = ("log-linear", "power-law")
FORMULAS = {"log-linear": "almr = a + b ln(lr)", "power-law": "almr = c lr^k"}
# Bootstrap sigmas below this (an optimum pinned in every replicate) would get unbounded weight.
SIGMA_FLOOR = 1e-3


@dataclass(frozen=True)
class RelationFit:
    model: str
    params: dict[str, float]
    param_std: Optional[dict[str, float]]  # over the bootstrap replicates
    r2: float  # in ALMR units, unweighted
    rmse: float  # in ALMR units, unweighted
    chi2_per_dof: Optional[float]  # weighted by the bootstrap sigmas; None without them or dof 0
    dof: int

    @property
    def formula(self) -> str:
        return FORMULAS[self.model]

    def predict(self, lr) -> np.ndarray:
        return predict(self.model, self.params, lr)


def predict(model: str, params: dict[str, float], lr) -> np.ndarray:
    x = np.log(np.asarray(lr, dtype=float))
    if model == "log-linear":
        return params["a"] + params["b"] * x
    return params["c"] * np.exp(params["k"] * x)


def fit_params(model: str, lrs: np.ndarray, almrs: np.ndarray,
               sigmas: Optional[np.ndarray]) -> Optional[dict[str, float]]:
    """Least-squares parameters, or None when the model cannot describe the points (power-law
    needs every optimum > 0)."""
    x = np.log(lrs)
    sigma = np.ones_like(almrs) if sigmas is None else np.maximum(sigmas, SIGMA_FLOOR)
    if model == "log-linear":
        b, a = np.polyfit(x, almrs, 1, w=1.0 / sigma)
        return {"a": float(a), "b": float(b)}
    if (almrs <= 0).any():
        return None
    # In log space the sigma of ln(almr) is sigma / almr.
    k, ln_c = np.polyfit(x, np.log(almrs), 1, w=almrs / sigma)
    return {"c": float(np.exp(ln_c)), "k": float(k)}


def fit_relation(model: str, lrs: np.ndarray, almrs: np.ndarray, sigmas: Optional[np.ndarray],
                 replicate_params: list[dict[str, float]]) -> Optional[RelationFit]:
    params = fit_params(model, lrs, almrs, sigmas)
    if params is None:
        return None
    residuals = almrs - predict(model, params, lrs)
    spread = float(((almrs - almrs.mean()) ** 2).sum())
    dof = len(lrs) - 2
    chi2 = None
    if sigmas is not None and dof > 0:
        chi2 = float(((residuals / np.maximum(sigmas, SIGMA_FLOOR)) ** 2).sum() / dof)
    param_std = None
    if len(replicate_params) > 1:
        param_std = {k: float(np.std([p[k] for p in replicate_params], ddof=1)) for k in params}
    return RelationFit(model=model, params=params, param_std=param_std,
                       r2=1.0 - float((residuals ** 2).sum()) / spread if spread > 0 else 1.0,
                       rmse=float(np.sqrt((residuals ** 2).mean())), chi2_per_dof=chi2, dof=dof)
