"""The learning-rate schedule: megatron-core's ``OptimizerParamScheduler``, counted in steps.

Warm-up is linear from ``optim.schedule.init_lr`` to ``optim.lr``; then cosine, linear, constant or
warmup-stable-decay down to ``optim.min_lr``. A run that starts from pretrained weights starts this
schedule at step 0 (CPT re-warm); a resumed run continues it from the checkpoint.
"""

from __future__ import annotations

from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

from megatron_cpt.config.optim import OptimConfig

_STYLES = {"cosine": "cosine", "linear": "linear", "constant": "constant", "wsd": "WSD"}


def build_scheduler(optimizer, optim: OptimConfig, train_steps: int) -> OptimizerParamScheduler:
    schedule = optim.schedule
    warmup = optim.warmup_steps(train_steps)
    return OptimizerParamScheduler(
        optimizer,
        init_lr=schedule.init_lr,
        max_lr=optim.lr,
        min_lr=optim.min_lr,
        lr_warmup_steps=warmup,
        # megatron-core counts the decay end from step 0, warm-up included.
        lr_decay_steps=warmup + optim.decay_steps(train_steps),
        lr_decay_style=_STYLES[schedule.decay_style],
        start_wd=optim.weight_decay,
        end_wd=optim.weight_decay,
        wd_incr_steps=max(1, train_steps),
        wd_incr_style="constant",
        use_checkpoint_opt_param_scheduler=True,
        override_opt_param_scheduler=False,
        wsd_decay_steps=schedule.wsd_decay_steps,
        lr_wsd_decay_style=schedule.wsd_decay_style,
    )


def current_lr(optimizer) -> float:
    return optimizer.param_groups[0]["lr"]
