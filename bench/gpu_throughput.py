"""Training throughput of our megatron-core Llama against Hugging Face's LlamaForCausalLM (SDPA)
with the same shapes, weights and batch, on one device; and the memory estimate beside the peak.

    python bench/gpu_throughput.py --out outputs/gpu_throughput.json          # H100: 8B-shaped, 4 layers
    python bench/gpu_throughput.py --preset llama3-tiny --layers 2 --seq 64 \\
        --micro-batches 2 --steps 1 --dtype fp32 --out /tmp/tiny.json        # CPU smoke run

Per model: forward + backward over ``--micro-batches`` micro-batches of ``--micro-batch`` x
``--seq`` tokens (gradients accumulated), timed over ``--steps`` after ``--warmup``; model
TFLOP/s from megatron_cpt.profile.flops. Ours is also timed as the full training step (with the
optimizer), and its peak memory is set beside ``profile estimate``'s figure for the same layout.
Both models compute the loss of one micro-batch from the same weights first (``loss_abs_diff``).
On CUDA, one more step of ours runs under torch.profiler: its top kernels say what limits it.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import sys
import time
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="llama3-8b", help="model shape (default llama3-8b)")
    parser.add_argument("--layers", type=int, default=4, help="transformer layers (default 4)")
    parser.add_argument("--seq", type=int, default=8192, help="sequence length (default 8192)")
    parser.add_argument("--micro-batch", type=int, default=1, help="sequences per micro-batch")
    parser.add_argument("--micro-batches", type=int, default=4, help="micro-batches per step")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per model (default 5)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    parser.add_argument("--dtype", default="bf16", choices=("bf16", "fp32"))
    parser.add_argument("--out", required=True, metavar="JSON", help="where to write the figures")
    parser.add_argument("--no-trace", dest="trace", action="store_false",
                        help="skip the torch.profiler step on CUDA")
    args = parser.parse_args(argv)
    for name in ("layers", "seq", "micro_batch", "micro_batches", "steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')}: must be >= 1, got {getattr(args, name)}")
    if args.warmup < 0:
        parser.error(f"--warmup: must be >= 0, got {args.warmup}")
    return args


def bench_recipe(args: argparse.Namespace):
    """The one-GPU recipe this benchmark trains: what the memory estimate and FLOPs are taken of."""
    from megatron_cpt.config.recipe import recipe_from_dict
    from megatron_cpt.model.backend import resolve_attention_backend

    return recipe_from_dict({
        "model": {"preset": args.preset, "num_layers": args.layers, "dtype": args.dtype,
                  "attention_backend": resolve_attention_backend("auto")},
        "parallel": {"tp": 1, "pp": 1},
        "train": {"seq_length": args.seq, "micro_batch_size": args.micro_batch,
                  "global_batch_size": args.micro_batch * args.micro_batches, "steps": 1000},
        "optim": {"schedule": {"warmup_steps": 10}},
        "data": {"paths": ["unused"]},
        "launch": {"procs_per_node": 1},
    }).validate()


def batches(args, vocab: int, count: int):
    import torch

    generator = torch.Generator().manual_seed(1234)
    out = []
    for _ in range(count):
        tokens = torch.randint(0, vocab, (args.micro_batch, args.seq + 1), generator=generator)
        out.append({"tokens": tokens[:, :-1], "labels": tokens[:, 1:],
                    "loss_mask": torch.ones(args.micro_batch, args.seq),
                    "position_ids": torch.arange(args.seq).expand(args.micro_batch, args.seq)})
    return out


def hf_state_dict(chunk, cfg) -> dict:
    """Our TP1/PP1 model's weights under Hugging Face names, through conversion/llama.py's table."""
    from megatron_cpt.conversion.llama import mapping_by_key, split_mcore_tensor

    table = mapping_by_key(cfg)
    # The local spec keeps the RMSNorms as modules of their own; the table names them as TE does.
    local_names = {"input_layernorm.weight": "self_attention.linear_qkv.layer_norm_weight",
                   "pre_mlp_layernorm.weight": "mlp.linear_fc1.layer_norm_weight"}
    out = {}
    for name, tensor in chunk.state_dict().items():
        if name.endswith("_extra_state"):
            continue
        match = re.match(r"decoder\.layers\.(\d+)\.(.*)", name)
        layer = int(match.group(1)) if match else None
        key = f"decoder.layers.{local_names.get(match.group(2), match.group(2))}" if match else name
        out.update(split_mcore_tensor(table[key], tensor.detach(), cfg, layer))
    return out


def synchronize() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, steps: int, warmup: int) -> float:
    """Seconds per call of ``fn``, the mean over ``steps`` after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    synchronize()
    return (time.perf_counter() - start) / steps


def figures(seconds: float, tokens: int, flops_per_token: float, peak) -> dict:
    tflops = flops_per_token * tokens / seconds / 1e12
    return {"step_s": seconds, "tokens_per_s": tokens / seconds, "tflops": tflops,
            "mfu": tflops / peak.tflops if peak.tflops else None}


def top_kernels(step, rows: int = 15) -> list[dict]:
    import torch

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        step()
        synchronize()
    events = sorted(prof.key_averages(), key=lambda e: e.device_time_total, reverse=True)
    total = sum(e.device_time_total for e in events) or 1
    return [{"kernel": e.key[:120], "share": e.device_time_total / total,
             "ms": e.device_time_total / 1e3, "calls": e.count} for e in events[:rows]]


def run(args: argparse.Namespace) -> dict:
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29541")
    import torch
    import transformers

    from megatron_cpt.conversion.llama_config import hf_config_from_model
    from megatron_cpt.model.build import build_model
    from megatron_cpt.profile.flops import flops_per_token
    from megatron_cpt.profile.hardware import detect_peak, training_precision
    from megatron_cpt.profile.memory import GB, estimate_memory
    from megatron_cpt.runtime.parallel import (build_optimizer, destroy_parallel,
                                               initialize_parallel, wrap_with_ddp)
    from megatron_cpt.train.schedule import build_scheduler
    from megatron_cpt.train.step import run_forward_backward, train_step

    recipe = bench_recipe(args)
    cfg = recipe.model
    initialize_parallel(recipe.parallel, recipe.train.seed)
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    peak = detect_peak(training_precision(cfg.dtype, fp8=False))
    per_token = flops_per_token(cfg, args.seq).model
    tokens = args.micro_batch * args.micro_batches * args.seq
    data = batches(args, cfg.vocab_size, args.micro_batches)

    # Ours: the product's runtime path (DDP with fp32 gradient buffers, megatron-core optimizer).
    # A dict: emptied to free it below. Pre-training batches: the loss mask is all ones.
    ours = {"chunks": build_model(cfg, recipe.parallel, loss_mask_varies=False,
                                  micro_batch_size=args.micro_batch)}
    ours["model"] = wrap_with_ddp(ours["chunks"], recipe.parallel)
    ours["optimizer"] = build_optimizer(ours["model"], recipe.optim, recipe.parallel, cfg.dtype)
    ours["scheduler"] = build_scheduler(ours["optimizer"], recipe.optim, recipe.train.steps)

    def ours_forward_backward():
        ours["model"][0].zero_grad_buffer()
        run_forward_backward(ours["model"], iter(data), args.micro_batches, args.seq,
                             args.micro_batch, forward_only=False)

    def ours_step():
        train_step(ours["model"], ours["optimizer"], ours["scheduler"], iter(data),
                   args.micro_batches, args.seq, args.micro_batch, skip_nonfinite=False)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    ours_fb = timed(ours_forward_backward, args.steps, args.warmup)
    ours_full = timed(ours_step, args.steps, max(args.warmup, 1))  # optimizer state exists after one
    measured_peak = torch.cuda.max_memory_allocated() / GB if device.type == "cuda" else None
    kernels = top_kernels(ours_step) if device.type == "cuda" and args.trace else None

    # Hugging Face, same weights; the losses of one micro-batch must agree.
    hf_config = transformers.LlamaConfig(**hf_config_from_model(cfg, args.dtype),
                                         attn_implementation="sdpa")
    with torch.device(device):
        hf = transformers.LlamaForCausalLM(hf_config).to(dtype)
    ours_model = ours["chunks"][0]
    hf.load_state_dict(hf_state_dict(ours_model, cfg))
    with torch.no_grad():
        first = data[0]
        ours_loss = ours_model(first["tokens"].to(device), first["position_ids"].to(device), None,
                               labels=first["labels"].to(device)).float().mean().item()
        logits = hf(input_ids=first["tokens"].to(device)).logits.float()
        hf_loss = torch.nn.functional.cross_entropy(
            logits.view(-1, logits.size(-1)), first["labels"].to(device).reshape(-1)).item()
        del logits
    del ours_model
    ours.clear()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    hf.train()

    def hf_forward_backward():
        hf.zero_grad(set_to_none=True)
        for batch in data:
            ids = batch["tokens"].to(device, non_blocking=True)
            hf(input_ids=ids, labels=ids).loss.backward()

    hf_fb = timed(hf_forward_backward, args.steps, args.warmup)
    hf_peak = torch.cuda.max_memory_allocated() / GB if device.type == "cuda" else None
    destroy_parallel()

    stage = estimate_memory(recipe).most_loaded
    ours = figures(ours_fb, tokens, per_token, peak)
    return {
        "device": peak.device, "peak": peak.describe(), "torch": torch.__version__,
        "transformers": transformers.__version__, "megatron_core": megatron_core_version(),
        "shape": {"preset": args.preset, "layers": args.layers, "seq": args.seq,
                  "micro_batch": args.micro_batch, "micro_batches": args.micro_batches,
                  "dtype": args.dtype, "ours_layers": cfg.attention_backend,
                  "hf_attention": hf.config._attn_implementation,
                  "model_flops_per_token": per_token},
        "ours_forward_backward": ours, "ours_training_step": figures(ours_full, tokens, per_token, peak),
        "hf_forward_backward": figures(hf_fb, tokens, per_token, peak),
        "ratio_ours_to_hf": hf_fb / ours_fb,
        "loss": {"ours": ours_loss, "hf": hf_loss, "abs_diff": abs(ours_loss - hf_loss)},
        "memory": {"measured_peak_allocated_gb": measured_peak, "hf_peak_allocated_gb": hf_peak,
                   "estimate_gb": stage.total / GB,
                   "estimate_parts_gb": {part: getattr(stage, part) / GB for part in (
                       "weights", "gradients", "optimizer", "activations", "logits")}},
        "top_kernels_of_our_step": kernels,
    }


def megatron_core_version() -> str:
    from importlib.metadata import version

    return version("megatron-core")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(out)
    ours, hf = result["ours_forward_backward"], result["hf_forward_backward"]
    print(f"{result['device']}: ours {ours['tflops']:.1f} TFLOP/s, {ours['tokens_per_s']:.0f} "
          f"tokens/s; Hugging Face {hf['tflops']:.1f} TFLOP/s, {hf['tokens_per_s']:.0f} tokens/s; "
          f"ratio {result['ratio_ours_to_hf']:.2f}; loss diff {result['loss']['abs_diff']:.2e}; "
          f"figures in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
