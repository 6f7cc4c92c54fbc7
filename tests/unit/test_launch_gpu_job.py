"""What a GPU job needs from its launch: one task per GPU wherever torchrun would SIGKILL the ranks
30 s into a stop save (torch < 2.11, as in the Dockerfile's NGC image); in a container image, the
repository's image and every directory the job reads or writes mounted."""

from __future__ import annotations

import importlib.metadata
import sys
from pathlib import Path

import pytest
import torch

from megatron_cpt.cli import main
from megatron_cpt.config import load_recipe
from megatron_cpt.errors import UserError
from megatron_cpt.launch import node
from megatron_cpt.launch.allocation import fit_to_allocation
from megatron_cpt.launch.example_scripts import example_path
from megatron_cpt.launch.slurm import SlurmJob, job_torch_version, render_sbatch, resolve_tasks
from shellcheck_fixture import assert_shellcheck_clean

REPO = Path(__file__).resolve().parents[2]
RECIPE_8B = REPO / "examples" / "llama3_8b_cpt_8xh100_fp8.yaml"
NGC_25_09_TORCH = "2.9.0a0+50eac811a6.nv25.09"


def test_tasks_follow_the_jobs_torch():
    assert resolve_tasks("auto", NGC_25_09_TORCH)[0] == "per-gpu"
    assert resolve_tasks("auto", "2.11.0")[0] == "per-node"
    assert resolve_tasks("auto", None)[0] == "per-gpu"  # a container image: not readable here
    assert resolve_tasks("per-node", None)[0] == "per-node"  # checked by each node at start
    assert resolve_tasks("per-gpu", "2.13.0")[0] == "per-gpu"
    with pytest.raises(UserError, match=r"^--tasks per-node: the job's torch 2.10.1 "):
        resolve_tasks("per-node", "2.10.1")
    assert job_torch_version(sys.executable, None) == importlib.metadata.version("torch")
    assert job_torch_version(sys.executable, "/images/megatron-cpt.sqsh") is None
    assert job_torch_version("/nonexistent/python", None) is None


def test_each_node_refuses_a_torchrun_that_cannot_wait(monkeypatch, capsys):
    started = []
    monkeypatch.setattr("torch.distributed.run.main", started.append)
    monkeypatch.setattr(torch, "__version__", NGC_25_09_TORCH)
    assert node.main(["--nnodes=2", "--module", "m"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and NGC_25_09_TORCH in err and "--tasks per-gpu" in err
    assert started == []
    monkeypatch.setattr(torch, "__version__", "2.11.0")
    assert node.main(["--nnodes=2", "--module", "m"]) == 0
    assert started == [["--nnodes=2", "--module", "m"]]


def test_example_scripts_run_one_task_per_gpu():
    """They run in the Dockerfile's image, whose torch (NGC 25.09) is 2.9."""
    text = example_path("llama3_70b_cpt_64xh100_fp8").read_text()
    assert "#SBATCH --ntasks-per-node=8" in text and "torch.distributed.run" not in text
    assert "# One task per GPU: torch 2.9.0a0" in text


def test_container_job_mounts_what_it_reads_and_writes(tmp_path):
    recipe = fit_to_allocation(load_recipe(RECIPE_8B), 1, 8)
    job = SlurmJob(partition="gpu", time="04:00:00", nodes=1, gpus_per_node=8,
                   container_image="/images/megatron-cpt.sqsh",
                   container_mounts="/lustre/cpt:/data/cpt", tasks="per-gpu")
    text = render_sbatch(recipe, "/runs/llama3_8b_cpt_8xh100_fp8/job.recipe.yaml", job,
                         source="x.yaml", workdir="/home/me/megatron-cpt")
    assert_shellcheck_clean(text, tmp_path)
    mounts = next(word for word in text.split() if word.startswith("--container-mounts="))
    assert mounts.split("=", 1)[1].split(",") == [
        "/lustre/cpt:/data/cpt",  # the user's, which covers every data prefix
        "/checkpoints/llama3-8b-mcore:/checkpoints/llama3-8b-mcore",  # initial weights
        "/checkpoints/runs/llama3_8b_cpt_8xh100_fp8:/checkpoints/runs/llama3_8b_cpt_8xh100_fp8",
        "/home/me/megatron-cpt:/home/me/megatron-cpt",  # relative paths, --chdir
        "/runs/llama3_8b_cpt_8xh100_fp8:/runs/llama3_8b_cpt_8xh100_fp8",  # logs, job.recipe.yaml
    ]
    assert "--container-workdir=/home/me/megatron-cpt" in text


def test_bare_ngc_image_is_refused(tmp_path, capsys):
    run_dir = tmp_path / "run"
    status = main(["launch", "slurm", str(RECIPE_8B), f"logging.run_dir={run_dir}",
                   "--partition", "gpu", "--time", "04:00:00",
                   "--container-image", "nvcr.io#nvidia/pytorch:25.09-py3"])
    assert status == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("megatron-cpt launch: error: --container-image:") and "\n" not in err
    assert "Dockerfile" in err and not run_dir.exists()
