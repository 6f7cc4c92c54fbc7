"""The SFT recipes: Llama-3 8B on 8 H100s and 70B on 64 H100s keep their CPT recipes' precision
and layout, fit by `profile estimate`, render their Slurm scripts (test_launch.py keeps
launch/*.sbatch in sync), and `launch slurm` refuses them without their chat data, naming it."""

from __future__ import annotations

from pathlib import Path

import pytest

from megatron_cpt.cli import main
from megatron_cpt.config.recipe import load_recipe
from megatron_cpt.profile.memory import estimate_memory

REPO = Path(__file__).resolve().parents[2]
PAIRS = [("llama3_8b_sft_8xh100_fp8", "llama3_8b_cpt_8xh100_fp8"),
         ("llama3_70b_sft_64xh100_fp8", "llama3_70b_cpt_64xh100_fp8")]


@pytest.mark.parametrize("sft, cpt", PAIRS)
def test_sft_recipe_keeps_the_cpt_layout_and_fits(sft, cpt):
    recipe, base = (load_recipe(REPO / "examples" / f"{name}.yaml") for name in (sft, cpt))
    assert recipe.data.chat is not None and recipe.data.chat.epochs == 2
    assert recipe.parallel == base.parallel and recipe.launch == base.launch
    assert (recipe.model.dtype, recipe.model.fp8, recipe.model.recompute) == (
        base.model.dtype, base.model.fp8, base.model.recompute)
    assert recipe.train.micro_batch_size == 1
    estimate = estimate_memory(recipe, gpu_memory_gb=80)
    assert estimate.fits, estimate.most_loaded


def test_launch_slurm_refuses_an_sft_recipe_without_its_chat_data(tmp_path, capsys):
    run_dir = tmp_path / "run"
    status = main(["launch", "slurm", str(REPO / "examples" / f"{PAIRS[0][0]}.yaml"),
                   f"logging.run_dir={run_dir}", "--partition", "gpu", "--time", "04:00:00"])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1
    assert "error: data.chat.prefixes[0] '/data/sft/llama3/zh_en': " in err
    assert "megatron-cpt data prepare-chat" in err
    assert not run_dir.exists()
