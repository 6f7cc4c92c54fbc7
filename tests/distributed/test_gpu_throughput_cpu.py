"""The CPU-checkable parts of `make gpu-check`: the benchmark's arguments, the step runner's
timeout, and the benchmark's comparison with Hugging Face's LlamaForCausalLM on a tiny model (same
weights, same batch, same loss)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time

import psutil
import pytest

from harness import REPO, free_port


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_arguments_default_to_the_h100_check_and_refuse_nonsense(capsys):
    bench = _load("gpu_throughput")
    args = bench.parse_args(["--out", "x.json"])
    assert (args.preset, args.layers, args.seq, args.dtype, args.micro_batches) == (
        "llama3-8b", 4, 8192, "bf16", 4)
    with pytest.raises(SystemExit) as exit_info:
        bench.parse_args(["--out", "x.json", "--layers", "0"])
    assert exit_info.value.code == 2 and "--layers: must be >= 1, got 0" in capsys.readouterr().err
    check = _load("gpu_check")
    args = check.parse_args(["--out", "o.json", "--", "--layers", "2"])
    assert args.bench_args == ["--layers", "2"] and args.tests_timeout + args.bench_timeout < 8 * 60
    recipe = bench.bench_recipe(bench.parse_args(["--out", "x.json"]))
    assert recipe.model.num_layers == 4 and recipe.train.num_microbatches(1) == 4


def test_missing_modules_stop_the_check_before_anything_runs(tmp_path, monkeypatch, capsys):
    check = _load("gpu_check")
    monkeypatch.setattr(check, "NEEDED_MODULES", ("yaml", "no_such_module", "no_such_parent.child"))
    monkeypatch.setattr(check, "run_step", lambda *args: pytest.fail("a step ran"))
    out = tmp_path / "out" / "gpu_check.json"
    assert check.main(["--out", str(out)]) == 2
    assert json.loads(out.read_text()) == {"missing_modules": ["no_such_module", "no_such_parent.child"]}
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "lacks no_such_module, no_such_parent.child" in err


# A step that outlives its time limit: it starts one sleeper in its own process group and one in
# a session of its own (as torchrun starts its ranks), then sleeps itself.
SLOW_STEP = """
import subprocess, sys, time
sleeper = [sys.executable, "-c", "import time; time.sleep(120)"]
quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
same_group = subprocess.Popen(sleeper, **quiet)
own_session = subprocess.Popen(sleeper, start_new_session=True, **quiet)
print(same_group.pid, own_session.pid, flush=True)
print("started both", file=sys.stderr, flush=True)
time.sleep(120)
"""


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.mark.timeout(60)
def test_a_timed_out_step_leaves_no_process_behind():
    check = _load("gpu_check")
    result = check.run_step([sys.executable, "-c", SLOW_STEP], timeout=5)
    pids = [int(pid) for pid in result["stdout_tail"].split()]
    try:
        deadline = time.monotonic() + 10
        while not all(_gone(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(pids) == 2 and all(_gone(pid) for pid in pids)
    finally:
        for pid in pids:
            if not _gone(pid):
                psutil.Process(pid).kill()
    assert result["status"] == "timeout" and result["stderr_tail"] == "started both\n"
    assert result["seconds"] >= 5  # it ran until its time limit (no upper bound: a busy machine)


def test_tiny_model_against_hugging_face_on_cpu(tmp_path):
    out = tmp_path / "tiny.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "gpu_throughput.py"), "--preset", "llama3-tiny",
         "--layers", "2", "--seq", "64", "--micro-batches", "2", "--steps", "1", "--warmup", "1",
         "--dtype", "fp32", "--out", str(out)],
        capture_output=True, text=True, timeout=300, env=dict(os.environ, MASTER_PORT=str(free_port())))
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(out.read_text())
    assert result["shape"]["hf_attention"] == "sdpa" and result["shape"]["ours_layers"] == "sdpa"
    assert result["loss"]["abs_diff"] < 1e-5  # the same model, weights and batch on both sides
    tokens = 2 * 64
    for side in ("ours_forward_backward", "ours_training_step", "hf_forward_backward"):
        figures = result[side]
        assert figures["tokens_per_s"] == pytest.approx(tokens / figures["step_s"])
        assert figures["tflops"] == pytest.approx(
            result["shape"]["model_flops_per_token"] * tokens / figures["step_s"] / 1e12)
        assert figures["mfu"] is None  # no peak for a CPU
    assert result["ratio_ours_to_hf"] == pytest.approx(
        result["ours_forward_backward"]["tokens_per_s"] / result["hf_forward_backward"]["tokens_per_s"])
    assert result["memory"]["estimate_gb"] > 0 and result["memory"]["measured_peak_allocated_gb"] is None
