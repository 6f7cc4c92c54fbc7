"""Small matplotlib helpers for the PNGs of run reports: series over training steps."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

Series = dict[str, Sequence[Optional[float]]]


def new_figure(rows: int = 1, height: float = 3.2):
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(rows, 1, figsize=(8, height * rows), sharex=True, squeeze=False)
    return fig, [row[0] for row in axes]


def plot_lines(ax, steps: Sequence[int], series: Series, ylabel: str) -> None:
    """One line per series; missing values (None) leave gaps."""
    for label, values in series.items():
        ax.plot(steps, [float("nan") if v is None else v for v in values], label=label,
                marker="." if len(steps) < 50 else None)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    if len(series) > 1:
        ax.legend(loc="best", fontsize="small")


def plot_stacked(ax, steps: Sequence[int], series: Series, ylabel: str) -> None:
    """Series stacked on top of each other (missing values count as 0)."""
    ax.stackplot(steps, *[[v or 0.0 for v in values] for values in series.values()],
                 labels=list(series), alpha=0.85)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper right", fontsize="small")


def save_figure(fig, path: Path, title: str) -> None:
    import matplotlib.pyplot as plt

    fig.axes[-1].set_xlabel("step")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
