"""Training starts correctly from converted weights: the first-step loss of `megatron-cpt train`
(fp32, TP2) from a converted Hugging Face Llama equals that model's own loss on the same batch."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from conversion_fixtures import REPO_ROOT, make_hf_llama, run_cli  # noqa: E402
from token_fixtures import EOD_ID, write_byte_dataset  # noqa: E402

RECIPE = REPO_ROOT / "examples" / "llama3_tiny_cpt_2xcpu.yaml"


def _first_global_batch(overrides: list[str], run_dir: Path) -> list[dict[str, torch.Tensor]]:
    """The samples of step 1, rebuilt from the run's dataset cache exactly as the trainer reads them."""
    from megatron_cpt.config.recipe import load_recipe
    from megatron_cpt.data.datasets import build_training_data

    recipe = load_recipe(str(RECIPE), overrides)
    train = recipe.train
    train_ds = build_training_data(recipe.data, train, recipe.model.vocab_size,
                                   train.steps * train.global_batch_size, 0,
                                   cache_dir=str(run_dir / "data_cache")).train
    return [train_ds[i] for i in range(train.global_batch_size)]


def _hf_loss(hf_dir: Path, samples: list[dict[str, torch.Tensor]]) -> float:
    """Per-token mean cross entropy over the batch's loss tokens, as the trainer defines it."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    total, count = 0.0, 0.0
    with torch.no_grad():
        for sample in samples:
            logits = model(sample["tokens"].unsqueeze(0)).logits[0].double()
            losses = torch.nn.functional.cross_entropy(logits, sample["labels"], reduction="none")
            mask = sample["loss_mask"].double()
            total += float((losses * mask).sum())
            count += float(mask.sum())
    return total / count


def test_first_step_loss_from_converted_weights_equals_hf_loss(tmp_path):
    # The llama3-tiny preset's shape, as a Hugging Face model (vocab 1000, 2 KV groups).
    hf = make_hf_llama(tmp_path / "hf", vocab=1000, hidden=64, layers=4, heads=4, kv_heads=2,
                       ffn=192, tie=False)
    ckpt = tmp_path / "mcore"
    result = run_cli("convert", "hf-to-mcore", "--hf-dir", str(hf), "--out-dir", str(ckpt),
                     "--pp", "2")
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    data = tmp_path / "bytes"
    write_byte_dataset(data, limit_bytes=200_000)
    run_dir = tmp_path / "run"
    overrides = [
        f"data.paths=[{data}]", f"data.eod_token_id={EOD_ID}", f"logging.run_dir={run_dir}",
        f"checkpoint.pretrained={ckpt}", "model.vocab_size=1000", "model.dtype=fp32",
        "train.steps=2", "train.stop_at_step=1", "optim.schedule.warmup_steps=1",
        "train.global_batch_size=4", "train.micro_batch_size=2",
        "train.seq_length=64", "checkpoint.save_at_end=false", "checkpoint.save_interval=0",
        "logging.tensorboard=false",
        # Vocab 1000 is padded to 1024 rows at TP2: the padding columns must stay out of the
        # softmax for the losses to agree (the checkpoint, converted at PP2, holds 1008 rows).
        "model.make_vocab_size_divisible_by=128",
    ]
    result = run_cli("train", str(RECIPE), *overrides)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    first = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])
    assert first["step"] == 1
    expected = _hf_loss(hf, _first_global_batch(overrides, run_dir))
    assert abs(first["loss"] - expected) < 1e-4, (first["loss"], expected)
