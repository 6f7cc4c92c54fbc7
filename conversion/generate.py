"""Continue a few prompts with transformers from an exported Hugging Face directory.

    megatron-cpt convert generate --hf-dir outputs/demo/hf --prompt "床前明月光，" --prompt "The quick"

The first thing to try on an export: ``AutoTokenizer`` and ``AutoModelForCausalLM`` load the
directory exactly as a user loads it, and the model continues each prompt by greedy decoding of
``--max-new-tokens`` tokens (fp32, CPU unless CUDA is present). It is a check of what
``mcore-to-hf`` wrote, hence under ``convert``, and deliberately small: no sampling options, no
batching, no serving. Each prompt prints one line, ``PROMPT -> CONTINUATION`` (newlines shown as
``\\n``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from megatron_cpt.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--hf-dir", required=True, help="Hugging Face model directory with a tokenizer")
    parser.add_argument("--prompt", action="append", required=True,
                        help="text to continue (repeat for several prompts)")
    parser.add_argument("--max-new-tokens", type=int, default=16, metavar="N",
                        help="tokens to generate per prompt (default 16)")


def generate_continuations(hf_dir: Path, prompts: list[str], max_new_tokens: int) -> list[str]:
    """The greedy continuation of each prompt, decoded (special tokens kept)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging

    if not (hf_dir / "config.json").is_file():
        raise FileNotFoundError(f"--hf-dir {hf_dir}: no config.json there")
    if not (hf_dir / "tokenizer.json").is_file() and not (hf_dir / "tokenizer.model").is_file():
        raise UserError(f"--hf-dir {hf_dir}: no tokenizer files (export with "
                        f"`convert mcore-to-hf --tokenizer-from DIR`)")
    if max_new_tokens < 1:
        raise UserError(f"--max-new-tokens: must be >= 1, got {max_new_tokens}")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    logging.disable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).to(device).eval()
    continuations = []
    for prompt in prompts:
        inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(device)
        with torch.no_grad():
            output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                    pad_token_id=tokenizer.eos_token_id)
        new_tokens = output[0, inputs["input_ids"].shape[1]:]
        continuations.append(tokenizer.decode(new_tokens))
    return continuations


def run_generate(args: argparse.Namespace) -> int:
    hf_dir = Path(args.hf_dir)
    continuations = generate_continuations(hf_dir, args.prompt, args.max_new_tokens)
    print(f"generate: {hf_dir}, greedy, {args.max_new_tokens} new tokens per prompt")
    for prompt, text in zip(args.prompt, continuations):
        print(f"  {prompt} -> {text}".replace("\n", "\\n"))
    return 0
