"""`megatron-cpt train` on one node gives its ranks the environment a Slurm job exports
(``launch/environment.py``: ``CUDA_DEVICE_MAX_CONNECTIONS=1`` with TP > 1, NCCL and allocator
settings, the recipe's thread count whatever the shell's ``OMP_NUM_THREADS``), and megatron-core's
warning about ``CUDA_DEVICE_MAX_CONNECTIONS`` is not hidden."""

from __future__ import annotations

import subprocess
import warnings
from pathlib import Path

import pytest

from megatron_cpt.config import load_recipe
from megatron_cpt.errors import ConfigError
from megatron_cpt.launch import local
from megatron_cpt.launch.environment import (job_environment, resolve_cpu_threads,
                                              slurm_cpu_threads)
from megatron_cpt.runtime.quiet import quiet_known_warnings
from megatron_cpt.train import startup

REPO = Path(__file__).resolve().parents[2]


def test_local_ranks_get_the_job_environment(monkeypatch):
    recipe = load_recipe(REPO / "examples" / "llama3_tiny_cpt_2xcpu.yaml")  # TP2
    expected = job_environment(recipe, local.SHUTDOWN_TIMEOUT_S,
                               str(resolve_cpu_threads(recipe.launch, cpus=64)))
    for name in expected:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "backend:cudaMallocAsync")  # the user's own
    monkeypatch.setenv("OMP_NUM_THREADS", "5")  # not the recipe's
    monkeypatch.setattr("megatron_cpt.launch.environment.usable_cpus", lambda: 64)
    for name in ("WORLD_SIZE", "RANK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(startup, "check_inputs", lambda recipe: None)
    launched = []
    monkeypatch.setattr(local, "run_local", lambda module, args, nprocs, run_dir=None, env=None:
                        launched.append(env) or 0)
    assert startup.start_ranks(recipe, "worker", [], lambda: 1, several_nodes="") == 0
    (env,) = launched
    assert env["CUDA_DEVICE_MAX_CONNECTIONS"] == "1" and env["NCCL_NVLS_ENABLE"] == "0"
    # The recipe's launch.accelerator is cpu: its ranks see no GPU.
    assert env == {**{k: v for k, v in expected.items() if k != "PYTORCH_CUDA_ALLOC_CONF"},
                   "CUDA_VISIBLE_DEVICES": ""}
    assert env["OMP_NUM_THREADS"] == "32"  # 64 CPUs, 2 ranks


@pytest.mark.parametrize("overrides, cpus, threads, slurm", [
    ([], 64, 32, "$(( SLURM_CPUS_ON_NODE / 2 > 1 ? SLURM_CPUS_ON_NODE / 2 : 1 ))"),
    ([], 1, 1, "$(( SLURM_CPUS_ON_NODE / 2 > 1 ? SLURM_CPUS_ON_NODE / 2 : 1 ))"),
    (["launch.cpu_threads=3"], 64, 3, "3")])
def test_thread_count_rule_is_the_same_locally_and_in_the_batch_script(overrides, cpus, threads,
                                                                       slurm):
    launch = load_recipe(REPO / "examples" / "llama3_tiny_cpt_2xcpu.yaml", overrides).launch
    assert resolve_cpu_threads(launch, cpus=cpus) == threads
    assert slurm_cpu_threads(launch) == slurm
    proc = subprocess.run(["bash", "-c", f'echo "{slurm}"'], capture_output=True, text=True,
                          env={"SLURM_CPUS_ON_NODE": str(cpus)}, check=True)
    assert proc.stdout.strip() == str(threads)


def test_thread_count_below_one_is_refused():
    with pytest.raises(ConfigError, match=r"^launch.cpu_threads: must be >= 1 \(or unset\), got 0$"):
        load_recipe(REPO / "examples" / "llama3_tiny_cpt_2xcpu.yaml", ["launch.cpu_threads=0"])


def test_megatron_core_warning_about_the_job_environment_is_shown():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_known_warnings()
        warnings.warn("When using sequence parallelism it is recommended to set the environment "
                      "variable CUDA_DEVICE_MAX_CONNECTIONS to 1 for maximum speedup")
    assert len(caught) == 1
