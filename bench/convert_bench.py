"""Wall time and peak memory of `convert hf-to-mcore` (TP2-PP2) and `convert mcore-to-hf` on a
Llama-3-8B-shaped checkpoint cut to 4 layers (hidden 4096, 128256 vocab, bf16, about 3.9 GB).

    python bench/convert_bench.py --work-dir /tmp/convert_bench

The source checkpoint is random-init and written tensor by tensor (never the whole model in memory).
Each conversion runs under ``/usr/bin/time -v``, whose "Maximum resident set size" is the peak RSS of
the largest single process of the command (getrusage over the waited-for children: one rank for
hf-to-mcore, the only process for mcore-to-hf). A sampler also sums the proportional set size (Pss)
of the whole process tree every 0.2 s: the peak of all ranks together, shared pages counted once. Results go to stdout as a Markdown table and
to ``WORK_DIR/results.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

from megatron_cpt.config.model import ModelConfig
from megatron_cpt.conversion.hf_io import ShardedSafetensorsWriter, parse_size, write_json
from megatron_cpt.conversion.llama import hf_shapes
from megatron_cpt.conversion.llama_config import hf_config_from_model
from megatron_cpt.config.presets import preset_fields

GIB = 2**30


def bench_model_config() -> ModelConfig:
    fields = {**preset_fields("llama3-8b"), "num_layers": 4, "dtype": "bf16"}
    return ModelConfig(**fields)


def write_random_checkpoint(directory: Path, cfg: ModelConfig, shard_bytes: int) -> int:
    """A random-init HF checkpoint, streamed tensor by tensor; returns its size in bytes."""
    directory.mkdir(parents=True)
    plan = [(name, shape, torch.bfloat16) for name, shape in hf_shapes(cfg).items()]
    writer = ShardedSafetensorsWriter(directory, plan, shard_bytes)
    generator = torch.Generator().manual_seed(0)
    for name, shape, dtype in plan:
        if len(shape) == 1:
            tensor = torch.ones(shape, dtype=dtype)
        else:
            tensor = (torch.randn(shape, generator=generator) * cfg.init_method_std).to(dtype)
        writer.write(name, tensor)
        del tensor
    writer.finish()
    config = hf_config_from_model(cfg, "bf16", base={"bos_token_id": 128000, "eos_token_id": 128001})
    write_json(directory / "config.json", config)
    return writer.total_bytes


def _tree_pss_bytes(root: int) -> int:
    """Sum of the proportional set size (Pss) over ``root`` and its descendants: pages shared by
    several processes (forked writers, libraries) are split between them, not counted in each."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        ppid = int(re.search(r"^PPid:\s+(\d+)", status, re.M).group(1))
        children.setdefault(ppid, []).append(int(entry))
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        try:
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
            total += int(re.search(r"^Pss:\s+(\d+) kB", rollup, re.M).group(1)) * 1024
        except (OSError, AttributeError):
            pass
        stack.extend(children.get(pid, []))
    return total


def run_measured(command: list[str], log: Path) -> dict:
    """Run under /usr/bin/time -v; returns wall seconds, max single-process RSS and peak tree Pss."""
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    started = time.monotonic()
    with open(log, "w") as handle:
        process = subprocess.Popen(["/usr/bin/time", "-v", *command], stdout=handle,
                                   stderr=subprocess.STDOUT, env=env)
        peak_tree = 0
        done = threading.Event()

        def sample() -> None:
            nonlocal peak_tree
            while not done.is_set():
                peak_tree = max(peak_tree, _tree_pss_bytes(process.pid))
                time.sleep(0.2)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        status = process.wait()
        done.set()
        sampler.join()
    wall = time.monotonic() - started
    text = log.read_text()
    if status != 0:
        raise SystemExit(f"{' '.join(command)} failed (exit {status}); see {log}")
    max_rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", text).group(1))
    return {"wall_s": round(wall, 1), "max_process_rss_bytes": max_rss_kb * 1024,
            "peak_tree_pss_bytes": peak_tree}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work-dir", default="/tmp/convert_bench")
    parser.add_argument("--hf-shard-size", type=parse_size, default="2GB",
                        help="shard size of the generated source checkpoint")
    parser.add_argument("--keep", action="store_true", help="keep the checkpoints afterwards")
    args = parser.parse_args()
    if not Path("/usr/bin/time").is_file():
        raise SystemExit("/usr/bin/time is missing (apt-get install -y time)")
    work = Path(args.work_dir)
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    cfg = bench_model_config()
    started = time.monotonic()
    size = write_random_checkpoint(work / "hf", cfg, args.hf_shard_size)
    print(f"source: {size / GIB:.2f} GiB in {time.monotonic() - started:.0f} s", flush=True)

    cli = [sys.executable, "-m", "megatron_cpt", "convert"]
    results = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{os.cpu_count()} CPU cores, {platform.machine()}, torch {torch.__version__}",
        "checkpoint_bytes": size,
        "hf_to_mcore_tp2_pp2": run_measured(
            [*cli, "hf-to-mcore", "--hf-dir", str(work / "hf"), "--out-dir", str(work / "mcore"),
             "--tp", "2", "--pp", "2"], work / "hf_to_mcore.log"),
    }
    print(f"hf-to-mcore done: {results['hf_to_mcore_tp2_pp2']}", flush=True)
    results["mcore_to_hf"] = run_measured(
        [*cli, "mcore-to-hf", "--ckpt-dir", str(work / "mcore"), "--out-dir", str(work / "hf_out")],
        work / "mcore_to_hf.log")
    print(f"mcore-to-hf done: {results['mcore_to_hf']}", flush=True)
    (work / "results.json").write_text(json.dumps(results, indent=2) + "\n")

    print(f"\n{results['date']}, {results['machine']}; checkpoint {size / GIB:.2f} GiB (bf16)\n")
    print("| conversion | wall time | peak RSS, largest process | peak Pss, all processes |")
    print("|---|---|---|---|")
    for label, key in (("hf-to-mcore TP2-PP2 (4 ranks)", "hf_to_mcore_tp2_pp2"),
                       ("mcore-to-hf (1 process)", "mcore_to_hf")):
        r = results[key]
        print(f"| {label} | {r['wall_s']:.0f} s | {r['max_process_rss_bytes'] / GIB:.2f} GiB "
              f"({100 * r['max_process_rss_bytes'] / size:.0f}%) | "
              f"{r['peak_tree_pss_bytes'] / GIB:.2f} GiB ({100 * r['peak_tree_pss_bytes'] / size:.0f}%) |")
    if not args.keep:
        for name in ("hf", "mcore", "hf_out"):
            shutil.rmtree(work / name, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
