"""Greedy generation on a checkpoint (``megatron_cpt/serve/decode.py``) equals transformers'
``generate`` on the Hugging Face model it was converted from, token for token, fp32, at TP1, TP2
and PP2: plain prompts of different lengths in one batch, and a chat prompt rendered with the
tokenizer's chat template that stops at the end of turn."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch
from serve_fixtures import END_OF_TURN

NEW_TOKENS = 8


def _reference(hf: Path, prompt: list[int], stop: list[int]) -> list[int]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32).eval()
    ids = torch.tensor([prompt])
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                             max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=stop,
                             pad_token_id=0)
    return out[0, len(prompt):].tolist()


def test_greedy_tokens_equal_transformers_at_tp1_tp2_pp2(tiny_chat_checkpoint, tmp_path):
    from transformers import AutoTokenizer

    hf, ckpt = tiny_chat_checkpoint
    tokenizer = AutoTokenizer.from_pretrained(hf)
    chat = tokenizer.apply_chat_template(
        [{"role": "system", "content": "w50 w51"}, {"role": "user", "content": "w30 w31 w32"}],
        tokenize=False, add_generation_prompt=True)
    requests = [{"prompt": [5, 17, 42, 99, 3], "stop": [2]},
                {"prompt": [7, 8], "stop": [2]},
                {"prompt": tokenizer(chat, add_special_tokens=False)["input_ids"],
                 "stop": [2, END_OF_TURN]}]
    assert requests[2]["prompt"][:2] == [3, 5] and requests[2]["prompt"][-2:] == [3, 7]
    (tmp_path / "requests.json").write_text(json.dumps(requests))
    script = Path(__file__).with_name("generate_layouts.py")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc-per-node=2", str(script), str(ckpt),
                           str(tmp_path / "requests.json"), str(tmp_path / "out.json")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-6000:]
    generated = json.loads((tmp_path / "out.json").read_text())
    expected = [_reference(hf, r["prompt"], r["stop"]) for r in requests]
    assert all(len(e) >= 1 for e in expected)
    for layout in ("tp1", "tp2", "pp2"):
        assert generated[layout] == expected, layout
