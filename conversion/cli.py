"""``megatron-cpt convert``: Hugging Face <-> megatron-core checkpoints, and a logit check.

    megatron-cpt convert hf-to-mcore --hf-dir HF --out-dir CKPT --tp 2 --pp 2
    megatron-cpt convert mcore-to-hf --ckpt-dir CKPT --out-dir HF_OUT --hf-config-from HF
    megatron-cpt convert verify --hf-dir HF --ckpt-dir CKPT --tp 2 --pp 2
    megatron-cpt convert generate --hf-dir HF_OUT --prompt "床前明月光，" --prompt "The quick"
"""

from __future__ import annotations

import argparse


def register(verbs) -> None:
    from megatron_cpt.conversion import generate, hf_to_mcore, mcore_to_hf, verify

    parser = verbs.add_parser("convert", help="convert checkpoints between Hugging Face and megatron-core",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="direction", required=True, metavar="DIRECTION")
    for name, module, run, summary in (
        ("hf-to-mcore", hf_to_mcore, hf_to_mcore.run_hf_to_mcore,
         "Hugging Face Llama -> megatron-core distributed checkpoint"),
        ("mcore-to-hf", mcore_to_hf, mcore_to_hf.run_mcore_to_hf,
         "megatron-core checkpoint -> Hugging Face safetensors"),
        ("verify", verify, verify.run_verify,
         "compare the logits of both on one token batch"),
        ("generate", generate, generate.run_generate,
         "continue prompts with transformers from a Hugging Face export (greedy)"),
    ):
        command = sub.add_parser(name, help=summary, description=module.__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(command)
        command.set_defaults(func=run)
