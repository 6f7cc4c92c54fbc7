"""The environment of a training job: what megatron-core needs on H100 nodes, and the rank
variables of a one-task-per-GPU Slurm launch.

``job_environment`` is what the generated sbatch script exports (and, with a container image,
passes by name with pyxis ``--container-env``, because pyxis otherwise keeps the image's value of
a variable the image also sets), and what ``megatron-cpt train`` gives its local ranks
(``train/startup.py``): one environment for both paths. Its ``OMP_NUM_THREADS`` is the recipe's
``launch.cpu_threads``, or the node's CPUs divided by its ranks: a number here, a shell expression
over ``SLURM_CPUS_ON_NODE`` in the batch script (``slurm_cpu_threads``), the same rule on both.
"""

from __future__ import annotations

import os

from megatron_cpt.config.launch import LaunchConfig
from megatron_cpt.config.recipe import Recipe


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity: a Slurm step's or container's share)."""
    return len(os.sched_getaffinity(0))


def resolve_cpu_threads(launch: LaunchConfig, cpus: int | None = None) -> int:
    """Intra-op threads of each rank: ``launch.cpu_threads``, else the node's CPUs (``cpus``,
    default this process's) shared by its ``procs_per_node`` ranks, at least 1."""
    if launch.cpu_threads is not None:
        return launch.cpu_threads
    return cpus_per_rank(launch.procs_per_node, cpus)


def cpus_per_rank(ranks: int, cpus: int | None = None) -> int:
    """The node's CPUs (``cpus``, default this process's) shared by its ``ranks``, at least 1."""
    return max(1, (usable_cpus() if cpus is None else cpus) // ranks)


def slurm_cpu_threads(launch: LaunchConfig) -> str:
    """``resolve_cpu_threads`` as the batch script computes it on the node (bash arithmetic)."""
    if launch.cpu_threads is not None:
        return str(launch.cpu_threads)
    share = f"SLURM_CPUS_ON_NODE / {launch.procs_per_node}"
    return f"$(( {share} > 1 ? {share} : 1 ))"


def job_environment(recipe: Recipe, shutdown_timeout_s: int, cpu_threads: str) -> dict[str, str]:
    """Variables the job exports, in a fixed order (name -> value); ``cpu_threads``: the value of
    ``OMP_NUM_THREADS`` (``resolve_cpu_threads`` locally, ``slurm_cpu_threads`` in a batch
    script)."""
    env = {}
    if recipe.parallel.tp > 1 or recipe.parallel.cp > 1:
        # One hardware queue, so TP/CP communication kernels are scheduled in issue order and
        # overlap with compute as megatron-core plans it.
        env["CUDA_DEVICE_MAX_CONNECTIONS"] = "1"
    env.update({
        # NCCL keeps tensors alive by stream order instead of recordStream: less memory held.
        "TORCH_NCCL_AVOID_RECORD_STREAMS": "1",
        # NCCL uses NVLink SHARP (NVLS) by itself on NVSwitch systems for the collectives it suits
        # (megatron-core's all-reduces and all-gathers among them); its buffers cost each GPU
        # memory for every communicator. Off: that memory for the model, at some bandwidth.
        "NCCL_NVLS_ENABLE": "0",
        "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True",
        # How long torchrun lets its ranks save after SIGTERM before SIGKILL (torch >= 2.11;
        # older torchrun waits 30 s).
        "TORCH_ELASTIC_SHUTDOWN_TIMEOUT": str(shutdown_timeout_s),
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": cpu_threads,
    })
    return env


def adopt_slurm_rank_environment(environ: dict | None = None) -> None:
    """One task per GPU under srun: take RANK, WORLD_SIZE and LOCAL_RANK from SLURM_PROCID,
    SLURM_NTASKS and SLURM_LOCALID. srun sets only the SLURM_* names; torch reads the others.
    Nothing changes when RANK is already set (torchrun) or the job's script did not export
    MASTER_ADDR (not a launch that meant to form one job from the tasks)."""
    env = os.environ if environ is None else environ
    if "RANK" in env or "SLURM_PROCID" not in env or "MASTER_ADDR" not in env:
        return
    env["RANK"] = env["SLURM_PROCID"]
    env["WORLD_SIZE"] = env["SLURM_NTASKS"]
    env["LOCAL_RANK"] = env.get("SLURM_LOCALID", "0")
