"""`make gpu-check`: the GPU tests and the throughput benchmark on one CUDA device, with every figure
in one JSON file.

    python bench/gpu_check.py --out outputs/gpu_check.json

Runs ``pytest tests/gpu`` and ``bench/gpu_throughput.py`` (defaults: Llama-3-8B shape, 4 layers,
seq 8192, BF16, ours against Hugging Face) each under its own time limit, so that the whole check
ends well inside 8 minutes. The GPU tests: 3 BF16 steps with MFU against the card's peak; with 2
GPUs, TP2 with sequence parallelism and PP2 with interleaving over NCCL against one GPU; with
Transformer Engine, its spec, a checkpoint converted on CPU ranks (where TE is installed) in
the TE spec (fused cross-entropy) against the SDPA spec, and a fine-tuning step whose gradient norm
with the cross entropy chosen for the installed TE equals the unfused one. Each one's outcome, or why it was
skipped, is in the JSON's ``tests_gpu`` output (pytest ``-rA``); megatron-core and this project must already be installed (the Makefile
target does that from .whl/ without network). Any of ``NEEDED_MODULES`` that is absent stops the
check before it starts (exit status 2, the names in the JSON).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# What the check imports beyond the standard library. The Makefile target installs megatron-core
# and this project with --no-deps --no-index, so the rest must be on the machine already.
NEEDED_MODULES = ("torch", "megatron.core", "megatron_cpt", "transformers", "safetensors",
                  "tokenizers", "yaml", "numpy", "psutil", "tqdm", "packaging", "pytest")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, metavar="JSON")
    parser.add_argument("--tests-timeout", type=int, default=180, metavar="S")
    parser.add_argument("--bench-timeout", type=int, default=240, metavar="S")
    parser.add_argument("bench_args", nargs=argparse.REMAINDER,
                        help="after --: arguments for bench/gpu_throughput.py")
    args = parser.parse_args(argv)
    if args.tests_timeout < 1 or args.bench_timeout < 1:
        parser.error("--tests-timeout / --bench-timeout: must be >= 1 second")
    if args.bench_args[:1] == ["--"]:
        args.bench_args = args.bench_args[1:]
    return args


def missing_modules(names: tuple[str, ...]) -> list[str]:
    missing = []
    for name in names:
        try:
            found = importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:  # its parent package is absent
            found = False
        if not found:
            missing.append(name)
    return missing


def write_json(out: Path, result: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(out)


def run_step(command: list[str], timeout: float) -> dict:
    """Run ``command`` in a session of its own; past ``timeout`` seconds, kill it and everything
    it started, so that no process of a timed-out step is left on the GPU for the next one."""
    start = time.perf_counter()
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, errors="replace", start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
        status = proc.returncode
    except subprocess.TimeoutExpired:
        kill_process_tree(proc.pid)
        stdout, stderr = proc.communicate()
        status = "timeout"
    print(stdout[-3000:], stderr[-3000:], sep="\n", flush=True)
    return {"command": " ".join(command), "status": status,
            "seconds": round(time.perf_counter() - start, 1),
            "stdout_tail": stdout[-1500:], "stderr_tail": stderr[-1500:]}


def kill_process_tree(pid: int) -> None:
    """SIGKILL process group ``pid`` (the step's session) and every descendant of ``pid``:
    torchrun starts each rank in a session of its own, which a signal to the group would miss."""
    import psutil

    try:
        descendants = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        descendants = []
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for process in descendants:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out).resolve()
    missing = missing_modules(NEEDED_MODULES)
    if missing:
        write_json(out, {"missing_modules": missing})
        print(f"gpu-check: error: {sys.executable} lacks {', '.join(missing)} (the Makefile "
              f"installs only megatron-core and this project, with --no-deps --no-index; see "
              f"docs/BENCHMARKS.md)", file=sys.stderr)
        return 2
    import torch

    if not torch.cuda.is_available():
        print("gpu-check: CUDA is not available on this machine", file=sys.stderr)
        return 2
    bench_json = out.with_name(out.stem + ".throughput.json")
    bench_json.unlink(missing_ok=True)  # never report an earlier run's figures
    start = time.perf_counter()
    tests = run_step([sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider",
                      "tests/gpu"], args.tests_timeout)
    bench = run_step([sys.executable, "bench/gpu_throughput.py", "--out", str(bench_json),
                      *args.bench_args], args.bench_timeout)
    result = {"card": torch.cuda.get_device_name(), "tests_gpu": tests, "bench": bench,
              "throughput": json.loads(bench_json.read_text()) if bench_json.is_file() else None,
              "total_seconds": round(time.perf_counter() - start, 1)}
    write_json(out, result)
    print(f"gpu-check: figures in {out}")
    return 0 if tests["status"] == 0 and bench["status"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
