"""HF -> megatron-core -> HF through the real command on gloo ranks.

Each test converts a random-init transformers Llama, checks logit parity (fp32, max |diff| < 1e-4)
at the layout it was converted with and at another one (with a different padded vocabulary), and
exports back to safetensors that must equal the originals bit for bit and load in transformers.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from conversion_fixtures import make_hf_llama, parse_verify_line, run_cli  # noqa: E402

PARITY = 1e-4


def _ok(result) -> str:
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    return output


def _load_all(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    tensors: dict[str, torch.Tensor] = {}
    for path in sorted(directory.glob("*.safetensors")):
        tensors.update(load_file(path))
    return tensors


def _assert_parity(hf: Path, ckpt: Path, tp: int, pp: int) -> None:
    output = _ok(run_cli("convert", "verify", "--hf-dir", str(hf), "--ckpt-dir", str(ckpt),
                         "--tp", str(tp), "--pp", str(pp), "--threshold", str(PARITY)))
    figures = parse_verify_line(output)
    assert figures["max_abs_diff"] < PARITY, output[-2000:]


def _assert_round_trip(hf: Path, ckpt: Path, out: Path) -> None:
    from transformers import AutoModelForCausalLM

    _ok(run_cli("convert", "mcore-to-hf", "--ckpt-dir", str(ckpt), "--out-dir", str(out),
                "--max-shard-size", "150KB", "--hf-config-from", str(hf)))
    original, exported = _load_all(hf), _load_all(out)
    assert sorted(original) == sorted(exported)
    for name, tensor in original.items():
        assert exported[name].dtype == tensor.dtype, name
        assert torch.equal(exported[name], tensor), name
    assert len(json.loads((out / "model.safetensors.index.json").read_text())["weight_map"]) == len(original)
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (out / name).is_file(), name
    tokens = torch.randint(0, 1000, (1, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32)(tokens).logits
        reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)(tokens).logits
    assert torch.equal(reference, reloaded)


def test_untied_gqa2_converted_at_tp2_pp2(tmp_path):
    """GQA with 2 KV groups, untied, vocab 1100 (padded to 1120 at TP2, 1104 at TP1), fp32."""
    hf = make_hf_llama(tmp_path / "hf", vocab=1100, heads=4, kv_heads=2, tie=False)
    # The default divisor (model.make_vocab_size_divisible_by = 16) pads 1100 differently per TP.
    ckpt = tmp_path / "mcore"
    output = _ok(run_cli("convert", "hf-to-mcore", "--hf-dir", str(hf), "--out-dir", str(ckpt),
                         "--tp", "2", "--pp", "2", "--verify"))
    assert "filling rank 0's shard" in output
    assert parse_verify_line(output)["max_abs_diff"] < PARITY  # loaded back at TP2-PP2
    meta = json.loads((ckpt / "megatron_cpt.json").read_text())
    assert meta["kind"] == "pretrained" and meta["parallel"] == {"tp": 2, "pp": 2, "vpp": None}
    assert meta["padded_vocab_size"] == 1120 and meta["model"]["vocab_size"] == 1100
    assert not (tmp_path / "mcore.tmp").exists()
    _assert_parity(hf, ckpt, tp=1, pp=1)  # another layout, fewer padding rows than on disk
    _assert_round_trip(hf, ckpt, tmp_path / "hf_out")


def test_tied_gqa4_bf16_converted_with_virtual_pipeline(tmp_path):
    """GQA with 4 KV groups (8 heads), tied embeddings, vocab 1100, bf16 on disk; converted at
    TP1-PP2-VPP2, loaded at TP2-PP2 (more padding rows than on disk: zero-filled)."""
    hf = make_hf_llama(tmp_path / "hf", vocab=1100, heads=8, kv_heads=4, tie=True,
                       dtype=torch.bfloat16)
    ckpt = tmp_path / "mcore"
    output = _ok(run_cli("convert", "hf-to-mcore", "--hf-dir", str(hf), "--out-dir", str(ckpt),
                         "--pp", "2", "--vpp", "2", "--verify"))
    assert parse_verify_line(output)["max_abs_diff"] < PARITY
    meta = json.loads((ckpt / "megatron_cpt.json").read_text())
    assert meta["dtype"] == "bf16" and meta["model"]["tie_embeddings"] is True
    assert meta["padded_vocab_size"] == 1104
    _assert_parity(hf, ckpt, tp=2, pp=2)
    _assert_round_trip(hf, ckpt, tmp_path / "hf_out")
