"""A run's throughput, MFU, step-time breakdown and memory, as Markdown and PNGs.

    megatron-cpt profile report runs/llama3_tiny_cpt_2xcpu

Reads ``RUN_DIR/metrics.jsonl`` and writes ``RUN_DIR/profile/``: ``report.md`` (a table of medians
after the warm-up steps), ``throughput.png``, ``step_time.png`` and ``memory.png``.
"""

from __future__ import annotations

import shutil
import statistics
from collections import Counter
from importlib import resources
from pathlib import Path
from string import Template
from typing import Optional

from megatron_cpt.errors import UserError
from megatron_cpt.profile import plots

# The disjoint parts of step_time_s, in the order they are stacked.
BREAKDOWN = (("data wait", "data_wait_s"), ("forward-backward", "forward_backward_s"),
             ("exposed gradient sync", "grad_sync_s"), ("optimizer", "optimizer_s"))


def _values(records: list[dict], key: str) -> list[float]:
    return [r[key] for r in records if isinstance(r.get(key), (int, float))]


def _median(records: list[dict], key: str) -> Optional[float]:
    values = _values(records, key)
    return statistics.median(values) if values else None


def _number(value: Optional[float], unit: str = "") -> str:
    if value is None:
        return "n/a"
    return f"{value:.4g}{unit}"


def _percent(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _other_time(record: dict) -> Optional[float]:
    if not isinstance(record.get("step_time_s"), (int, float)):
        return None
    parts = [record.get(key) for _, key in BREAKDOWN]
    if not all(isinstance(p, (int, float)) for p in parts):
        return None
    return max(record["step_time_s"] - sum(parts), 0.0)


def _summary_rows(records: list[dict]) -> str:
    rows = [("step time (s)", _number(_median(records, "step_time_s"))),
            ("tokens/s per GPU", _number(_median(records, "tokens_per_s_per_gpu"))),
            ("model TFLOP/s per GPU", _number(_median(records, "tflops_per_gpu"))),
            ("MFU", _percent(_median(records, "mfu")))]
    model, hardware = _median(records, "tflops_per_gpu"), _median(records, "hardware_tflops_per_gpu")
    if hardware is not None and model is not None and hardware != model:
        rows.insert(3, ("hardware TFLOP/s per GPU (with recompute)", _number(hardware)))
    return "\n".join(f"| {name} | {value} |" for name, value in rows)


def _breakdown_rows(records: list[dict]) -> str:
    step = _median(records, "step_time_s")
    others = [v for v in (_other_time(r) for r in records) if v is not None]
    parts = [(label, _median(records, key)) for label, key in BREAKDOWN]
    parts.append(("other (batch digest, loss reduction, logging)",
                  statistics.median(others) if others else None))
    rows = []
    for label, value in parts:
        share = value / step if value is not None and step else None
        rows.append(f"| {label} | {_number(value)} | {_percent(share)} |")
    return "\n".join(rows)


def _pipeline_line(records: list[dict]) -> str:
    measured = _median(records, "pipeline_bubble")
    estimate = _median(records, "pipeline_bubble_estimate")
    if measured is None:
        return "Pipeline bubble: not measured (no sampled steps)."
    return (f"Pipeline bubble (share of forward-backward time outside compute, median of "
            f"{len(_values(records, 'pipeline_bubble'))} sampled steps): {_percent(measured)}; "
            f"(p-1)/(m*v+p-1) = {_percent(estimate)}.")


def _straggler_line(records: list[dict]) -> str:
    sampled = [r for r in records if isinstance(r.get("step_time_max_s"), (int, float))]
    if not sampled:
        return "Stragglers: no sampled steps."
    slowest, times = Counter(r["slowest_rank"] for r in sampled).most_common(1)[0]
    spread = statistics.median(
        (r["step_time_max_s"] - r["step_time_min_s"]) / r["step_time_max_s"]
        for r in sampled if r["step_time_max_s"] > 0) if any(
        r["step_time_max_s"] > 0 for r in sampled) else 0.0
    return (f"Stragglers ({len(sampled)} sampled steps): rank {slowest} was the slowest "
            f"{times} times; the fastest rank's step is {_percent(spread)} shorter (median).")


def _checkpoint_line(all_records: list[dict]) -> str:
    saves = _values(all_records, "checkpoint_save_s")
    if not saves:
        return "Checkpoint saves: none in these steps."
    return (f"Checkpoint saves: {len(saves)}, median {_number(statistics.median(saves))} s, "
            f"longest {_number(max(saves))} s.")


def _memory_line(all_records: list[dict]) -> str:
    allocated = _values(all_records, "memory_allocated_peak_gb")
    if allocated:
        reserved = _values(all_records, "memory_reserved_peak_gb")
        return (f"Peak GPU memory: {max(allocated):.2f} GB allocated, "
                f"{max(reserved) if reserved else float('nan'):.2f} GB reserved (logging rank).")
    rss = _values(all_records, "memory_rss_peak_gb")
    if rss:
        return f"Peak resident memory: {max(rss):.2f} GB (CPU, logging rank's process)."
    return "Memory: not recorded."


def _device_line(records: list[dict]) -> str:
    last = records[-1]
    device = last.get("device", "unknown device")
    peak = last.get("peak_tflops")
    if peak is None:
        return f"Device: {device}; no peak FLOP/s is known for it, so no MFU."
    precision = last.get("peak_precision")
    if precision is None:  # runs recorded before the precision was
        return f"Device: {device}; MFU against a dense peak of {peak:g} TFLOP/s."
    return f"Device: {device}; MFU against its {precision.upper()} dense peak of {peak:g} TFLOP/s."


def _plot(steady: list[dict], out_dir: Path) -> None:
    steps = [r["step"] for r in steady]

    def col(key):
        return [r.get(key) for r in steady]

    fig, (top, bottom) = plots.new_figure(rows=2)
    plots.plot_lines(top, steps, {"tokens/s per GPU": col("tokens_per_s_per_gpu")}, "tokens/s per GPU")
    tflops = {"model": col("tflops_per_gpu")}
    if col("hardware_tflops_per_gpu") != tflops["model"]:  # recomputation adds hardware FLOPs
        tflops["hardware (with recompute)"] = col("hardware_tflops_per_gpu")
    plots.plot_lines(bottom, steps, tflops, "TFLOP/s per GPU")
    peak = steady[-1].get("peak_tflops")
    if peak:
        mfu_axis = bottom.secondary_yaxis("right", functions=(lambda x: 100 * x / peak,
                                                              lambda y: y * peak / 100))
        mfu_axis.set_ylabel("MFU (%)")
    plots.save_figure(fig, out_dir / "throughput.png", "Throughput")

    fig, (ax,) = plots.new_figure()
    parts = {label: col(key) for label, key in BREAKDOWN}
    parts["other"] = [_other_time(r) for r in steady]
    plots.plot_stacked(ax, steps, parts, "seconds")
    plots.save_figure(fig, out_dir / "step_time.png", "Step time")

    fig, (ax,) = plots.new_figure()
    if any(r.get("memory_allocated_peak_gb") is not None for r in steady):
        series = {"allocated": col("memory_allocated_peak_gb"),
                  "reserved": col("memory_reserved_peak_gb")}
    else:
        series = {"resident (RSS)": col("memory_rss_peak_gb")}
    plots.plot_lines(ax, steps, series, "peak GB")
    plots.save_figure(fig, out_dir / "memory.png", "Peak memory")


def steady_records(records: list[dict], warmup: int) -> list[dict]:
    """The records after the first ``warmup`` steps; all of them when there are no more."""
    return records[warmup:] if len(records) > warmup else records


def render_report(records: list[dict], run_name: str, steady: list[dict]) -> str:
    """The Markdown report of ``records`` (one per step, as in metrics.jsonl), summarised over
    ``steady`` (``steady_records``)."""
    template = Template(resources.files("megatron_cpt.profile").joinpath(
        "templates/report.md").read_text())
    return template.substitute(
        run_name=run_name, device_line=_device_line(records),
        first_step=records[0]["step"], last_step=records[-1]["step"],
        summary_from=steady[0]["step"], warmup=len(records) - len(steady),
        summary_rows=_summary_rows(steady), breakdown_rows=_breakdown_rows(steady),
        pipeline_line=_pipeline_line(steady), straggler_line=_straggler_line(steady),
        checkpoint_line=_checkpoint_line(records), memory_line=_memory_line(records))


def write_report(run_dir: str | Path, out_dir: str | Path | None = None, warmup: int = 2) -> Path:
    """Write report.md and the PNGs to ``out_dir`` (default RUN_DIR/profile); returns out_dir."""
    from megatron_cpt.run_files import read_metrics

    run_dir = Path(run_dir)
    if not (run_dir / "metrics.jsonl").is_file():
        raise UserError(f"{run_dir / 'metrics.jsonl'}: no such file (is {run_dir} a run directory?)")
    if warmup < 0:
        raise UserError(f"--warmup: must be >= 0, got {warmup}")
    records = sorted((r for r in read_metrics(run_dir) if "step_time_s" in r),
                     key=lambda r: r["step"])
    if not records:
        raise UserError(f"{run_dir / 'metrics.jsonl'}: no training steps recorded")
    out_dir = Path(out_dir) if out_dir is not None else run_dir / "profile"
    staging = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    steady = steady_records(records, warmup)
    (staging / "report.md").write_text(render_report(records, run_dir.name, steady))
    _plot(steady, staging)
    shutil.rmtree(out_dir, ignore_errors=True)
    staging.rename(out_dir)
    return out_dir
