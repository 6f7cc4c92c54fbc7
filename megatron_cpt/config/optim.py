"""OptimConfig: optimizer, gradient clipping and the learning-rate schedule."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from megatron_cpt.errors import ConfigError


@dataclass
class ScheduleConfig:
    warmup_steps: int = 0
    # Warm-up as a share of train.steps instead (fine-tuning recipes state it so, and a run whose
    # steps come from data.chat.epochs needs it); rounded to whole steps.
    warmup_fraction: Optional[float] = None
    # cosine | linear | constant | wsd (warmup-stable-decay).
    decay_style: Literal["cosine", "linear", "constant", "wsd"] = "cosine"
    # Steps over which LR decays after warm-up; None = until the end of training.
    decay_steps: Optional[int] = None
    # For wsd: length of the final decay phase and its shape.
    wsd_decay_steps: Optional[int] = None
    wsd_decay_style: Literal["linear", "cosine", "exponential", "minus_sqrt"] = "linear"
    # LR at the start of warm-up (CPT re-warms from here when starting from pretrained weights).
    init_lr: float = 0.0


@dataclass
class OptimConfig:
    optimizer: Literal["adam", "sgd"] = "adam"
    lr: float = 3e-4
    min_lr: float = 3e-5
    weight_decay: float = 0.1
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1e-8
    clip_grad: float = 1.0
    schedule: ScheduleConfig = None  # type: ignore[assignment]

    def __post_init__(self):
        if self.schedule is None:
            self.schedule = ScheduleConfig()

    def validate(self, train_steps: int) -> None:
        if self.lr <= 0:
            raise ConfigError(f"optim.lr: must be positive, got {self.lr}")
        if not 0 <= self.min_lr <= self.lr:
            raise ConfigError(f"optim.min_lr: must be in [0, optim.lr={self.lr}], got {self.min_lr}")
        if self.weight_decay < 0:
            raise ConfigError(f"optim.weight_decay: must be >= 0, got {self.weight_decay}")
        for name in ("adam_beta1", "adam_beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"optim.{name}: must be in [0, 1), got {getattr(self, name)}")
        if self.clip_grad < 0:
            raise ConfigError(f"optim.clip_grad: must be >= 0 (0 = off), got {self.clip_grad}")
        s = self.schedule
        if s.warmup_steps < 0:
            raise ConfigError(f"optim.schedule.warmup_steps: must be >= 0, got {s.warmup_steps}")
        if s.warmup_fraction is not None:
            if s.warmup_steps:
                raise ConfigError("optim.schedule.warmup_fraction: give it or warmup_steps, not both")
            if not 0 <= s.warmup_fraction < 1:
                raise ConfigError(f"optim.schedule.warmup_fraction: must be in [0, 1), got "
                                  f"{s.warmup_fraction}")
        decay = self.decay_steps(train_steps)
        if decay <= 0:
            raise ConfigError(f"optim.schedule.decay_steps: warm-up ({self.warmup_steps(train_steps)}) "
                              "leaves no steps to decay over")
        if s.decay_style == "wsd":
            if s.wsd_decay_steps is None or not 0 < s.wsd_decay_steps <= decay:
                raise ConfigError(
                    f"optim.schedule.wsd_decay_steps: wsd needs 0 < wsd_decay_steps <= {decay}, "
                    f"got {s.wsd_decay_steps}")
        if not 0 <= s.init_lr <= self.lr:
            raise ConfigError(f"optim.schedule.init_lr: must be in [0, optim.lr], got {s.init_lr}")

    def warmup_steps(self, train_steps: int) -> int:
        s = self.schedule
        if s.warmup_fraction is None:
            return s.warmup_steps
        return round(s.warmup_fraction * train_steps)

    def decay_steps(self, train_steps: int) -> int:
        s = self.schedule
        return s.decay_steps if s.decay_steps is not None else train_steps - self.warmup_steps(
            train_steps)
