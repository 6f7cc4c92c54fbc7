"""The megatron-cpt command: one verb per stage of a CPT job.

    megatron-cpt train examples/llama3_tiny_cpt_2xcpu.yaml train.steps=20
    megatron-cpt convert hf-to-mcore --hf-dir HF --out-dir CKPT --tp 2 --pp 2
    megatron-cpt data prepare --input corpus.jsonl --output-prefix data/zh --tokenizer hf:TOK_DIR
    megatron-cpt launch slurm examples/llama3_8b_cpt_8xh100_fp8.yaml --partition gpu --time 04:00:00

Each verb lives in its own module with a ``register(subparsers)`` function; a verb parses, validates
(errors exit with status 2 and name the field or file), then calls one function.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from megatron_cpt.errors import UserError, one_line

# Verbs whose work runs on megatron-core: the installed one is checked before they start.
NEEDS_MEGATRON_CORE = ("data", "train", "convert", "almr", "eval", "serve")
# verb -> (module with register(subparsers), one-line help). Only the chosen verb's module is
# imported, so `megatron-cpt data ...` does not pay for torch and megatron-core imports it never uses.
VERBS = {
    "data": ("megatron_cpt.data.cli", "corpora, tokenizers, indexed datasets and ALMR mixtures"),
    "train": ("megatron_cpt.train.cli", "train (continual pre-training) from a recipe"),
    "convert": ("megatron_cpt.conversion.cli", "Hugging Face <-> megatron-core checkpoints"),
    "launch": ("megatron_cpt.launch.cli", "submit training jobs to Slurm"),
    "profile": ("megatron_cpt.profile.cli", "throughput report of a run; memory estimate of a recipe"),
    "almr": ("megatron_cpt.almr.cli", "the ALMR x learning-rate study: sweep, status, fit"),
    "eval": ("megatron_cpt.eval.cli", "multiple-choice benchmark accuracy of checkpoints"),
    "serve": ("megatron_cpt.serve.cli", "a checkpoint behind an OpenAI-compatible API and a chat page"),
}


def build_parser(verb: str | None = None) -> argparse.ArgumentParser:
    """The full parser of ``verb``; for any other verb only its name and help line."""
    parser = argparse.ArgumentParser(prog="megatron-cpt", description=__doc__.split("\n")[0])
    parser.add_argument("--debug", action="store_true",
                        help="print the tracebacks of failures that are otherwise one line "
                             "(also MEGATRON_CPT_DEBUG=1)")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for name, (module_name, help_line) in VERBS.items():
        if name == verb:
            importlib.import_module(module_name).register(verbs)
        else:
            verbs.add_parser(name, help=help_line)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    verb = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(verb if verb in VERBS else None).parse_args(argv)
    if args.debug:
        os.environ["MEGATRON_CPT_DEBUG"] = "1"  # read by every rank (launch/local.py)
    from megatron_cpt.runtime.quiet import quiet_known_warnings

    quiet_known_warnings()
    try:
        if args.verb in NEEDS_MEGATRON_CORE:
            from megatron_cpt.runtime.mcore_version import check_megatron_core_version

            check_megatron_core_version()
        result = args.func(args)
    except (UserError, FileNotFoundError, FileExistsError) as exc:
        print(f"megatron-cpt {args.verb}: error: {one_line(exc)}", file=sys.stderr)
        return getattr(exc, "exit_status", 2)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
