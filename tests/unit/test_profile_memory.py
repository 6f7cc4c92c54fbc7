"""The memory estimate: parameter counts, the H100 recipes fit in 80 GB, the verdict and the verb."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from megatron_cpt.config import load_recipe
from megatron_cpt.profile.memory import GB, estimate_memory, format_estimate, stage_parameters

REPO = Path(__file__).resolve().parents[2]
H100_RECIPES = sorted((REPO / "examples").glob("*h100*.yaml"))
RECIPE_8B = REPO / "examples" / "llama3_8b_cpt_8xh100_fp8.yaml"


@pytest.mark.parametrize("path", H100_RECIPES, ids=[p.name for p in H100_RECIPES])
def test_every_h100_recipe_fits_in_80_gb(path):
    estimate = estimate_memory(load_recipe(path), gpu_memory_gb=80)
    assert estimate.fits, format_estimate(estimate)


def test_8b_at_tp1_seq_8192_without_recompute_does_not_fit():
    estimate = estimate_memory(load_recipe(RECIPE_8B, ["parallel.tp=1"]), gpu_memory_gb=80)
    assert not estimate.fits
    assert "DOES NOT FIT" in format_estimate(estimate)
    # Weights, fp32 gradients and FP8 copies alone take 62 GB at TP1.
    stage = estimate.most_loaded
    assert stage.weights + stage.gradients + stage.fp8_weights > 60 * GB


def test_parameters_add_up_to_the_published_counts_in_every_layout():
    for preset, published in (("llama3-8b", 8_030_261_248), ("llama3-70b", 70_553_706_496)):
        recipe = load_recipe(RECIPE_8B, [f"model.preset={preset}"])
        for tp, pp, vpp in ((1, 1, None), (2, 2, None), (8, 4, 2)):
            parallel = recipe.parallel
            parallel.tp, parallel.pp, parallel.vpp = tp, pp, vpp
            stages = stage_parameters(recipe.model, parallel)
            norms = sum(s.norms for s in stages)  # replicated on every TP rank
            assert sum(s.total for s in stages) * tp - norms * (tp - 1) == published, (preset, tp, pp)


def test_memory_shrinks_with_what_should_shrink_it():
    def busiest(*overrides):
        return estimate_memory(load_recipe(RECIPE_8B, list(overrides))).most_loaded

    base = busiest()
    assert busiest("model.recompute=full").activations < busiest("model.recompute=selective").activations < base.activations
    assert busiest("parallel.sequence_parallel=false").activations > base.activations
    assert busiest("parallel.distributed_optimizer=false").optimizer == pytest.approx(4 * base.optimizer)
    # Interleaving keeps more micro-batches in flight on the first stage: (1 + (p-1)/(p v)).
    plain = estimate_memory(load_recipe(RECIPE_8B, ["parallel.pp=4", "launch.procs_per_node=8", "parallel.tp=2"]))
    interleaved = estimate_memory(load_recipe(RECIPE_8B, ["parallel.pp=4", "parallel.vpp=2", "parallel.tp=2"]))
    ratio = interleaved.stages[0].activations / plain.stages[0].activations
    assert ratio == pytest.approx(1 + 3 / 8)
    assert plain.stages[0].activations > plain.stages[-1].activations  # p vs 1 in flight


def test_estimate_verb_exit_status_says_whether_it_fits():
    def run(*args):
        return subprocess.run([sys.executable, "-m", "megatron_cpt", "profile", "estimate", *args],
                              capture_output=True, text=True, timeout=60)

    fits = run(str(RECIPE_8B))
    assert fits.returncode == 0 and ": fits" in fits.stdout and "stage 0" in fits.stdout
    too_big = run(str(RECIPE_8B), "parallel.tp=1")
    assert too_big.returncode == 1 and "DOES NOT FIT" in too_big.stdout
    bad = run(str(RECIPE_8B), "parallel.tp=3")
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.strip() == ("megatron-cpt profile: error: parallel.tp: 3 does not divide "
                                  "the 32 attention heads")
