"""A tiny random-init Llama with a chat template, as a Hugging Face directory and as a megatron-core
checkpoint converted from it, for the generation and serving tests."""

from __future__ import annotations

import json
from pathlib import Path

from conversion_fixtures import make_hf_llama, run_cli

# The tiny word-level tokenizer's words are w0 .. w999 (id = number); w2 ends a document.
CHAT_TEMPLATE = ("{% for m in messages %}w3 w{{ 5 if m['role'] == 'system' else 6 if m['role'] == "
                 "'user' else 7 }} {{ m['content'] }} w4 {% endfor %}"
                 "{% if add_generation_prompt %}w3 w7{% endif %}")
END_OF_TURN = 4


def make_chat_checkpoint(root: Path) -> tuple[Path, Path]:
    """(HF directory with a chat template, converted checkpoint)."""
    hf = make_hf_llama(root / "hf", vocab=1000, hidden=64, layers=4, heads=4, kv_heads=2)
    config_path = hf / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps(config | {"chat_template": CHAT_TEMPLATE}))
    ckpt = root / "ckpt"
    proc = run_cli("convert", "hf-to-mcore", "--hf-dir", str(hf), "--out-dir", str(ckpt),
                   timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return hf, ckpt
