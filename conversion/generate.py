"""Continue prompts, or answer questions in the chat format, with transformers from an export.

    megatron-cpt convert generate --hf-dir outputs/demo/hf --prompt "床前明月光，" --prompt "The quick"
    megatron-cpt convert generate --hf-dir outputs/demo/hf_chat --chat "What does the command ls do?"

The first thing to try on an export: ``AutoTokenizer`` and ``AutoModelForCausalLM`` load the
directory exactly as a user loads it, and the model continues each prompt by greedy decoding of up
to ``--max-new-tokens`` tokens (fp32, CPU unless CUDA is present). ``--chat`` wraps each question
as a user turn with the export's chat template (``apply_chat_template``, generation prompt
appended) and decodes until a stop token of ``generation_config.json`` (a fine-tuned export stops
at the end of the turn); the answer is printed without special tokens. It is a check of what
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
    parser.add_argument("--prompt", action="append", default=[],
                        help="text to continue (repeat for several prompts)")
    parser.add_argument("--chat", action="append", default=[], metavar="QUESTION",
                        help="a user turn to answer in the chat format (repeat for several)")
    parser.add_argument("--max-new-tokens", type=int, default=16, metavar="N",
                        help="tokens to generate per prompt (default 16)")


def _load(hf_dir: Path, max_new_tokens: int):
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
    return tokenizer, model, device


def _greedy(model, tokenizer, ids: list[int], device: str, max_new_tokens: int) -> list[int]:
    import torch

    inputs = torch.tensor([ids], device=device)
    with torch.no_grad():
        output = model.generate(input_ids=inputs, attention_mask=torch.ones_like(inputs),
                                max_new_tokens=max_new_tokens, do_sample=False,
                                pad_token_id=tokenizer.eos_token_id)
    return output[0, len(ids):].tolist()


def generate_continuations(hf_dir: Path, prompts: list[str], max_new_tokens: int) -> list[str]:
    """The greedy continuation of each prompt, decoded (special tokens kept)."""
    tokenizer, model, device = _load(hf_dir, max_new_tokens)
    return [tokenizer.decode(_greedy(model, tokenizer,
                                     tokenizer.encode(prompt, add_special_tokens=False),
                                     device, max_new_tokens))
            for prompt in prompts]


def generate_answers(hf_dir: Path, questions: list[str], max_new_tokens: int) -> list[str]:
    """The greedy answer to each question asked as a user turn, without special tokens."""
    tokenizer, model, device = _load(hf_dir, max_new_tokens)
    if not tokenizer.chat_template:
        raise UserError(f"--hf-dir {hf_dir}: the tokenizer has no chat template (export a "
                        "checkpoint fine-tuned on chat data, see docs/SFT.md)")
    answers = []
    for question in questions:
        text = tokenizer.apply_chat_template([{"role": "user", "content": question}],
                                             tokenize=False, add_generation_prompt=True)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        answers.append(tokenizer.decode(_greedy(model, tokenizer, ids, device, max_new_tokens),
                                        skip_special_tokens=True))
    return answers


def run_generate(args: argparse.Namespace) -> int:
    hf_dir = Path(args.hf_dir)
    if not args.prompt and not args.chat:
        raise UserError("convert generate: give --prompt TEXT or --chat QUESTION (or several)")
    pairs = []
    if args.prompt:
        pairs += zip(args.prompt, generate_continuations(hf_dir, args.prompt, args.max_new_tokens))
    if args.chat:
        pairs += zip(args.chat, generate_answers(hf_dir, args.chat, args.max_new_tokens))
    print(f"generate: {hf_dir}, greedy, {args.max_new_tokens} new tokens per prompt")
    for prompt, text in pairs:
        print(f"  {prompt} -> {text}".replace("\n", "\\n"))
    return 0
