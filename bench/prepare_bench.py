"""Throughput of ``megatron-cpt data prepare`` on the demo corpus: tokens/s and peak RSS.

    .venv/bin/python bench/prepare_bench.py                      # corpus + tokenizer built in runs/bench
    .venv/bin/python bench/prepare_bench.py --workers 1 2 --tokenizer sp:tok/tokenizer.model

Each run is ``data prepare --workers N`` under GNU ``/usr/bin/time -v`` (``apt-get install -y time``).
tokens/s is from PREFIX.stats.json (reading, encoding and writing; not the interpreter and
megatron-core import, which the wall time includes); tokens per CPU-second (main process plus
workers, same span) is the figure to compare on a machine that other jobs share. Peak RSS is GNU time's maximum resident set
size: the largest single process (the main process or one worker), not their sum.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

GNU_TIME = Path("/usr/bin/time")


def run_cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "megatron_cpt", "data", *args], check=True)


def timed_prepare(corpus: Path, prefix: Path, tokenizer: str, workers: int) -> dict:
    command = [str(GNU_TIME), "-v", sys.executable, "-m", "megatron_cpt", "data", "prepare",
               "--input", str(corpus), "--output-prefix", str(prefix), "--tokenizer", tokenizer,
               "--workers", str(workers), "--force", "--no-progress"]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"prepare failed ({done.returncode}):\n{done.stderr[-2000:]}")
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr).group(1))
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", done.stderr)
    parts = reversed(wall.group(1).split(":"))  # [h:]m:ss
    seconds = sum(float(part) * 60 ** i for i, part in enumerate(parts))
    stats = json.loads(Path(f"{prefix}.stats.json").read_text())
    return {"workers": workers, "docs": stats["docs"], "tokens": stats["tokens"],
            "bytes": stats["bytes"], "prepare_s": stats["seconds"],
            "tokens_per_s": stats["tokens_per_second"], "cpu_s": stats["cpu_seconds"],
            "tokens_per_cpu_s": stats["tokens_per_cpu_second"], "wall_s": round(seconds, 2),
            "peak_rss_mib": round(rss_kb / 1024, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work-dir", default="runs/bench", type=Path)
    parser.add_argument("--corpus", type=Path, help="default: WORK/corpus (built by demo-corpus)")
    parser.add_argument("--tokenizer", help="default: sp BPE (vocab 8000) trained on the corpus")
    parser.add_argument("--workers", type=int, nargs="+", default=[2])
    args = parser.parse_args()
    if not GNU_TIME.exists():
        print("bench: /usr/bin/time not found; install it with: apt-get install -y time",
              file=sys.stderr)
        return 2
    corpus = args.corpus or args.work_dir / "corpus"
    if not (corpus / "manifest.json").exists() and args.corpus is None:
        run_cli("demo-corpus", str(corpus))
    tokenizer = args.tokenizer
    if tokenizer is None:
        tok_dir = args.work_dir / "tokenizer"
        if not (tok_dir / "tokenizer.model").exists():
            run_cli("train-tokenizer", "--input", str(corpus), "--vocab-size", "8000",
                    "--output", str(tok_dir))
        tokenizer = f"sp:{tok_dir / 'tokenizer.model'}"
    results = [timed_prepare(corpus, args.work_dir / f"prepared_w{w}", tokenizer, w)
               for w in args.workers]
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    cores = len(os.sched_getaffinity(0))
    print(f"\n{time.strftime('%Y-%m-%d')}, {platform.machine()} {cores}-core "
          f"CPU, load average {load} (other jobs share the machine when > 0), "
          f"python {platform.python_version()}, tokenizer {tokenizer}")
    print("| workers | docs | tokens | MB text | prepare s | tokens/s | CPU s | tokens/CPU-s "
          "| wall s | peak RSS MiB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['workers']} | {r['docs']} | {r['tokens']} | {r['bytes'] / 1e6:.1f} | "
              f"{r['prepare_s']:.1f} | {r['tokens_per_s']:,.0f} | {r['cpu_s']:.1f} | "
              f"{r['tokens_per_cpu_s']:,.0f} | {r['wall_s']:.1f} | "
              f"{r['peak_rss_mib']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
