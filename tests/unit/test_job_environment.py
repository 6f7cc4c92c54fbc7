"""`megatron-cpt train` on one node gives its ranks the environment a Slurm job exports
(``launch/environment.py``: ``CUDA_DEVICE_MAX_CONNECTIONS=1`` with TP > 1, NCCL and allocator
settings), and megatron-core's warning about ``CUDA_DEVICE_MAX_CONNECTIONS`` is not hidden."""

from __future__ import annotations

import warnings
from pathlib import Path

from megatron_cpt.config import load_recipe
from megatron_cpt.launch import local
from megatron_cpt.launch.environment import job_environment
from megatron_cpt.runtime.quiet import quiet_known_warnings
from megatron_cpt.train import startup

REPO = Path(__file__).resolve().parents[2]


def test_local_ranks_get_the_job_environment(monkeypatch):
    recipe = load_recipe(REPO / "examples" / "llama3_tiny_cpt_2xcpu.yaml")  # TP2
    expected = job_environment(recipe, local.SHUTDOWN_TIMEOUT_S)
    for name in expected:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "backend:cudaMallocAsync")  # the user's own
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


def test_megatron_core_warning_about_the_job_environment_is_shown():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_known_warnings()
        warnings.warn("When using sequence parallelism it is recommended to set the environment "
                      "variable CUDA_DEVICE_MAX_CONNECTIONS to 1 for maximum speedup")
    assert len(caught) == 1
