"""The ``megatron-cpt`` command: one verb per stage of a CPT job.

    megatron-cpt train examples/llama3_tiny_cpt_2xcpu.yaml train.steps=20
    megatron-cpt convert hf-to-mcore --hf-dir HF --out-dir CKPT --tp 2 --pp 2
    megatron-cpt data prepare --input corpus.jsonl --output-prefix data/zh --tokenizer hf:TOK_DIR

Each verb lives in its own module with a ``register(subparsers)`` function; a verb parses, validates
(errors exit with status 2 and name the field or file), then calls one function.
"""

from __future__ import annotations

import argparse
import importlib
import sys

VERB_MODULES = (
    "megatron_cpt.data.cli",
    "megatron_cpt.train.cli",
    "megatron_cpt.conversion.cli",
    "megatron_cpt.launch.cli",
    "megatron_cpt.profile.cli",
    "megatron_cpt.almr.cli",
)


class UserError(Exception):
    """Bad input from the user: printed as one line, exit status 2, no traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="megatron-cpt", description=__doc__.split("\n")[0])
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for name in VERB_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # verb not part of this build
                continue
            raise
        module.register(verbs)
    return parser


def _user_error_types() -> tuple[type[BaseException], ...]:
    from megatron_cpt.checkpointing.dist_io import CheckpointError
    from megatron_cpt.config.loader import ConfigError

    return (UserError, ConfigError, CheckpointError, FileNotFoundError, FileExistsError)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = args.func(args)
    except _user_error_types() as exc:
        print(f"megatron-cpt {args.verb}: error: {exc}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
