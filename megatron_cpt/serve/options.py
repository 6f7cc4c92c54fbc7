"""``megatron-cpt serve``'s options, shared by the verb (``cli.py``) and its ranks (``worker.py``):
the arguments, the ``ServeConfig`` they make, the command line that gives a rank the same config,
and the checks that run before any rank starts (and again in each rank)."""

from __future__ import annotations

import argparse

from megatron_cpt.errors import UserError
from megatron_cpt.serve.config import ServeConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt-dir", required=True, metavar="CKPT",
                        help="a megatron-cpt checkpoint, or a run directory (its newest checkpoint)")
    parser.add_argument("--tokenizer", required=True, metavar="hf:DIR",
                        help="the model's transformers tokenizer directory (with its chat template)")
    parser.add_argument("--tp", type=int, default=1, help="tensor-parallel ranks (default 1)")
    parser.add_argument("--pp", type=int, default=1, help="pipeline-parallel ranks (default 1)")
    parser.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default=None,
                        help="compute dtype (default: the checkpoint's)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY'")
    parser.add_argument("--model-name", default=None,
                        help="the model's name in the API (default: the checkpoint's folder)")
    parser.add_argument("--max-batch-size", type=int, default=8, metavar="N",
                        help="requests generated together at most (default 8)")
    parser.add_argument("--default-max-tokens", type=int, default=256, metavar="N",
                        help="new tokens when a request does not say (default 256)")
    parser.add_argument("--stop-token-id", type=int, action="append", default=[], metavar="ID",
                        help="an id that ends every answer (besides the end of text and the "
                             "checkpoint's end of turn); repeat for several")
    parser.add_argument("--cpu", action="store_true",
                        help="run on CPU ranks over gloo even where GPUs exist")


def config_from_args(args) -> ServeConfig:
    return ServeConfig(ckpt_dir=args.ckpt_dir, tokenizer=args.tokenizer, tp=args.tp, pp=args.pp,
                       dtype=args.dtype, host=args.host, port=args.port, api_key=args.api_key,
                       model_name=args.model_name, max_batch_size=args.max_batch_size,
                       default_max_tokens=args.default_max_tokens,
                       stop_token_ids=tuple(args.stop_token_id), cpu=args.cpu)


def worker_argv(config: ServeConfig) -> list[str]:
    """The command line that makes a rank build the same (resolved) ``config``."""
    argv = ["--ckpt-dir", config.ckpt_dir, "--tokenizer", config.tokenizer, "--tp", str(config.tp),
            "--pp", str(config.pp), "--host", config.host, "--port", str(config.port),
            "--model-name", config.model_name, "--max-batch-size", str(config.max_batch_size),
            "--default-max-tokens", str(config.default_max_tokens)]
    argv += [i for token in config.stop_token_ids for i in ("--stop-token-id", str(token))]
    argv += ["--dtype", config.dtype] if config.dtype else []
    argv += ["--api-key", config.api_key] if config.api_key else []
    return argv + (["--cpu"] if config.cpu else [])


def prepare(config: ServeConfig):
    """Everything checked before a rank starts: (resolved config, model, layout, chat meta)."""
    from megatron_cpt.checkpointing.dist_io import read_meta
    from megatron_cpt.serve.model import checkpoint_model, generation_layout
    from megatron_cpt.serve.text import ServedTokenizer

    config = config.resolved()
    model = checkpoint_model(config.ckpt_dir, config.dtype)
    parallel = generation_layout(model, config.tp, config.pp)
    chat = read_meta(config.ckpt_dir).get("chat") or {}
    tokenizer = ServedTokenizer(config.tokenizer_dir)
    if len(tokenizer.tokenizer) > model.vocab_size:
        raise UserError(f"--tokenizer {config.tokenizer}: {len(tokenizer.tokenizer)} tokens, more "
                        f"than the checkpoint's vocabulary of {model.vocab_size}: not its tokenizer")
    bad = [i for i in config.stop_token_ids if not 0 <= i < model.vocab_size]
    if bad:
        raise UserError(f"--stop-token-id {bad[0]}: outside the vocabulary of {model.vocab_size}")
    return config, model, parallel, chat
