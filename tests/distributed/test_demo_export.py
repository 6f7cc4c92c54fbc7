"""The demo's Hugging Face output works in transformers. The demo in miniature: a sentencepiece
tokenizer trained on Chinese and English text, data prepared with it, `megatron-cpt train` on 2
CPU ranks (TP2), `convert mcore-to-hf --tokenizer-from`. The export loads with AutoTokenizer and
AutoModelForCausalLM, its tokenizer gives sentencepiece's ids, and `convert generate` prints the
greedy continuation that the model's own logits give."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))

from data_fixtures import many_docs, write_jsonl  # noqa: E402
from harness import run_cli, train  # noqa: E402

from megatron_cpt.cli import main  # noqa: E402

STEPS, NEW_TOKENS = 6, 8
PROMPTS = ["床前明月光，", "The quick brown fox"]
TEXTS = ["白日依山尽，黄河入海流。欲穷千里目，更上一层楼。", "春眠不觉晓，处处闻啼鸟。",
         "Continual pre-training adds a language to a pretrained model.",
         "ALMR = 0.33 at lr 1e-4; 中英混排 works too.\n\tdef f(x): return x"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demo_export")
    write_jsonl(root / "corpus" / "mixed.jsonl", many_docs(400))
    assert main(["data", "train-tokenizer", "--input", str(root / "corpus"), "--vocab-size", "600",
                 "--output", str(root / "tokenizer")]) == 0
    assert main(["data", "prepare", "--input", str(root / "corpus"), "--output-prefix",
                 str(root / "data" / "mixed"), "--tokenizer", f"sp:{root / 'tokenizer'}",
                 "--no-progress"]) == 0
    train([f"data.paths=[{root / 'data' / 'mixed'}]", "data.eod_token_id=2",
           "model.vocab_size=600", f"train.steps={STEPS}", "train.seq_length=64",
           "optim.schedule.warmup_steps=1", "checkpoint.save_interval=0",
           "logging.tensorboard=false", f"logging.run_dir={root / 'run'}"])
    run_cli(["convert", "mcore-to-hf", "--ckpt-dir",
             str(root / "run" / "checkpoints" / f"step_{STEPS:06d}"), "--out-dir", str(root / "hf"),
             "--tokenizer-from", str(root / "tokenizer")])
    return root


def test_export_loads_in_transformers_with_the_sentencepiece_ids(demo):
    import sentencepiece
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf_dir = demo / "hf"
    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    config = json.loads((hf_dir / "config.json").read_text())
    assert (config["vocab_size"], config["bos_token_id"], config["eos_token_id"]) == (600, 1, 2)
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id == 2
    processor = sentencepiece.SentencePieceProcessor(
        model_file=str(demo / "tokenizer" / "tokenizer.model"))
    for text in TEXTS + PROMPTS:
        ids = processor.Encode(text)
        assert tokenizer.encode(text, add_special_tokens=False) == ids, text
        assert tokenizer.decode(ids) == text


def test_generate_prints_the_greedy_continuation_of_the_model(demo):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf_dir = demo / "hf"
    prompt_args = [arg for prompt in PROMPTS for arg in ("--prompt", prompt)]
    output = run_cli(["convert", "generate", "--hf-dir", str(hf_dir), "--max-new-tokens",
                      str(NEW_TOKENS), *prompt_args]).stdout.splitlines()
    assert output[0] == f"generate: {hf_dir}, greedy, {NEW_TOKENS} new tokens per prompt"
    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    for prompt, line in zip(PROMPTS, output[1:], strict=True):
        ids = tokenizer.encode(prompt, add_special_tokens=False)
        new: list[int] = []
        with torch.no_grad():  # greedy decoding from the full forward pass, no cache
            while len(new) < NEW_TOKENS and (not new or new[-1] != tokenizer.eos_token_id):
                new.append(int(model(torch.tensor([ids + new])).logits[0, -1].argmax()))
        assert line == f"  {prompt} -> {tokenizer.decode(new)}".replace("\n", "\\n")
