"""megatron-core distributed checkpoint -> Hugging Face Llama-3 (sharded safetensors + index).

    megatron-cpt convert mcore-to-hf --ckpt-dir CKPT --out-dir HF_OUT [--hf-config-from HF_DIR]
    megatron-cpt convert mcore-to-hf --ckpt-dir CKPT --out-dir HF_OUT --tokenizer-from TOKENIZER_DIR

Works on any checkpoint whose ``megatron_cpt.json`` has ``model`` (a converted one or one written by
``megatron-cpt train``), whatever TP/PP wrote it. One process reads the checkpoint one layer at a
time and streams the Hugging Face tensors into shards of at most ``--max-shard-size``, so memory
stays at about one layer (plus the embedding table). The output is written to ``HF_OUT.tmp`` and
renamed at the end; it holds ``config.json``, ``generation_config.json`` and the tokenizer files.

``config.json`` takes the architecture from the checkpoint and everything else (token ids, ...)
from ``--hf-config-from``'s config.json, else from the config the checkpoint was converted from.
The tokenizer files and ``generation_config.json`` come from ``--hf-config-from``, else from the
directory the checkpoint was converted from if it still exists. ``--tokenizer-from DIR`` takes the
tokenizer files from DIR instead (e.g. the output of ``megatron-cpt data train-tokenizer``, for a
model trained from scratch on its ids); its bos/eos tokens then set the token ids of
``config.json`` and ``generation_config.json``, and it must fit the model's vocabulary. A checkpoint
fine-tuned on chat data also gets its chat template and end-of-turn stop token (``chat_export.py``).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Optional

import torch

from megatron_cpt.checkpointing.dist_io import read_meta
from megatron_cpt.errors import CheckpointError
from megatron_cpt.config.loader import build_dataclass
from megatron_cpt.errors import ConfigError
from megatron_cpt.config.model import ModelConfig
from megatron_cpt.conversion.chat_export import (check_chat_tokenizer, with_end_of_turn,
                                                 write_chat_template)
from megatron_cpt.conversion.hf_io import (ShardedSafetensorsWriter, copy_tokenizer_files, parse_size,
                                           tokenizer_token_ids, write_json)
from megatron_cpt.conversion.llama import (VOCAB, TensorMapping, hf_shapes, iter_hf_groups,
                                           mappings_for, mcore_shape, split_mcore_tensor)
from megatron_cpt.conversion.llama_config import (generation_config_for, hf_config_from_model,
                                                  model_config_from_hf)

_TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_SAME_ARCHITECTURE = ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads",
                      "num_query_groups", "vocab_size", "tie_embeddings")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt-dir", required=True, help="megatron-core checkpoint directory")
    parser.add_argument("--out-dir", required=True, help="Hugging Face directory to create")
    parser.add_argument("--hf-config-from", default=None,
                        help="Hugging Face directory to take config fields, generation config and "
                             "tokenizer files from (default: the directory converted from, if present)")
    parser.add_argument("--tokenizer-from", default=None, metavar="DIR",
                        help="directory to copy the tokenizer files from instead (tokenizer.json + "
                             "tokenizer_config.json, e.g. `data train-tokenizer --output`); its "
                             "bos/eos tokens set the token ids of config.json")
    parser.add_argument("--dtype", choices=tuple(_TORCH_DTYPES), default=None,
                        help="output dtype (default: the checkpoint's)")
    parser.add_argument("--max-shard-size", type=parse_size, default="5GB",
                        help="largest safetensors shard, e.g. 5GB or 500MB (default 5GB)")
    parser.add_argument("--force", action="store_true", help="replace an existing --out-dir")


def model_config_of(meta: dict, ckpt_dir: Path) -> ModelConfig:
    if "model" not in meta:
        raise CheckpointError(f"{ckpt_dir}: megatron_cpt.json has no 'model' section")
    return build_dataclass(ModelConfig, meta["model"], "model")


def check_checkpoint_tensors(metadata: dict, cfg: ModelConfig, ckpt_dir: Path) -> None:
    for m in mappings_for(cfg):
        if m.mcore not in metadata:
            raise CheckpointError(f"{ckpt_dir}: no tensor '{m.mcore}' (megatron_cpt.json describes "
                                  f"{cfg.num_layers} layers, tie_embeddings={cfg.tie_embeddings})")
        stored = tuple(metadata[m.mcore].global_shape)
        expected = mcore_shape(m, cfg, padded_vocab=stored[-2] if m.transform == VOCAB else 0)
        if m.per_layer:
            expected = (cfg.num_layers, *expected)
        if stored != expected or (m.transform == VOCAB and stored[0] < cfg.vocab_size):
            raise CheckpointError(f"{ckpt_dir}: tensor '{m.mcore}' has shape {list(stored)}, but "
                                  f"megatron_cpt.json's model implies {list(expected)}")


def read_steps(cfg: ModelConfig) -> list[tuple[Optional[int], list[TensorMapping]]]:
    """(layer or None, mappings) in file order: each step is one dist_checkpointing.load."""
    steps: list[tuple[Optional[int], list[TensorMapping]]] = []
    for m, names in iter_hf_groups(cfg):
        layer = int(names[0].split(".")[2]) if m.per_layer else None
        if steps and steps[-1][0] == layer and (layer is not None or m.transform != VOCAB):
            steps[-1][1].append(m)
        else:
            steps.append((layer, [m]))
    return steps


def _source_dir(args: argparse.Namespace, meta: dict) -> Optional[Path]:
    if args.hf_config_from:
        source = Path(args.hf_config_from)
        if not (source / "config.json").is_file():
            raise FileNotFoundError(f"--hf-config-from {source}: no config.json there")
        return source
    recorded = (meta.get("source") or {}).get("dir")
    return Path(recorded) if recorded and (Path(recorded) / "config.json").is_file() else None


def _base_config(source: Optional[Path], meta: dict, cfg: ModelConfig) -> Optional[dict]:
    base = json.loads((source / "config.json").read_text()) if source else meta.get("hf_config")
    if base is None:
        return None
    source_cfg = model_config_from_hf(base, where=f"{source or 'hf_config'}/config.json")
    for name in _SAME_ARCHITECTURE:
        if getattr(source_cfg, name) != getattr(cfg, name):
            raise ConfigError(f"--hf-config-from {source}: config.json describes another model "
                              f"({name}={getattr(source_cfg, name)}, the checkpoint has {getattr(cfg, name)})")
    return base


def tokenizer_ids_for(tokenizer_dir: Optional[Path], cfg: ModelConfig) -> dict[str, int]:
    """The bos/eos ids of ``--tokenizer-from`` (empty without it), checked against the model."""
    if tokenizer_dir is None:
        return {}
    size, ids = tokenizer_token_ids(tokenizer_dir)
    if size > cfg.vocab_size:
        raise ConfigError(f"--tokenizer-from {tokenizer_dir}: the tokenizer has {size} tokens, more "
                          f"than the checkpoint's model.vocab_size {cfg.vocab_size}")
    return ids


def write_side_files(out: Path, cfg: ModelConfig, dtype: str, source: Optional[Path], meta: dict,
                     tokenizer_dir: Optional[Path] = None) -> None:
    token_ids = tokenizer_ids_for(tokenizer_dir, cfg)
    config = hf_config_from_model(cfg, dtype, _base_config(source, meta, cfg)) | token_ids
    write_json(out / "config.json", config)
    if source and (source / "generation_config.json").is_file():
        generation = json.loads((source / "generation_config.json").read_text())
    else:
        generation = meta.get("hf_generation_config") or generation_config_for(config)
    generation = generation | token_ids
    chat = meta.get("chat")  # a fine-tuned checkpoint: stop at the end of a turn too
    write_json(out / "generation_config.json",
               with_end_of_turn(generation, chat) if chat else generation)
    tokenizer_dir = tokenizer_dir or source
    copied = copy_tokenizer_files(tokenizer_dir, out) if tokenizer_dir else []
    if not copied:
        print("mcore-to-hf: note: no tokenizer files written (pass --tokenizer-from DIR or "
              "--hf-config-from DIR to copy them)")
    if chat and copied:
        write_chat_template(out, chat)


def write_safetensors(ckpt: Path, metadata: dict, cfg: ModelConfig, out: Path, dtype: torch.dtype,
                      max_shard_bytes: int) -> ShardedSafetensorsWriter:
    """Stream every Hugging Face tensor into ``out``, loading one layer of the checkpoint at a time."""
    from tqdm import tqdm

    from megatron_cpt.conversion.mcore_io import load_global_tensors

    plan = [(name, shape, dtype) for name, shape in hf_shapes(cfg).items()]
    writer = ShardedSafetensorsWriter(out, plan, max_shard_bytes)
    element_size = torch.empty((), dtype=dtype).element_size()
    with tqdm(total=writer.total_bytes, unit="B", unit_scale=True, desc="mcore-to-hf") as bar:
        for layer, group in read_steps(cfg):
            loaded = load_global_tensors(ckpt, metadata, [m.mcore for m in group], layer)
            for m in group:
                for name, tensor in split_mcore_tensor(m, loaded.pop(m.mcore), cfg, layer).items():
                    writer.write(name, tensor.to(dtype))
                    bar.update(tensor.numel() * element_size)
            del loaded
    writer.finish()
    return writer


def run_mcore_to_hf(args: argparse.Namespace) -> int:
    from megatron_cpt.conversion.host import run_on_host
    from megatron_cpt.conversion.mcore_io import read_tensor_metadata, single_rank_session

    run_on_host()
    ckpt, out = Path(args.ckpt_dir), Path(args.out_dir)
    meta = read_meta(ckpt)
    cfg = model_config_of(meta, ckpt)
    if out.exists() and not args.force:
        raise FileExistsError(f"--out-dir {out}: already exists; pass --force to replace it")
    source = _source_dir(args, meta)
    tokenizer_dir = Path(args.tokenizer_from) if args.tokenizer_from else None
    _base_config(source, meta, cfg)  # fail on a mismatching --hf-config-from before any work
    tokenizer_ids_for(tokenizer_dir, cfg)  # ... or on a tokenizer that does not fit the model
    if meta.get("chat") and (tokenizer_dir or source):
        check_chat_tokenizer(tokenizer_dir or source, meta["chat"])  # ... or without its chat tokens
    with single_rank_session():
        metadata = read_tensor_metadata(ckpt)
        check_checkpoint_tensors(metadata, cfg, ckpt)
        stored = metadata["embedding.word_embeddings.weight"].dtype
        dtype_name = args.dtype or {v: k for k, v in _TORCH_DTYPES.items()}[stored]
        dtype = _TORCH_DTYPES[dtype_name]
        tmp = out.with_name(out.name + ".tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        try:
            writer = write_safetensors(ckpt, metadata, cfg, tmp, dtype, args.max_shard_size)
            write_side_files(tmp, cfg, dtype_name, source, meta, tokenizer_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    print(f"mcore-to-hf: wrote {out} ({len(writer.file_names)} safetensors shards, {dtype_name})")
    return 0
