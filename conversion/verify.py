"""Compare the logits of a Hugging Face model and of our megatron-core model on the same tokens.

    megatron-cpt convert verify --hf-dir HF_DIR --ckpt-dir CKPT --tp 2 --pp 2

Both run in fp32: transformers' ``AutoModelForCausalLM`` from ``HF_DIR`` and ``build_model`` (the
CPU layers of ``conversion.host.host_model_config``) loaded from ``CKPT`` with
``load_model_weights`` at the given TP/PP (any layout, not only the one the checkpoint was written
with). The batch is ``--batch-size`` x ``--seq-len`` random token ids from
``--seed``. It prints one line::

    verify: max_abs_diff=3.1e-06 max_rel_diff=4.0e-07 threshold=1e-04 ... OK

where ``max_rel_diff`` is ``max_abs_diff / max |HF logit|``, and exits 1 when ``max_abs_diff``
exceeds ``--threshold``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

import torch

from megatron_cpt.checkpointing.dist_io import read_meta
from megatron_cpt.config.loader import build_dataclass
from megatron_cpt.errors import ConfigError
from megatron_cpt.config.model import ModelConfig
from megatron_cpt.config.parallel import ParallelConfig

WORKER_MODULE = "megatron_cpt.conversion.verify"
DEFAULT_THRESHOLD = 1e-3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--hf-dir", required=True, help="Hugging Face model directory")
    parser.add_argument("--ckpt-dir", required=True, help="megatron-core checkpoint directory")
    parser.add_argument("--tp", type=int, default=1, help="tensor-parallel ranks to load with")
    parser.add_argument("--pp", type=int, default=1, help="pipeline-parallel ranks to load with")
    parser.add_argument("--vpp", type=int, default=None, help="virtual pipeline stages per rank")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                        help=f"largest accepted max |logit difference| (default {DEFAULT_THRESHOLD:g})")


def worker_argv(args: argparse.Namespace) -> list[str]:
    argv = ["--hf-dir", args.hf_dir, "--ckpt-dir", args.ckpt_dir, "--tp", str(args.tp),
            "--pp", str(args.pp), "--batch-size", str(args.batch_size), "--seq-len", str(args.seq_len),
            "--seed", str(args.seed), "--threshold", str(args.threshold)]
    return argv + (["--vpp", str(args.vpp)] if args.vpp is not None else [])


def prepare(args: argparse.Namespace) -> tuple[ModelConfig, ParallelConfig]:
    from megatron_cpt.conversion.hf_io import HfCheckpoint

    meta = read_meta(args.ckpt_dir)
    cfg = build_dataclass(ModelConfig, meta["model"], "model")
    HfCheckpoint(args.hf_dir).check_files()
    parallel = ParallelConfig(tp=args.tp, pp=args.pp, vpp=args.vpp)
    try:
        parallel.validate(cfg.num_layers, cfg.num_attention_heads, cfg.num_query_groups)
    except ConfigError as exc:
        raise ConfigError(f"--tp/--pp/--vpp: {exc}") from None
    return cfg, parallel


def token_batch(cfg: ModelConfig, parallel: ParallelConfig, batch_size: int = 2, seq_len: int = 32,
                seed: int = 0) -> torch.Tensor:
    """Random token ids; one sequence per micro-batch, and the interleaved schedule (vpp) needs a
    multiple of PP micro-batches, so the batch is rounded up to one."""
    if parallel.vpp:
        batch_size = -(-batch_size // parallel.pp) * parallel.pp
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, cfg.vocab_size, (batch_size, seq_len), generator=generator)


def _forward_step(data_iterator, model):
    tokens = next(data_iterator)
    positions = torch.arange(tokens.shape[1]).unsqueeze(0).expand_as(tokens)
    logits = model(tokens, positions, None)
    return logits, lambda output, non_loss_data=True: output


def megatron_logits(chunks, tokens: torch.Tensor) -> torch.Tensor | None:
    """Full-vocabulary logits [b, s, padded_vocab] on the last pipeline stage, None elsewhere."""
    import torch.distributed as dist
    from megatron.core import parallel_state
    from megatron.core.pipeline_parallel import get_forward_backward_func

    sequences = list(tokens.split(1))
    iterators = [iter(sequences) for _ in chunks]
    outputs = get_forward_backward_func()(
        forward_step_func=_forward_step, data_iterator=iterators if len(chunks) > 1 else iterators[0],
        model=chunks, num_microbatches=len(sequences), seq_length=tokens.shape[1],
        micro_batch_size=1, forward_only=True, collect_non_loss_data=True)
    if not parallel_state.is_pipeline_last_stage(ignore_virtual=True):
        return None
    local = torch.cat([out.float() for out in outputs]).contiguous()  # [b, s, padded_vocab / tp]
    group = parallel_state.get_tensor_model_parallel_group()
    parts = [torch.empty_like(local) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, local, group=group)
    return torch.cat(parts, dim=-1)


def hf_logits(hf_dir: str, tokens: torch.Tensor) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    model.eval()
    with torch.no_grad():
        return model(tokens).logits.float()


def compare_with_hf(ckpt_dir: str, hf_dir: str, cfg: ModelConfig, parallel: ParallelConfig,
                    tokens: torch.Tensor, threshold: float) -> int:
    """Collective, after ``initialize_parallel``: 0 on every rank if the logits agree, else 1."""
    import torch.distributed as dist
    from megatron.core import parallel_state

    from megatron_cpt.checkpointing.dist_io import load_model_weights
    from megatron_cpt.conversion.host import host_model_config
    from megatron_cpt.model.build import build_model

    chunks = build_model(host_model_config(dataclasses.replace(cfg, dtype="fp32")), parallel,
                         initialize=False)
    load_model_weights(chunks, ckpt_dir)
    for chunk in chunks:
        chunk.eval()
    with torch.no_grad():
        ours = megatron_logits(chunks, tokens)
    failed = torch.zeros(1)
    reporter = (ours is not None and parallel_state.get_tensor_model_parallel_rank() == 0
                and parallel_state.get_data_parallel_rank() == 0)
    if reporter:
        reference = hf_logits(hf_dir, tokens)
        diff = (ours[..., : cfg.vocab_size] - reference).abs()
        max_abs = diff.max().item()
        max_rel = max_abs / reference.abs().max().item()
        ok = max_abs <= threshold
        failed += 0 if ok else 1
        print(f"verify: max_abs_diff={max_abs:.3e} max_rel_diff={max_rel:.3e} "
              f"threshold={threshold:.0e} tp={parallel.tp} pp={parallel.pp} vpp={parallel.vpp} "
              f"tokens={tokens.shape[0]}x{tokens.shape[1]} -> {'OK' if ok else 'FAILED'}", flush=True)
    dist.all_reduce(failed)
    return 1 if failed.item() else 0


def verify_this_rank(args: argparse.Namespace) -> int:
    from megatron_cpt.runtime.parallel import destroy_parallel, initialize_parallel

    cfg, parallel = prepare(args)
    initialize_parallel(parallel, seed=0)
    tokens = token_batch(cfg, parallel, args.batch_size, args.seq_len, args.seed)
    status = compare_with_hf(args.ckpt_dir, args.hf_dir, cfg, parallel, tokens, args.threshold)
    destroy_parallel()
    return status


def run_verify(args: argparse.Namespace) -> int:
    from megatron_cpt.conversion.host import HOST_ENV, run_on_host
    from megatron_cpt.launch.local import inside_distributed_job, run_local

    run_on_host()
    if inside_distributed_job():
        return verify_this_rank(args)
    _, parallel = prepare(args)
    return run_local(WORKER_MODULE, worker_argv(args), parallel.tp * parallel.pp, env=HOST_ENV)


def main(argv: list[str] | None = None) -> int:
    from megatron_cpt.conversion.host import run_on_host
    from megatron_cpt.launch.local import run_rank

    run_on_host()
    parser = argparse.ArgumentParser(prog=f"python -m {WORKER_MODULE}", description=__doc__)
    add_arguments(parser)
    args = parser.parse_args(argv)
    return run_rank(lambda: verify_this_rank(args), "convert")


if __name__ == "__main__":
    sys.exit(main())
