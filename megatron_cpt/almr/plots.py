"""PNG plots of an ALMR fit (matplotlib, no display needed: figures render with Agg directly).

- ``heatmap_<language>.png``: final validation loss over the ALMR x LR grid, one per language;
- ``curves.png``: each language's loss and the objective against the ALMR, per LR, with the
  shape-preserving (PCHIP) interpolation between the swept ALMRs, the pre-CPT losses and the
  optimum;
- ``relation.png``: the best ALMR against the LR with its bootstrap interval and both fitted
  relations (and the target LR's recommendation).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from megatron_cpt.almr.fit import AlmrFit
from megatron_cpt.almr.objective import interpolant, objective_curve
from megatron_cpt.almr.relation import FORMULAS, predict


def save_figure(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def _bar(center: float, low, high):
    return None if low is None else [[center - low], [high - center]]


def _lr_colors(count: int):
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    return [cmap(x) for x in np.linspace(0.0, 0.85, count)]


def _score(result: AlmrFit, language: str) -> str:
    """What a language's values are: its validation loss, or a benchmark's error."""
    return result.additional_score if language == result.additional_language else "validation loss"


def _before(result: AlmrFit, language: str, digits: int) -> str:
    value = result.reference.get(language) if result.reference else None
    return "" if value is None or not np.isfinite(value) else f" (before CPT: {value:.{digits}f})"


def plot_heatmap(result: AlmrFit, language: str, path: Path) -> Path:
    grid = np.array(result.losses[language], dtype=float)
    fig = Figure(figsize=(1.1 * len(result.almrs) + 2.2, 0.7 * len(result.lrs) + 1.8))
    ax = fig.add_subplot()
    image = ax.imshow(grid, cmap="viridis_r", aspect="auto", origin="lower")
    fig.colorbar(image, ax=ax, label=f"final {_score(result, language)}")
    ax.set_xticks(range(len(result.almrs)), [f"{a:g}" for a in result.almrs])
    ax.set_yticks(range(len(result.lrs)), [f"{lr:g}" for lr in result.lrs])
    ax.set_xlabel("ALMR (share of training tokens in " + result.additional_language + ")")
    ax.set_ylabel("learning rate")
    middle = np.nanmean(grid) if np.isfinite(grid).any() else 0.0
    for (i, j), value in np.ndenumerate(grid):
        ax.text(j, i, "NaN" if np.isnan(value) else f"{value:.3f}", ha="center", va="center",
                fontsize=8, color="white" if value > middle else "black")
    ax.set_title(f"{_score(result, language)}, {language}{_before(result, language, 3)}")
    return save_figure(fig, path)


def _objective(result: AlmrFit, lr_index: int, at: np.ndarray | None = None):
    """The objective at one LR (``objective_curve`` over the finite runs), or None."""
    almrs = np.array(result.almrs)
    add = np.array(result.losses[result.additional_language][lr_index], dtype=float)
    orig = np.array([result.losses[lang][lr_index] for lang in result.original_languages],
                    dtype=float)
    finite = np.isfinite(add) & np.isfinite(orig).all(axis=0)
    if finite.sum() < 2:
        return None
    reference = (None if result.reference is None else
                 np.array([result.reference[lang] for lang in result.original_languages]))
    grid, values = objective_curve(result.objective, almrs[finite], add[finite], orig[:, finite],
                                   reference, at=None if at is None else at[finite])
    return grid, np.where(np.isfinite(values), values, np.nan)


def plot_curves(result: AlmrFit, path: Path) -> Path:
    languages = (result.additional_language, *result.original_languages)
    panels = len(languages) + 1
    fig = Figure(figsize=(4.2 * panels, 3.8))
    axes = fig.subplots(1, panels)
    almrs = np.array(result.almrs)
    dense = np.linspace(almrs.min(), almrs.max(), 200)
    colors = _lr_colors(len(result.lrs))
    for ax, language in zip(axes, languages):
        grid = np.array(result.losses[language], dtype=float)
        for row, lr, color in zip(grid, result.lrs, colors):
            finite = np.isfinite(row)
            ax.plot(almrs[finite], row[finite], "o", color=color, label=f"lr {lr:g}")
            if finite.sum() >= 2:
                ax.plot(dense, interpolant(almrs[finite], row[finite])(dense), "-", color=color,
                        lw=1)
        before = ""
        if result.reference and language == result.additional_language:
            before = _before(result, language, 2)
        elif result.reference:
            ax.axhline(result.reference[language], color="grey", ls="--", lw=1, label="before CPT")
            if result.objective.kind == "constrained" and language in result.original_languages:
                ax.axhline(result.reference[language] * (1 + result.objective.tolerance),
                           color="red", ls=":", lw=1, label=f"+{result.objective.tolerance:.1%}")
        ax.set_title(f"{language} {_score(result, language)}{before}")
        ax.set_xlabel("ALMR")
    axes[0].legend(fontsize=7)
    axes[1].legend(fontsize=7)
    ax = axes[-1]
    for index, (optimum, color) in enumerate(zip(result.optima, colors)):
        curve, points = _objective(result, index), _objective(result, index, at=almrs)
        if curve is None:
            continue
        ax.plot(*points, "o", color=color, label=f"lr {optimum.lr:g}")
        ax.plot(*curve, "-", color=color, lw=1)
        if optimum.feasible:
            xerr = _bar(optimum.almr, optimum.low, optimum.high)
            ax.errorbar([optimum.almr], [optimum.value], xerr=xerr, fmt="*", ms=12, color=color,
                        capsize=3)
    ax.set_title("objective (* = optimum, bars: its 95% interval)")
    ax.set_xlabel("ALMR")
    fig.suptitle(result.objective_text, fontsize=9)
    return save_figure(fig, path)


def plot_relation(result: AlmrFit, path: Path) -> Path:
    fig = Figure(figsize=(6.4, 4.4))
    ax = fig.add_subplot()
    for optimum in result.optima:
        if not optimum.feasible:
            continue
        yerr = _bar(optimum.almr, optimum.low, optimum.high)
        ax.errorbar([optimum.lr], [optimum.almr], yerr=yerr, fmt="o", capsize=4, color="black",
                    mfc="black" if optimum.in_relation else "white")
    rec = result.recommendation
    span = [min(result.lrs), max(result.lrs), rec.lr]
    lrs = np.geomspace(min(span) / 1.5, max(span) * 1.5, 200)
    for relation, style in zip(result.relations, ("-", "--")):
        params = ", ".join(f"{k}={v:.3g}" for k, v in relation.params.items())
        ax.plot(lrs, predict(relation.model, relation.params, lrs), style, lw=1.2,
                label=f"{FORMULAS[relation.model]}: {params} (R^2 {relation.r2:.3f})")
    yerr = _bar(rec.almr, rec.low, rec.high)
    ax.errorbar([rec.lr], [rec.almr], yerr=yerr, fmt="*", ms=14, color="red", capsize=4,
                label=f"recommended: ALMR {rec.almr:.3f} at lr {rec.lr:g}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("best ALMR")
    ax.set_title("best ALMR against the learning rate, 95% intervals (hollow: at the grid edge, "
                 f"not fitted)\n{result.verdict.split(' (')[0]}", fontsize=8)
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def write_plots(result: AlmrFit, out_dir: Path) -> list[Path]:
    languages = (result.additional_language, *result.original_languages)
    paths = [plot_heatmap(result, lang, out_dir / f"heatmap_{lang}.png") for lang in languages]
    paths.append(plot_curves(result, out_dir / "curves.png"))
    paths.append(plot_relation(result, out_dir / "relation.png"))
    return paths
