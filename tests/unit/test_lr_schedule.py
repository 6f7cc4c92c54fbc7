"""The LR schedule built from OptimConfig: linear warm-up, then cosine / linear / WSD to min_lr."""

from __future__ import annotations

import math

import pytest
import torch

from megatron_cpt.config.optim import OptimConfig, ScheduleConfig
from megatron_cpt.train.schedule import build_scheduler


class _Optimizer:
    """The two things OptimizerParamScheduler touches."""

    def __init__(self):
        self.param_groups = [{"params": [torch.zeros(1)], "lr": 0.0, "weight_decay": 0.0}]


def _lrs(optim: OptimConfig, steps: int) -> list[float]:
    optimizer = _Optimizer()
    scheduler = build_scheduler(optimizer, optim, steps)
    values = [optimizer.param_groups[0]["lr"]]
    for _ in range(steps):
        scheduler.step(increment=1)
        values.append(optimizer.param_groups[0]["lr"])
    return values


def test_warmup_then_cosine_to_min_lr():
    optim = OptimConfig(lr=1.0, min_lr=0.1, schedule=ScheduleConfig(warmup_steps=10, decay_style="cosine"))
    lrs = _lrs(optim, 110)
    assert lrs[0] == 0.0 and lrs[5] == pytest.approx(0.5) and lrs[10] == pytest.approx(1.0)
    # Half-way through the 100 decay steps: the cosine midpoint.
    assert lrs[60] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lrs[110] == pytest.approx(0.1)


def test_cpt_rewarm_starts_from_init_lr():
    optim = OptimConfig(lr=1e-4, min_lr=1e-5,
                        schedule=ScheduleConfig(warmup_steps=4, init_lr=1e-6, decay_style="linear"))
    lrs = _lrs(optim, 20)
    assert lrs[0] == pytest.approx(1e-6) and lrs[4] == pytest.approx(1e-4)
    assert lrs[12] == pytest.approx(1e-5 + (1e-4 - 1e-5) * 0.5)


def test_warmup_stable_decay():
    optim = OptimConfig(lr=1.0, min_lr=0.0, schedule=ScheduleConfig(
        warmup_steps=2, decay_style="wsd", wsd_decay_steps=4, wsd_decay_style="linear"))
    lrs = _lrs(optim, 12)
    assert lrs[2:9] == [pytest.approx(1.0)] * 7  # stable until the last 4 steps
    assert lrs[10] == pytest.approx(0.5) and lrs[12] == pytest.approx(0.0)


def test_constant():
    optim = OptimConfig(lr=0.3, min_lr=0.0, schedule=ScheduleConfig(decay_style="constant"))
    assert set(_lrs(optim, 5)) == {0.3}
