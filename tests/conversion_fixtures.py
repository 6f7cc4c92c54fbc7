"""Small random-init Hugging Face Llama checkpoints for the conversion tests, made with transformers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


def make_hf_llama(directory: Path, *, vocab: int = 1000, hidden: int = 64, layers: int = 4,
                  heads: int = 4, kv_heads: int = 2, ffn: int = 128, tie: bool = False,
                  dtype: torch.dtype = torch.float32, max_shard_size: str = "100KB",
                  rope_scaling: Optional[dict] = None, seed: int = 0) -> Path:
    """Save a random-init LlamaForCausalLM (several safetensors shards) and a tiny tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=256,
        rms_norm_eps=1e-5, rope_theta=500000.0, tie_word_embeddings=tie, bos_token_id=1,
        eos_token_id=2, rope_scaling=rope_scaling)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(dtype)
    with torch.no_grad():  # norms start at exactly 1: make them distinct so a mix-up shows
        for name, param in model.named_parameters():
            if "norm" in name:
                param.uniform_(0.5, 1.5)
    model.save_pretrained(directory, max_shard_size=max_shard_size)
    model.generation_config.save_pretrained(directory)
    write_tiny_tokenizer(directory, vocab)
    return Path(directory)


def write_tiny_tokenizer(directory: Path, vocab: int) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = {f"w{i}": i for i in range(vocab)}
    tokenizer = Tokenizer(models.WordLevel(words, unk_token="w0"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(Path(directory) / "tokenizer.json"))
    (Path(directory) / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "unk_token": "w0", "bos_token": "w1",
         "eos_token": "w2"}))


def run_cli(*args: str, timeout: int = 600,
            extra_env: Optional[dict[str, str]] = None) -> subprocess.CompletedProcess:
    """``python -m megatron_cpt ARGS`` in a subprocess, as a user runs it."""
    env = {**os.environ, **(extra_env or {})}
    env.pop("WORLD_SIZE", None)
    env.pop("RANK", None)
    env.setdefault("PYTHONWARNINGS", "ignore")
    return subprocess.run([sys.executable, "-m", "megatron_cpt", *args], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=REPO_ROOT)


def parse_verify_line(output: str) -> dict[str, float]:
    """The figures of the ``verify: max_abs_diff=... max_rel_diff=...`` line."""
    for line in output.splitlines():
        if line.startswith("verify: max_abs_diff="):
            return {k: float(v) for k, v in (item.split("=") for item in line.split()[1:4])}
    raise AssertionError(f"no verify line in output:\n{output}")
