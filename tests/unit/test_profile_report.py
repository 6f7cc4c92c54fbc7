"""The profile report's Markdown (against a stored expected file), its device and memory lines on a
GPU, its errors; the per-step throughput figures and the logging settings behind them."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from megatron_cpt.config import ConfigError, load_recipe
from megatron_cpt.profile.hardware import peak_for
from megatron_cpt.profile.report import render_report, steady_records, write_report
from megatron_cpt.profile.throughput import ThroughputMeter, pipeline_bubble_estimate
from megatron_cpt.run_files import read_metrics

GOLDEN = Path(__file__).with_name("profile_golden")
REPO = Path(__file__).resolve().parents[2]
RECIPE_8B = REPO / "examples" / "llama3_8b_cpt_8xh100_fp8.yaml"


def test_report_of_a_cpu_run_equals_the_stored_one():
    expected = (GOLDEN / "report.md").read_text()
    records = read_metrics(GOLDEN)
    assert render_report(records, "profile_golden", steady_records(records, 2)) == expected


def test_gpu_records_name_the_peak_and_memory():
    records = [{"step": s, "step_time_s": 2.0, "tflops_per_gpu": 400.0, "mfu": 400 / 989.4,
                "peak_tflops": 989.4, "device": "NVIDIA H100 80GB HBM3",
                "memory_allocated_peak_gb": 60.0 + s, "memory_reserved_peak_gb": 70.0}
               for s in range(1, 5)]
    report = render_report(records, "gpu", steady_records(records, 1))
    assert "Device: NVIDIA H100 80GB HBM3; MFU against a dense peak of 989.4 TFLOP/s." in report
    assert "| MFU | 40.4% |" in report
    assert "Peak GPU memory: 64.00 GB allocated, 70.00 GB reserved" in report


def test_fp8_mfu_names_the_fp8_peak():
    recipe = load_recipe(RECIPE_8B)  # FP8
    values = ThroughputMeter(recipe, world_size=8,
                             peak=peak_for("NVIDIA H100 80GB HBM3", "fp8")).values(10.0)
    assert (values["peak_precision"], values["peak_tflops"]) == ("fp8", 1978.9)
    records = [{"step": s, "step_time_s": 10.0, **values} for s in range(1, 4)]
    report = render_report(records, "fp8", steady_records(records, 1))
    assert ("Device: NVIDIA H100 80GB HBM3; MFU against its FP8 dense peak of 1978.9 TFLOP/s."
            in report)


def test_report_writes_its_files_and_refuses_a_directory_without_metrics(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(GOLDEN, run)
    out = write_report(run)
    assert sorted(p.name for p in out.iterdir()) == ["memory.png", "report.md", "step_time.png",
                                                     "throughput.png"]
    proc = subprocess.run([sys.executable, "-m", "megatron_cpt", "profile", "report", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip() == (f"megatron-cpt profile: error: {tmp_path / 'metrics.jsonl'}: no "
                                   f"such file (is {tmp_path} a run directory?)")
    (run / "metrics.jsonl").write_text('{"step": 1, "step_time_s": 1.0}\n{"step": 2,\n')
    proc = subprocess.run([sys.executable, "-m", "megatron_cpt", "profile", "report", str(run)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and f"{run / 'metrics.jsonl'}: line 2 is not JSON" in proc.stderr


def test_throughput_counts_input_tokens_and_divides_by_the_named_peak():
    recipe = load_recipe(RECIPE_8B)  # 8 GPUs, 256 x 8192 tokens per step, FP8
    meter = ThroughputMeter(recipe, world_size=8, peak=peak_for("NVIDIA H100 80GB HBM3", "fp8"))
    values = meter.values(step_time_s=10.0)
    assert values["tokens_per_s_per_gpu"] == 256 * 8192 / 10.0 / 8
    assert values["mfu"] == pytest.approx(values["tflops_per_gpu"] / 1978.9)
    assert values["device"] == "NVIDIA H100 80GB HBM3" and values["peak_tflops"] == 1978.9
    unknown = ThroughputMeter(recipe, world_size=8, peak=peak_for("cpu", "fp8")).values(10.0)
    assert unknown["mfu"] is None and unknown["tflops_per_gpu"] == values["tflops_per_gpu"]


def test_pipeline_bubble_estimate():
    assert pipeline_bubble_estimate(1, None, 8) == 0
    assert pipeline_bubble_estimate(4, None, 8) == pytest.approx(3 / 11)
    assert pipeline_bubble_estimate(4, 5, 256) == pytest.approx(3 / (256 * 5 + 3))


@pytest.mark.parametrize("override, field", [
    ("logging.trace_steps=[5,3]", "logging.trace_steps"),
    ("logging.trace_steps=[0,3]", "logging.trace_steps"),
    ("logging.trace_steps=[3]", "logging.trace_steps"),
    ("logging.detail_interval=-1", "logging.detail_interval"),
    ("logging.trace_steps=[5,20000]", "logging.trace_steps"),  # the recipe has 10000 steps
])
def test_profiling_settings_are_validated(override, field):
    with pytest.raises(ConfigError, match=f"^{field}:"):
        load_recipe(RECIPE_8B, [override])
