"""A CPU run's metrics.jsonl carries throughput, step-time breakdown, memory, pipeline bubble,
straggler and checkpoint-time fields; `profile report` builds its Markdown and PNGs from them."""

from __future__ import annotations

import json
import statistics

import pytest

from harness import TINY_RECIPE, run_cli, train
from token_fixtures import EOD_ID

from megatron_cpt.config import load_recipe
from megatron_cpt.profile.flops import flops_per_token
from megatron_cpt.run_files import read_metrics

EVERY_STEP = ("step_time_s", "data_wait_s", "forward_backward_s", "grad_sync_s", "optimizer_s",
              "tokens_per_s_per_gpu", "tflops_per_gpu", "hardware_tflops_per_gpu",
              "memory_rss_peak_gb")
SAMPLED = ("pipeline_bubble", "pipeline_bubble_estimate", "step_time_min_s", "step_time_max_s",
           "slowest_rank")
OVERRIDES = ["launch.procs_per_node=2", "parallel.tp=1", "parallel.pp=2", "train.steps=8",
             "logging.detail_interval=4", "checkpoint.save_interval=4", "logging.trace_steps=[2,3]",
             "logging.tensorboard=false"]


@pytest.fixture(scope="module")
def profiled_run(tmp_path_factory, byte_data):
    run_dir = tmp_path_factory.mktemp("profiled") / "run"
    overrides = [f"data.paths=[{byte_data}]", f"data.eod_token_id={EOD_ID}",
                 f"logging.run_dir={run_dir}", *OVERRIDES]
    train(overrides)
    return run_dir, load_recipe(TINY_RECIPE, overrides)


def test_every_step_records_throughput_and_its_time_breakdown(profiled_run):
    run_dir, recipe = profiled_run
    records = read_metrics(run_dir)
    assert [r["step"] for r in records] == list(range(1, 9))  # checkpoint time joins its step
    tokens = recipe.train.global_batch_size * recipe.train.seq_length
    model_flops = flops_per_token(recipe.model, recipe.train.seq_length).model * tokens
    for r in records:
        assert all(isinstance(r[key], float) and r[key] >= 0 for key in EVERY_STEP), r
        assert r["mfu"] is None and r["peak_tflops"] is None and r["device"] == "cpu"
        parts = r["data_wait_s"] + r["forward_backward_s"] + r["grad_sync_s"] + r["optimizer_s"]
        assert 0 < parts <= r["step_time_s"]
        assert r["tokens_per_s_per_gpu"] == pytest.approx(tokens / r["step_time_s"] / 2)
        assert r["tflops_per_gpu"] == pytest.approx(model_flops / r["step_time_s"] / 2 / 1e12)
        sampled = r["step"] % 4 == 0
        assert all((key in r) == sampled for key in SAMPLED), r
        assert ("checkpoint_save_s" in r) == sampled
        if sampled:
            assert r["checkpoint_save_s"] > 0
            assert 0 <= r["pipeline_bubble"] < 1
            # PP2, 4 micro-batches: (p-1)/(m+p-1)
            assert r["pipeline_bubble_estimate"] == pytest.approx(1 / 5)
            assert r["step_time_min_s"] <= r["step_time_max_s"] and r["slowest_rank"] in (0, 1)
    for rank in (0, 1):
        trace = json.loads((run_dir / "trace" / f"rank_{rank}.steps_2-3.pt.trace.json").read_text())
        assert trace["traceEvents"]


def test_profile_report_reads_the_run(profiled_run):
    from matplotlib.image import imread

    run_dir, _ = profiled_run
    out = run_cli(["profile", "report", str(run_dir), "--warmup", "2"])
    assert "report.md" in out.stdout
    report = (run_dir / "profile" / "report.md").read_text()
    steady = read_metrics(run_dir)[2:]
    step_time = statistics.median(r["step_time_s"] for r in steady)
    assert f"| step time (s) | {step_time:.4g} |" in report
    wait = statistics.median(r["data_wait_s"] for r in steady)
    assert f"| data wait | {wait:.4g} | {100 * wait / step_time:.1f}% |" in report
    assert "Checkpoint saves: 2," in report and "no MFU" in report
    assert "(p-1)/(m*v+p-1) = 20.0%" in report
    for name in ("throughput.png", "step_time.png", "memory.png"):
        image = imread(run_dir / "profile" / name)
        assert image.shape[0] >= 200 and image.shape[1] >= 600
        assert image.std() > 0.01  # something is drawn
