"""Hugging Face Llama-3 -> megatron-core distributed checkpoint (initial weights for training).

    megatron-cpt convert hf-to-mcore --hf-dir HF_DIR --out-dir CKPT --tp 2 --pp 2 [--vpp 2] [--dtype bf16] [--verify]

The command checks everything it can before starting any rank (the architecture, the config against
every tensor's shape, the shards on disk, the TP/PP split, the target directory), then starts TP*PP
local ranks (torchrun). Each rank builds only its own model shard without initialising it, fills it
with the Hugging Face rows and columns that shard needs (read lazily, tensor by tensor) and takes
part in one ``save_dist_checkpoint``. The result is written to ``CKPT.tmp`` and renamed at the end.
``--verify`` then loads it on the same ranks and compares logits as ``convert verify`` does.

The checkpoint holds megatron-core's global tensors, so ``megatron-cpt train`` loads it at any TP/PP.
``megatron_cpt.json`` (the ``meta``) has:

- ``kind``: ``"pretrained"``;  ``model``: ``dataclasses.asdict(ModelConfig)`` (what training checks);
- ``parallel``: ``{"tp", "pp", "vpp"}`` it was written with;  ``dtype``: ``fp32`` | ``bf16`` | ``fp16``;
- ``padded_vocab_size``: rows of the embedding / output tables on disk (rows past
  ``model.vocab_size`` are zero). megatron-core marks these two tensors ``allow_shape_mismatch``,
  so a layout whose padded size differs loads them too: missing padding rows are zero-filled, extra
  ones are not read;
- ``source``: ``{"format": "huggingface", "dir", "architecture"}``; ``hf_config`` and
  ``hf_generation_config``: the source's ``config.json`` / ``generation_config.json`` (for export).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
from pathlib import Path

import torch

from megatron_cpt.errors import CheckpointError
from megatron_cpt.errors import ConfigError
from megatron_cpt.config.model import ModelConfig, padded_vocab_size
from megatron_cpt.config.parallel import ParallelConfig
from megatron_cpt.conversion.hf_io import HfCheckpoint
from megatron_cpt.conversion.llama import (IGNORED_HF_SUFFIXES, VOCAB, TensorMapping, hf_shapes,
                                           mapping_by_key, read_mcore_region)
from megatron_cpt.conversion.llama_config import model_config_from_hf

WORKER_MODULE = "megatron_cpt.conversion.hf_to_mcore"
VOCAB_BLOCK_BYTES = 16 * 2**20  # embedding/output rows are copied in blocks of this size


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--hf-dir", required=True, help="Hugging Face model directory (config.json + safetensors)")
    parser.add_argument("--out-dir", required=True, help="checkpoint directory to create")
    parser.add_argument("--tp", type=int, default=1, help="tensor-parallel ranks (default 1)")
    parser.add_argument("--pp", type=int, default=1, help="pipeline-parallel ranks (default 1)")
    parser.add_argument("--vpp", type=int, default=None, help="virtual pipeline stages per rank")
    parser.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default=None,
                        help="checkpoint dtype (default: the config's torch_dtype, else bf16)")
    default_divisor = ModelConfig().make_vocab_size_divisible_by
    parser.add_argument("--vocab-divisor", type=int, default=default_divisor,
                        help=f"pad the vocabulary to a multiple of this times TP (default "
                             f"{default_divisor}, as model.make_vocab_size_divisible_by)")
    parser.add_argument("--force", action="store_true", help="replace an existing --out-dir")
    parser.add_argument("--verify", action="store_true",
                        help="then load the result on the same ranks and compare its logits with "
                             "the Hugging Face model's (as `convert verify` does)")


def worker_argv(args: argparse.Namespace) -> list[str]:
    argv = ["--hf-dir", str(args.hf_dir), "--out-dir", str(args.out_dir), "--tp", str(args.tp),
            "--pp", str(args.pp), "--vocab-divisor", str(args.vocab_divisor)]
    if args.vpp is not None:
        argv += ["--vpp", str(args.vpp)]
    if args.dtype is not None:
        argv += ["--dtype", args.dtype]
    return argv + (["--force"] if args.force else []) + (["--verify"] if args.verify else [])


# ---- checks made before any rank starts -----------------------------------------------------------

def check_target_dir(out_dir: Path, force: bool) -> None:
    if out_dir.exists() and not force:
        if not out_dir.is_dir() or any(out_dir.iterdir()):
            raise FileExistsError(f"--out-dir {out_dir}: already exists and is not empty; "
                                  f"pass --force to replace it")


def check_tensors_match_config(hf: HfCheckpoint, cfg: ModelConfig) -> None:
    """Every tensor the config implies exists with the implied shape, and no others."""
    expected = hf_shapes(cfg)
    present = {n for n in hf.names() if not n.endswith(IGNORED_HF_SUFFIXES)}
    if cfg.tie_embeddings:
        present.discard("lm_head.weight")  # some tied checkpoints store the (equal) head anyway
    described = (f"num_hidden_layers={cfg.num_layers}, hidden_size={cfg.hidden_size}, "
                 f"tie_word_embeddings={str(cfg.tie_embeddings).lower()}")
    missing = [n for n in expected if n not in present]
    if missing:
        raise CheckpointError(f"{hf.dir}: config.json ({described}) implies tensor '{missing[0]}', "
                              f"which no shard holds ({len(missing)} missing in all)")
    extra = sorted(present - set(expected))
    if extra:
        raise CheckpointError(f"{hf.file_of(extra[0])}: tensor '{extra[0]}' does not belong to the "
                              f"model config.json describes ({described})")
    for name, shape in expected.items():
        if hf.shape(name) != shape:
            raise CheckpointError(
                f"{hf.file_of(name)}: tensor '{name}' has shape {list(hf.shape(name))}, but config.json "
                f"implies {list(shape)} (hidden_size={cfg.hidden_size}, intermediate_size="
                f"{cfg.ffn_hidden_size}, num_attention_heads={cfg.num_attention_heads}, "
                f"num_key_value_heads={cfg.num_query_groups}, vocab_size={cfg.vocab_size})")
        if not hf.torch_dtype(name).is_floating_point:
            raise CheckpointError(f"{hf.file_of(name)}: tensor '{name}' is {hf.torch_dtype(name)}, "
                                  f"expected a floating-point dtype")


def prepare(args: argparse.Namespace) -> tuple[HfCheckpoint, ModelConfig, ParallelConfig]:
    """Read and check the source and the requested layout; raises before anything is written."""
    hf = HfCheckpoint(args.hf_dir)
    cfg = model_config_from_hf(hf.config, where=str(hf.dir / "config.json"), dtype=args.dtype,
                               vocab_divisor=args.vocab_divisor)
    parallel = ParallelConfig(tp=args.tp, pp=args.pp, vpp=args.vpp)
    try:
        parallel.validate(cfg.num_layers, cfg.num_attention_heads, cfg.num_query_groups)
    except ConfigError as exc:
        raise ConfigError(f"--tp/--pp/--vpp: {exc}") from None
    hf.check_files()
    check_tensors_match_config(hf, cfg)
    return hf, cfg, parallel


def checkpoint_meta(hf: HfCheckpoint, cfg: ModelConfig, parallel: ParallelConfig) -> dict:
    generation = hf.dir / "generation_config.json"
    return {
        "kind": "pretrained",
        "model": dataclasses.asdict(cfg),
        "parallel": {"tp": parallel.tp, "pp": parallel.pp, "vpp": parallel.vpp},
        "dtype": cfg.dtype,
        "padded_vocab_size": padded_vocab_size(cfg.vocab_size, cfg.make_vocab_size_divisible_by,
                                               parallel.tp),
        "source": {"format": "huggingface", "dir": str(hf.dir.resolve()),
                   "architecture": hf.config["architectures"][0]},
        "hf_config": hf.config,
        "hf_generation_config": json.loads(generation.read_text()) if generation.is_file() else None,
    }


# ---- what each rank does --------------------------------------------------------------------------

def local_sharded_tensors(tree):
    """This rank's ShardedTensors (factories built into their parts; extra-state objects skipped)."""
    from megatron.core.dist_checkpointing.mapping import ShardedTensor, ShardedTensorFactory

    values = tree.values() if isinstance(tree, dict) else tree
    for value in values:
        if isinstance(value, ShardedTensorFactory):
            yield from local_sharded_tensors(value.build())
        elif isinstance(value, ShardedTensor):
            yield value
        elif isinstance(value, (dict, list, tuple)):
            yield from local_sharded_tensors(value)


@torch.no_grad()
def fill_region(sharded, m: TensorMapping, hf: HfCheckpoint, cfg: ModelConfig) -> None:
    """Copy the HF values of one ShardedTensor's region into its (parameter) data."""
    if sharded.prepend_axis_num not in (0, 1) or sharded.flattened_range is not None:
        raise CheckpointError(f"{sharded.key}: unexpected sharding {sharded}")
    layer = sharded.global_offset[0] if sharded.prepend_axis_num else None
    offsets = sharded.global_offset[sharded.prepend_axis_num:]
    shape = sharded.local_shape
    rows = (offsets[0], offsets[0] + shape[0])
    cols = (offsets[1], offsets[1] + shape[1]) if len(shape) == 2 else None
    target = sharded.data
    if m.transform != VOCAB:
        target.copy_(read_mcore_region(m, hf, cfg, layer, rows, cols))
        return
    row_bytes = target[0].numel() * max(target.element_size(), 4)
    step = max(1, VOCAB_BLOCK_BYTES // row_bytes)
    for start in range(rows[0], rows[1], step):
        stop = min(start + step, rows[1])
        block = target[start - rows[0]: stop - rows[0]]
        real = read_mcore_region(m, hf, cfg, layer, (start, stop), cols)
        block[: real.shape[0]].copy_(real)
        block[real.shape[0]:].zero_()  # vocabulary padding rows


def own_storage_for_views(targets) -> None:
    """Give each ShardedTensor that views part of a parameter (the SwiGLU gate/up halves) a tensor of
    its own. The saver would otherwise clone such views at save time, on top of the parameter; the
    parameter, allocated uninitialised and never written, then costs no resident memory at all."""
    for sharded in targets:
        data = sharded.data
        if data.untyped_storage().nbytes() != data.numel() * data.element_size():
            sharded.data = torch.empty(data.shape, dtype=data.dtype)


def fill_sharded_state(sharded_state: dict, hf: HfCheckpoint, cfg: ModelConfig,
                       show_progress: bool) -> None:
    """Fill every local tensor of ``sharded_state`` (factories applied) from the HF checkpoint."""
    from tqdm import tqdm

    table = mapping_by_key(cfg)
    targets = list(local_sharded_tensors(sharded_state))
    own_storage_for_views(targets)
    for sharded in tqdm(targets, desc="filling rank 0's shard", unit="tensor", disable=not show_progress):
        m = table.get(sharded.key)
        if m is None:
            raise CheckpointError(f"model tensor '{sharded.key}' has no Hugging Face counterpart "
                                  f"in conversion/llama.py")
        fill_region(sharded, m, hf, cfg)


def convert_this_rank(args: argparse.Namespace) -> int:
    import torch.distributed as dist

    from megatron_cpt.checkpointing.dist_io import model_sharded_state_dict, save_dist_checkpoint
    from megatron_cpt.conversion.host import host_model_config
    from megatron_cpt.model.build import build_model
    from megatron_cpt.runtime.parallel import destroy_parallel, initialize_parallel

    from megatron.core.dist_checkpointing.mapping import apply_factories

    hf, cfg, parallel = prepare(args)
    initialize_parallel(parallel, seed=0)
    rank0 = dist.get_rank() == 0
    chunks = build_model(host_model_config(cfg), parallel, initialize=False)
    # The model's own sharded state, with factories built in place (as saving would do anyway), so
    # the tensors filled here are the very ones written.
    sharded_state = model_sharded_state_dict(chunks)
    apply_factories(sharded_state)
    fill_sharded_state(sharded_state, hf, cfg, show_progress=rank0)
    if rank0:
        print(f"hf-to-mcore: writing {args.out_dir} (tp={parallel.tp} pp={parallel.pp} "
              f"vpp={parallel.vpp} dtype={cfg.dtype})", flush=True)
    save_dist_checkpoint(sharded_state, args.out_dir, checkpoint_meta(hf, cfg, parallel))
    del sharded_state
    if rank0:
        print(f"hf-to-mcore: done: {args.out_dir}", flush=True)
    status = 0
    if args.verify:
        from megatron_cpt.conversion.verify import DEFAULT_THRESHOLD, compare_with_hf, token_batch

        del chunks
        status = compare_with_hf(args.out_dir, args.hf_dir, cfg, parallel, token_batch(cfg, parallel),
                                 DEFAULT_THRESHOLD)
    destroy_parallel()
    return status


# ---- the command ----------------------------------------------------------------------------------

def run_hf_to_mcore(args: argparse.Namespace) -> int:
    from megatron_cpt.conversion.host import HOST_ENV, run_on_host
    from megatron_cpt.launch.local import inside_distributed_job, run_local

    run_on_host()
    if inside_distributed_job():
        return convert_this_rank(args)
    out_dir = Path(args.out_dir)
    check_target_dir(out_dir, args.force)
    _, cfg, parallel = prepare(args)
    print(f"hf-to-mcore: {args.hf_dir} -> {out_dir}: {cfg.num_layers} layers, vocab {cfg.vocab_size}, "
          f"{parallel.tp * parallel.pp} ranks", flush=True)
    status = 1
    try:
        status = run_local(WORKER_MODULE, worker_argv(args), parallel.tp * parallel.pp, env=HOST_ENV)
    finally:
        if status != 0:  # a rank failed (or reported a user error): leave no partial output
            partial = out_dir.with_name(out_dir.name + ".tmp")
            if partial.exists():
                shutil.rmtree(partial)
    if status != 0:
        print(f"megatron-cpt convert: error: hf-to-mcore failed (exit status {status})"
              + ("" if out_dir.exists() else f"; nothing was written to {out_dir}"), file=sys.stderr)
        return status
    return 0


def main(argv: list[str] | None = None) -> int:
    from megatron_cpt.conversion.host import run_on_host
    from megatron_cpt.launch.local import run_rank

    run_on_host()
    parser = argparse.ArgumentParser(prog=f"python -m {WORKER_MODULE}", description=__doc__)
    add_arguments(parser)
    args = parser.parse_args(argv)
    return run_rank(lambda: convert_this_rank(args), "convert")


if __name__ == "__main__":
    sys.exit(main())
