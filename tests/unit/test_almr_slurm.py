"""The Slurm path of the ALMR sweep: one job array through megatron_cpt.launch.slurm, task i runs
run i with its own module (the reference evaluation or training). The script equals the stored
one, passes shellcheck, and its task selection picks the right run directory, recipe and module
in bash."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from checkpoint_fixtures import write_checkpoint_stub
from megatron_cpt.almr.launchers import SlurmLauncher, listed_by_squeue, refuse_while_submitted
from megatron_cpt.almr.sweep import plan_runs, write_plan
from megatron_cpt.config.recipe import load_recipe
from megatron_cpt.errors import UserError
from megatron_cpt.launch.slurm import SlurmJob
from mixture_fixtures import mixture_overrides, write_two_language_mixture
from shellcheck_fixture import assert_shellcheck_clean
from test_almr_sweep import _base

GOLDEN = Path(__file__).with_name("almr_golden") / "demo_sweep.sbatch"
JOB = SlurmJob(partition="gpu", time="02:00:00", nodes=1, gpus_per_node=2, python="python")


def _plan(sweep_dir: str = "/sweeps/demo"):
    return plan_runs(_base(), [0.1, 0.33, 0.5], [1e-3, 3e-3], sweep_dir, tokens=10 * 1024,
                     recipe_source="examples/demo_llama3_tiny_cpt_2xcpu.yaml")


def test_array_script_equals_the_stored_one_and_passes_shellcheck(tmp_path):
    plan = _plan()
    text = SlurmLauncher(JOB, submit=False, max_parallel=2).render(plan, plan.runs)
    if os.environ.get("MEGATRON_CPT_REGENERATE") == "1":
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text(), f"{GOLDEN} is stale: MEGATRON_CPT_REGENERATE=1 pytest {__file__}"
    for line in ("#SBATCH --array=0-6%2", "#SBATCH --output=/sweeps/demo/slurm-%A_%a.out",
                 "RUNS=(reference almr0.1_lr0.001 almr0.33_lr0.001 almr0.5_lr0.001 "
                 "almr0.1_lr0.003 almr0.33_lr0.003 almr0.5_lr0.003)",
                 "MODULES=(megatron_cpt.almr.reference" + " megatron_cpt.train.worker" * 6 + ")",
                 'RUN_DIR="/sweeps/demo/${RUNS[$SLURM_ARRAY_TASK_ID]}"',
                 'RECIPE="$RUN_DIR/recipe.yaml"', '--module "$MODULE" "$RECIPE" &'):
        assert line in text, line
    assert_shellcheck_clean(text, tmp_path)


@pytest.mark.parametrize("task, run, module", [
    (0, "reference", "megatron_cpt.almr.reference"),
    (4, "almr0.1_lr0.003", "megatron_cpt.train.worker")])
def test_each_task_selects_its_run_dir_recipe_and_module(task, run, module):
    plan = _plan()
    text = SlurmLauncher(JOB, submit=False).render(plan, plan.runs)
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("RUNS=("))
    end = next(i for i, line in enumerate(lines) if line.startswith("PYTHON="))
    selection = "\n".join(lines[start:end]) + '\necho "$RUN_DIR|$RECIPE|$MODULE"\n'
    proc = subprocess.run(["bash", "-c", selection], capture_output=True, text=True, timeout=60,
                          env={"SLURM_ARRAY_TASK_ID": str(task), "PATH": os.environ["PATH"]})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"/sweeps/demo/{run}|/sweeps/demo/{run}/recipe.yaml|{module}"


def test_rerun_writes_only_the_unfinished_runs(tmp_path):
    plan = _plan(str(tmp_path / "sweep"))
    write_plan(plan)
    launcher = SlurmLauncher(JOB, submit=False)
    results = launcher.launch(plan, plan.runs[2:])
    assert [r.status for r in results] == ["written"] * 5
    text = (tmp_path / "sweep" / "sweep.sbatch").read_text()
    assert "#SBATCH --array=0-4\n" in text and "RUNS=(almr0.33_lr0.001 " in text


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "megatron_cpt", "almr", *args],
                          capture_output=True, text=True, timeout=300, cwd=cwd)


def test_sweep_cli_writes_the_array_script(tmp_path):
    mixture = write_two_language_mixture(tmp_path)
    recipe = Path(__file__).resolve().parents[2] / "examples" / "llama3_tiny_cpt_2xcpu.yaml"
    init = write_checkpoint_stub(tmp_path / "init", load_recipe(recipe).model)
    overrides = mixture_overrides(mixture, ["train.eval_interval=10", "data.split=80,20,0",
                                            f"checkpoint.pretrained={init}"])
    args = ["sweep", str(recipe), *overrides, "--almr", "0.1,0.3,0.5", "--lr", "1e-3,3e-3",
            "--tokens", str(10 * 8 * 128), "--out", "sweep"]
    proc = _cli(*args, "--partition", "gpu", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip() == (
        "megatron-cpt almr: error: --partition: only with --slurm")
    proc = _cli(*args, "--slurm", "--time", "01:00:00", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip() == (
        "megatron-cpt almr: error: --slurm: needs --partition and --time")
    assert not (tmp_path / "sweep").exists()
    proc = _cli(*args, "--slurm", "--partition", "cpu", "--time", "01:00:00", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == ("7 of 7 runs written to sweep/sweep.sbatch (submit "
                                            "with sbatch); follow: megatron-cpt almr status sweep")
    text = (tmp_path / "sweep" / "sweep.sbatch").read_text()
    assert "#SBATCH --partition=cpu" in text and "#SBATCH --array=0-6\n" in text
    assert (tmp_path / "sweep" / "almr0.5_lr0.003" / "recipe.yaml").is_file()


@pytest.mark.parametrize("returncode, stdout, stderr, listed", [
    (0, "4711_[3-6]  gpu  sweep  me PD 0:00 1 (Priority)\n", "", True),
    (0, "4711_2  gpu  sweep  me R 1:02 1 node1\n", "", True),
    (0, "", "", False),  # ended, still known to slurmctld
    (1, "", "slurm_load_jobs error: Invalid job id specified\n", False),  # ended, forgotten
    (1, "", "slurm_load_jobs error: Unable to contact slurm controller (connect failure)\n", None),
])
def test_squeue_answers(returncode, stdout, stderr, listed):
    assert listed_by_squeue(returncode, stdout, stderr) is listed


def _fake(bin_dir: Path, name: str, script: str) -> None:
    bin_dir.mkdir(exist_ok=True)
    path = bin_dir / name
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(0o755)


def test_a_submitted_sweep_is_not_submitted_again_while_squeue_lists_it(tmp_path, monkeypatch):
    plan = _plan(str(tmp_path / "sweep"))
    write_plan(plan)
    bin_dir = tmp_path / "bin"
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    _fake(bin_dir, "sbatch", 'echo "4711;cluster"\n')
    results = SlurmLauncher(JOB, submit=True).launch(plan, plan.runs)
    assert results[-1].detail == "job 4711_6"
    job_file = tmp_path / "sweep" / "slurm_job_id"
    assert job_file.read_text() == "4711\n"

    _fake(bin_dir, "squeue", '[ "$*" = "-h -j 4711" ] && echo "4711_[3-6] gpu sweep me PD"\n')
    with pytest.raises(UserError, match=rf"^{job_file}: Slurm job 4711 of this sweep is still "
                                        rf"queued or running \(squeue -j 4711\); rerun when it "
                                        rf"has ended, or scancel 4711 first$"):
        refuse_while_submitted(plan.sweep_dir)
    _fake(bin_dir, "squeue", "exit 0\n")  # ended
    refuse_while_submitted(plan.sweep_dir)
    _fake(bin_dir, "squeue", 'echo "squeue: error: Unable to contact slurm controller" >&2\n'
                             "exit 1\n")
    with pytest.raises(UserError, match=r"cannot tell whether Slurm job 4711 of this sweep is "
                                        r"still queued or running \(squeue: squeue: error: Unable"):
        refuse_while_submitted(plan.sweep_dir)
    (bin_dir / "squeue").unlink()
    monkeypatch.setenv("PATH", str(bin_dir))
    with pytest.raises(UserError, match=r"squeue is not on PATH to tell whether it is still "
                                        r"queued or running; rerun where squeue works, or remove"):
        refuse_while_submitted(plan.sweep_dir)
