"""Per-step throughput figures of a run: tokens/s and TFLOP/s per GPU, MFU, peak memory.

Tokens are the input tokens of the global batch (``global_batch_size x seq_length``), whether or not
the loss mask counts them; FLOPs are ``megatron_cpt.profile.flops``' model FLOPs (and hardware FLOPs
with recomputation); MFU divides by the dense peak of ``megatron_cpt.profile.hardware``'s table, and
is ``None`` on a device the table does not know.
"""

from __future__ import annotations

import resource
from typing import Optional

from megatron_cpt.config.recipe import Recipe
from megatron_cpt.profile.flops import flops_per_token
from megatron_cpt.profile.hardware import Peak, detect_peak, training_precision


def pipeline_bubble_estimate(pp: int, vpp: Optional[int], microbatches: int) -> float:
    """The idle share of a 1F1B (interleaved with ``vpp``) schedule: (p-1) / (m v + p - 1)."""
    return (pp - 1) / (microbatches * (vpp or 1) + pp - 1)


def peak_memory_gb() -> dict[str, float]:
    """The process's peak memory so far: CUDA allocated and reserved, or resident on the CPU."""
    import torch

    if torch.cuda.is_available():
        return {"memory_allocated_peak_gb": torch.cuda.max_memory_allocated() / 1e9,
                "memory_reserved_peak_gb": torch.cuda.max_memory_reserved() / 1e9}
    return {"memory_rss_peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9}


class ThroughputMeter:
    def __init__(self, recipe: Recipe, world_size: int, peak: Optional[Peak] = None):
        model = recipe.model
        flops = flops_per_token(model, recipe.train.seq_length, tp=recipe.parallel.tp)
        self.tokens_per_step = recipe.train.global_batch_size * recipe.train.seq_length
        self.model_flops_per_step = flops.model * self.tokens_per_step
        self.hardware_flops_per_step = flops.hardware * self.tokens_per_step
        self.world_size = world_size
        self.peak = peak or detect_peak(training_precision(model.dtype, model.fp8 is not None))
        dp = recipe.data_parallel_size
        self.bubble_estimate = pipeline_bubble_estimate(
            recipe.parallel.pp, recipe.parallel.vpp, recipe.train.num_microbatches(dp))

    def values(self, step_time_s: float) -> dict:
        if step_time_s <= 0:
            return {}
        tflops = self.model_flops_per_step / step_time_s / self.world_size / 1e12
        return {
            "tokens_per_s_per_gpu": self.tokens_per_step / step_time_s / self.world_size,
            "tflops_per_gpu": tflops,
            "hardware_tflops_per_gpu": self.hardware_flops_per_step / step_time_s / self.world_size / 1e12,
            "mfu": tflops / self.peak.tflops if self.peak.tflops else None,
            "peak_tflops": self.peak.tflops,
            # Which peak: an FP8 run's MFU divides by the FP8 peak, twice the BF16 one.
            "peak_precision": self.peak.precision,
            "device": self.peak.device,
        }
