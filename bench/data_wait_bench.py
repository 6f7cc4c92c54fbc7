"""How long the training loop waits for data: one micro-batch of Llama-3-sized tokens through the
loop's own data path (megatron-core GPTDataset blend -> ``microbatches``), on this CPU.

    .venv/bin/python bench/data_wait_bench.py                 # seq 8192, 2 sources, 64 micro-batches
    .venv/bin/python bench/data_wait_bench.py --seq 4096 --steps 4

Writes two indexed datasets of random token ids (vocabulary 128256, int32, documents of 200 to
6000 tokens) under --work-dir, builds the blended training set as ``megatron-cpt train`` does, and
times ``next()`` of ``microbatches`` (what ``StepTimers`` records as ``data_wait_s``). Beside it:
the compute time of one Llama-3-8B micro-batch at the H100 SXM's dense BF16 peak, a lower bound,
so the printed share is an upper bound of the data wait's share of a step.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

VOCAB = 128256


def write_random_source(prefix: Path, tokens: int, seed: int) -> None:
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    rng = np.random.default_rng(seed)
    builder = IndexedDatasetBuilder(str(prefix) + ".bin", dtype=np.int32)
    written = 0
    while written < tokens:
        doc = rng.integers(1, VOCAB, size=int(rng.integers(200, 6000)), dtype=np.int32)
        builder.add_document(np.append(doc, np.int32(0)), [len(doc) + 1])
        written += len(doc) + 1
    builder.finalize(str(prefix) + ".idx")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seq", type=int, default=8192)
    parser.add_argument("--steps", type=int, default=2, help="global batches to time")
    parser.add_argument("--global-batch", type=int, default=64)
    parser.add_argument("--tokens-per-source", type=int, default=20_000_000)
    parser.add_argument("--work-dir", default=None, help="default: a temporary directory")
    args = parser.parse_args()

    from megatron_cpt.config.recipe import load_recipe
    from megatron_cpt.data.datasets import build_training_data, microbatches
    from megatron_cpt.data.inspect_mix import single_process_group
    from megatron_cpt.profile.flops import flops_per_token
    from megatron_cpt.profile.hardware import peak_for

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="data_wait_"))
    work.mkdir(parents=True, exist_ok=True)
    prefixes = [work / "zh", work / "en"]
    for seed, prefix in enumerate(prefixes):
        if not Path(str(prefix) + ".idx").is_file():
            write_random_source(prefix, args.tokens_per_source, seed)
    recipe_path = Path(__file__).resolve().parents[1] / "examples" / "llama3_8b_cpt_8xh100_fp8.yaml"
    recipe = load_recipe(recipe_path, [
        "data.mixture=null", f"data.paths=[{prefixes[0]}, {prefixes[1]}]", "data.weights=[0.33, 0.67]",
        "data.eod_token_id=0", f"train.seq_length={args.seq}", "train.micro_batch_size=1",
        f"train.global_batch_size={args.global_batch}", "launch.procs_per_node=1", "parallel.tp=1"])
    start = time.perf_counter()
    with single_process_group(str(work)):
        data = build_training_data(recipe.data, recipe.train, recipe.model.vocab_size,
                                   args.steps * args.global_batch, 0, cache_dir=str(work / "cache"))
    build_s = time.perf_counter() - start
    waits = []
    for step in range(args.steps):
        iterator = microbatches(data.train, step * args.global_batch, recipe.train, 0, 1)
        while True:
            begin = time.perf_counter()
            try:
                next(iterator)
            except StopIteration:
                break
            waits.append(time.perf_counter() - begin)
    wait = statistics.median(waits)
    peak = peak_for("NVIDIA H100 80GB HBM3", "bf16").tflops * 1e12
    compute = flops_per_token(recipe.model, args.seq).model * args.seq / peak
    print(f"dataset build (index + shuffle, once per run): {build_s:.1f} s")
    print(f"data wait per micro-batch of 1 x {args.seq} tokens: median {wait * 1e3:.2f} ms, "
          f"max {max(waits) * 1e3:.2f} ms over {len(waits)} ({args.seq / wait / 1e6:.1f} M tokens/s)")
    print(f"Llama-3-8B compute of that micro-batch at the H100 SXM's dense BF16 peak: "
          f"{compute * 1e3:.0f} ms -> data wait is at most {100 * wait / (wait + compute):.3f}% "
          f"of a step")


if __name__ == "__main__":
    main()
