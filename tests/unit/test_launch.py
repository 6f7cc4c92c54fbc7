"""Launch: the allocation check, the rendered batch scripts (kept equal to launch/*.sbatch and
clean under shellcheck), and the rank environment of one task per GPU."""

from __future__ import annotations

from pathlib import Path

import pytest

from megatron_cpt.cli import main
from megatron_cpt.config import ConfigError, load_recipe
from megatron_cpt.launch.allocation import fit_to_allocation
from megatron_cpt.launch.environment import (adopt_slurm_rank_environment, job_environment,
                                              slurm_cpu_threads)
from megatron_cpt.launch.example_scripts import EXAMPLES, example_path, render_example
from megatron_cpt.launch.slurm import SlurmJob, render_sbatch, signal_lead_seconds
from megatron_cpt.errors import UserError
from shellcheck_fixture import assert_shellcheck_clean

REPO = Path(__file__).resolve().parents[2]
RECIPE_8B = REPO / "examples" / "llama3_8b_cpt_8xh100_fp8.yaml"
RECIPE_70B = REPO / "examples" / "llama3_70b_cpt_64xh100_fp8.yaml"


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_scripts_are_generated_and_clean(name, tmp_path):
    text = render_example(name)
    assert example_path(name).read_text() == text, (
        f"launch/{name}.sbatch is stale: run python -m megatron_cpt.launch.example_scripts")
    assert_shellcheck_clean(text, tmp_path)


def test_70b_script_content():
    text = example_path("llama3_70b_cpt_64xh100_fp8").read_text()
    # One task per GPU: the Dockerfile image's torchrun (torch 2.9) cannot wait for a stop save.
    for line in ("#SBATCH --nodes=8", "#SBATCH --gpus-per-node=8", "#SBATCH --ntasks-per-node=8",
                 "#SBATCH --requeue", "#SBATCH --signal=B:USR1@600",
                 "export CUDA_DEVICE_MAX_CONNECTIONS=1", "export NCCL_NVLS_ENABLE=0",
                 "export TORCH_NCCL_AVOID_RECORD_STREAMS=1",
                 "export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True",
                 'export MASTER_ADDR="$HEAD_ADDR" MASTER_PORT="$RDZV_PORT"',
                 '"$PYTHON" -m megatron_cpt.train.worker "$RECIPE" &',
                 'scancel --signal=TERM "$SLURM_JOB_ID"', 'scontrol requeue "$SLURM_JOB_ID"'):
        assert line in text, line


def test_per_gpu_tasks_in_a_container(tmp_path):
    recipe = fit_to_allocation(load_recipe(RECIPE_8B, ["parallel.tp=1"]), 2, 8)
    job = SlurmJob(partition="gpu", time="1-00:00:00", nodes=2, gpus_per_node=8, account="proj",
                   container_image="nvcr.io#nvidia/pytorch:25.09-py3", container_mounts="/data:/data",
                   tasks="per-gpu")
    text = render_sbatch(recipe, "/runs/x/job.recipe.yaml", job, source="x.yaml")
    assert_shellcheck_clean(text, tmp_path)
    names = list(job_environment(recipe, job.signal_lead_s, slurm_cpu_threads(recipe.launch)))
    assert "CUDA_DEVICE_MAX_CONNECTIONS" not in names  # TP 1, CP 1
    assert f"--container-env={','.join(names)}" in text
    assert "--container-image=nvcr.io#nvidia/pytorch:25.09-py3" in text
    assert "#SBATCH --ntasks-per-node=8" in text and "#SBATCH --account=proj" in text
    assert 'export MASTER_ADDR="$HEAD_ADDR" MASTER_PORT="$RDZV_PORT"' in text
    assert '"$PYTHON" -m megatron_cpt.train.worker "$RECIPE" &' in text
    assert "torch.distributed.run" not in text


@pytest.mark.parametrize("recipe,overrides,nodes,message", [
    # 24 GPUs are not a whole number of TP8 x PP4 replicas.
    (RECIPE_70B, [], 3, r"^parallel.tp: --nodes 3 x --gpus-per-node 8 = 24 GPUs do not hold"),
    # 8B at TP2 on 24 GPUs: DP 12 does not divide the global batch of 256.
    (RECIPE_8B, [], 3, r"^train.global_batch_size: 256 is not divisible by micro_batch_size x "
                       r"DP = 1 x 12 \(allocation --nodes 3 x --gpus-per-node 8, DP 12\)"),
    # 70B on 16 nodes: DP 4 gives 130 micro-batches, not a multiple of PP 4 (interleaving).
    (RECIPE_70B, ["train.global_batch_size=520"], 16,
     r"^train.global_batch_size: interleaved pipelining needs the number of micro-batches \(130\)"),
])
def test_allocation_refusals_name_the_field(recipe, overrides, nodes, message):
    with pytest.raises(ConfigError, match=message):
        fit_to_allocation(load_recipe(recipe, overrides), nodes, 8)


def test_refused_layout_writes_nothing(tmp_path, capsys):
    run_dir = tmp_path / "run"
    status = main(["launch", "slurm", str(RECIPE_70B), f"logging.run_dir={run_dir}",
                   "--partition", "gpu", "--time", "04:00:00", "--nodes", "3"])
    assert status == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("megatron-cpt launch: error: parallel.tp:") and "\n" not in err
    assert not run_dir.exists()


@pytest.mark.parametrize("time,message", [("4h", "--time: expected HH:MM:SS"),
                                          ("00:05:00", "--time: 00:05:00 is shorter than"),
                                          ("00:10:30", "--time: 00:10:30 is shorter than")])
def test_bad_time_limits(time, message):
    recipe = load_recipe(RECIPE_8B)
    job = SlurmJob(partition="gpu", time=time, nodes=1, gpus_per_node=8)
    with pytest.raises(UserError, match=message):
        render_sbatch(recipe, "r.yaml", job, source="r.yaml")


def test_signal_lead_from_measured_saves():
    assert signal_lead_seconds([])[0] == 600
    measured = [{"step": 1, "step_time_s": 10.2}, {"step": 2, "step_time_s": 9.0,
                                                   "checkpoint_save_s": 80.5},
                {"step": 3, "step_time_s": 9.0, "checkpoint_save_s": 95.0,
                 "checkpoint_background": True}]  # only the time to schedule a background save
    lead, reason = signal_lead_seconds(measured)
    assert lead == 232  # ceil(10.2 + 2 x 80.5) + 60 s of Slurm's signal slack
    assert "metrics.jsonl" in reason


def test_rank_environment_of_one_task_per_gpu():
    env = {"SLURM_PROCID": "9", "SLURM_NTASKS": "16", "SLURM_LOCALID": "1", "MASTER_ADDR": "n1"}
    adopt_slurm_rank_environment(env)
    assert (env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"]) == ("9", "16", "1")
    torchrun = {"RANK": "3", "SLURM_PROCID": "0", "SLURM_NTASKS": "1", "MASTER_ADDR": "n1"}
    adopt_slurm_rank_environment(torchrun)
    assert torchrun["RANK"] == "3" and "WORLD_SIZE" not in torchrun
    interactive = {"SLURM_PROCID": "0", "SLURM_NTASKS": "4"}  # e.g. inside salloc: not a launch
    adopt_slurm_rank_environment(interactive)
    assert "RANK" not in interactive


def test_job_recipe_round_trips(tmp_path):
    import yaml

    recipe = fit_to_allocation(load_recipe(RECIPE_70B), 8, 8)
    path = tmp_path / "job.recipe.yaml"
    path.write_text(yaml.safe_dump(recipe.to_dict(), sort_keys=False))
    assert load_recipe(path).to_dict() == recipe.to_dict()


def test_layout_that_does_not_fit_in_memory_is_refused_unless_forced(tmp_path, capsys):
    # The 8B 32-GPU recipe at TP1 (seq 8192, no recompute) needs about 103 GB per GPU.
    run_dir = tmp_path / "run"
    args = ["launch", "slurm", str(REPO / "examples" / "llama3_8b_cpt_32xh100_fp8.yaml"),
            "parallel.tp=1", f"logging.run_dir={run_dir}", "--partition", "gpu", "--time", "04:00:00"]
    assert main(args) == 2
    captured = capsys.readouterr()
    assert "DOES NOT FIT" in captured.out
    assert captured.err.startswith("megatron-cpt launch: error: memory: stage 0 needs 103.")
    assert not run_dir.exists()
    # Forced, it goes on to the next check (this machine has no /data for the recipe).
    assert main(args + ["--force"]) == 2
    assert "error: data.mixture.sources[0].prefix" in capsys.readouterr().err
    assert not run_dir.exists()


def test_missing_initial_weights_are_refused_before_anything_is_written(tmp_path, capsys):
    from token_fixtures import byte_run_overrides, write_byte_dataset

    write_byte_dataset(tmp_path / "stdlib", limit_bytes=50_000)
    run_dir = tmp_path / "run"
    status = main(["launch", "slurm", str(REPO / "examples" / "llama3_tiny_cpt_2xcpu.yaml"),
                   *byte_run_overrides(tmp_path / "stdlib", steps=4), "model.vocab_size=257",
                   f"checkpoint.pretrained={tmp_path / 'no_such_checkpoint'}",
                   f"logging.run_dir={run_dir}", "--partition", "debug", "--time", "00:20:00"])
    assert status == 2
    err = capsys.readouterr().err.strip()
    assert "no_such_checkpoint" in err and "\n" not in err, err
    assert not run_dir.exists()


def test_rendezvous_ports_of_nearby_jobs_and_their_restarts_differ():
    """Job 4's second start and job 5's first once got the same port (job id + restart). The
    script's own line, run by bash: jobs less than 1250 ids apart never share a port, whatever
    their restarts."""
    import subprocess

    line = next(line for line in example_path("llama3_8b_cpt_8xh100_fp8").read_text().splitlines()
                if line.startswith("RDZV_PORT="))
    for first in (4, 99_000):  # the second window crosses job id 100000, a multiple of 1250
        jobs = sorted({*range(first, first + 1250, 83), first + 1, first + 1249})
        pairs = [(job, restart) for job in jobs for restart in range(6)]
        script = "".join(f"SLURM_JOB_ID={j}; RESTART={r}; {line}; echo $RDZV_PORT\n"
                         for j, r in pairs)
        ports = [int(p) for p in subprocess.run(["bash", "-c", script], capture_output=True,
                                                text=True, check=True).stdout.split()]
        assert len(ports) == len(pairs) and all(20000 <= p < 30000 for p in ports)
        assert len(set(ports)) == len(ports), first


def test_a_rank_of_a_slurm_step_names_the_step_in_its_failure_line(monkeypatch, capsys):
    """In a job of `launch slurm` the ranks are started by the batch script, not by `train`: the
    line names the job step as squeue and sacct do."""
    from megatron_cpt.launch.local import REPORT_DIR_ENV, report_failure

    monkeypatch.delenv(REPORT_DIR_ENV, raising=False)
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_STEP_ID", "1")
    report_failure("train", "rank 3: no space left on device", 4)
    assert capsys.readouterr().err == "megatron-cpt job 4242.1 (train): error: rank 3: no space left on device\n"
    monkeypatch.delenv("SLURM_STEP_ID")  # the batch script itself, or `megatron-cpt train` in salloc
    report_failure("train", "x", 2)
    assert capsys.readouterr().err == "megatron-cpt train: error: x\n"
