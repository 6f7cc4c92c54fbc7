"""Conversion in one process: the Llama transforms, config translation, safetensors I/O, and the
errors that `convert hf-to-mcore` / `mcore-to-hf` raise before any rank starts."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from conversion_fixtures import make_hf_llama  # noqa: E402
from data_fixtures import build_hf_tokenizer  # noqa: E402

from megatron_cpt.cli import main as cli_main  # noqa: E402
from megatron_cpt.errors import ConfigError, UserError  # noqa: E402
from megatron_cpt.config.model import ModelConfig  # noqa: E402
from megatron_cpt.conversion.hf_io import (HfCheckpoint, ShardedSafetensorsWriter,  # noqa: E402
                                           parse_size, read_safetensors_header)
from megatron_cpt.conversion.llama import (fuse_qkv, hf_shapes, mapping_by_key,  # noqa: E402
                                           mcore_shape, read_mcore_region, split_mcore_tensor,
                                           split_qkv)
from megatron_cpt.conversion.llama_config import (hf_config_from_model,  # noqa: E402
                                                  model_config_from_hf)
from megatron_cpt.conversion.mcore_to_hf import tokenizer_ids_for  # noqa: E402

CFG = ModelConfig(num_layers=2, hidden_size=32, ffn_hidden_size=48, num_attention_heads=8,
                  num_query_groups=4, vocab_size=100, dtype="fp32")


class DictSource:
    """A TensorSource over in-memory tensors, recording what was read."""

    def __init__(self, tensors: dict[str, torch.Tensor]):
        self.tensors, self.reads = tensors, []

    def read(self, name, rows=None, cols=None):
        self.reads.append((name, rows, cols))
        tensor = self.tensors[name]
        if rows is not None:
            tensor = tensor[rows[0]:rows[1]]
        if cols is not None:
            tensor = tensor[:, cols[0]:cols[1]]
        return tensor.clone()


def random_hf_layer(cfg: ModelConfig, layer: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(layer)
    return {name: torch.randn(shape, generator=generator)
            for name, shape in hf_shapes(cfg).items()}


# ---- transforms -----------------------------------------------------------------------------------

def test_fuse_qkv_puts_each_kv_group_after_its_query_heads():
    head_dim, heads, groups = 2, 4, 2
    q = torch.arange(heads * head_dim).float().unsqueeze(1)  # rows 0..7 = q heads 0..3
    k = 100 + torch.arange(groups * head_dim).float().unsqueeze(1)
    v = 200 + torch.arange(groups * head_dim).float().unsqueeze(1)
    fused = fuse_qkv(q, k, v, groups).squeeze(1).tolist()
    assert fused == [0, 1, 2, 3, 100, 101, 200, 201, 4, 5, 6, 7, 102, 103, 202, 203]


def test_split_qkv_inverts_fuse_qkv():
    tensors = random_hf_layer(CFG)
    names = mapping_by_key(CFG)["decoder.layers.self_attention.linear_qkv.weight"].hf_names(0)
    fused = fuse_qkv(*(tensors[n] for n in names), CFG.num_query_groups)
    for original, back in zip((tensors[n] for n in names), split_qkv(fused, CFG)):
        assert torch.equal(original, back)


@pytest.mark.parametrize("tp", [1, 2, 4])
def test_tp_regions_of_fused_tensors_match_slices_of_the_whole(tp):
    """What a TP rank reads lazily equals its slice of the whole fused megatron tensor."""
    source = DictSource(random_hf_layer(CFG))
    table = mapping_by_key(CFG)
    for key in ("decoder.layers.self_attention.linear_qkv.weight", "decoder.layers.mlp.linear_fc1.weight"):
        m = table[key]
        rows = mcore_shape(m, CFG, padded_vocab=128)[0]
        whole = read_mcore_region(m, source, CFG, 0, (0, rows), None)
        if m.transform == "gate_up":  # each rank holds [gate_shard; up_shard]: two regions
            ffn = CFG.ffn_hidden_size
            for rank in range(tp):
                for base in (0, ffn):
                    span = (base + rank * ffn // tp, base + (rank + 1) * ffn // tp)
                    part = read_mcore_region(m, source, CFG, 0, span, None)
                    assert torch.equal(part, whole[span[0]:span[1]])
        else:
            for rank in range(tp):
                span = (rank * rows // tp, (rank + 1) * rows // tp)
                assert torch.equal(read_mcore_region(m, source, CFG, 0, span, None), whole[span[0]:span[1]])
        back = split_mcore_tensor(m, whole, CFG, 0)
        for name, tensor in back.items():
            assert torch.equal(tensor, source.tensors[name])


def test_row_parallel_region_reads_only_its_columns():
    source = DictSource(random_hf_layer(CFG))
    m = mapping_by_key(CFG)["decoder.layers.mlp.linear_fc2.weight"]
    part = read_mcore_region(m, source, CFG, 0, (0, 32), (24, 48))
    assert torch.equal(part, source.tensors["model.layers.0.mlp.down_proj.weight"][:, 24:48])
    assert source.reads == [("model.layers.0.mlp.down_proj.weight", (0, 32), (24, 48))]


def test_qkv_region_must_cover_whole_groups():
    m = mapping_by_key(CFG)["decoder.layers.self_attention.linear_qkv.weight"]
    with pytest.raises(ValueError, match="whole KV groups"):
        read_mcore_region(m, DictSource(random_hf_layer(CFG)), CFG, 0, (0, 5), None)


def test_vocab_region_returns_only_real_rows_and_export_drops_padding():
    source = DictSource(random_hf_layer(CFG))
    m = mapping_by_key(CFG)["embedding.word_embeddings.weight"]
    assert read_mcore_region(m, source, CFG, None, (64, 128), None).shape[0] == 36
    assert read_mcore_region(m, source, CFG, None, (100, 128), None).shape[0] == 0
    padded = torch.cat([source.tensors["model.embed_tokens.weight"], torch.zeros(28, 32)])
    back = split_mcore_tensor(m, padded, CFG, None)
    assert torch.equal(back["model.embed_tokens.weight"], source.tensors["model.embed_tokens.weight"])


def test_tied_model_has_no_output_layer_or_lm_head():
    tied = ModelConfig(**{**CFG.__dict__, "tie_embeddings": True})
    assert "output_layer.weight" not in mapping_by_key(tied)
    assert "lm_head.weight" not in hf_shapes(tied)
    assert list(hf_shapes(CFG))[-1] == "lm_head.weight"


# ---- config.json ----------------------------------------------------------------------------------

def _llama_config(**overrides) -> dict:
    config = {"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 128,
              "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
              "vocab_size": 1000, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
              "torch_dtype": "bfloat16", "bos_token_id": 1, "eos_token_id": 2}
    config.update(overrides)
    return config


def test_model_config_from_hf_reads_shapes_dtype_and_rope_scaling():
    cfg = model_config_from_hf(_llama_config(rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192}), where="config.json")
    assert (cfg.num_layers, cfg.num_query_groups, cfg.ffn_hidden_size, cfg.dtype) == (4, 2, 128, "bf16")
    assert cfg.rope_scaling.factor == 8.0
    back = model_config_from_hf(hf_config_from_model(cfg, "bf16"), where="round trip")
    assert back == cfg


def test_model_config_from_hf_reads_transformers5_rope_parameters():
    config = _llama_config(rope_parameters={"rope_type": "llama3", "rope_theta": 1e4, "factor": 32.0,
                                            "original_max_position_embeddings": 8192})
    del config["rope_theta"]
    cfg = model_config_from_hf(config, where="config.json")
    assert cfg.rope_theta == 1e4 and cfg.rope_scaling.factor == 32.0


@pytest.mark.parametrize("overrides, field", [
    ({"architectures": ["MistralForCausalLM"]}, "architectures"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope_scaling"),
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "high_freq_factor": 2.0}}, "high_freq_factor"),
    ({"attention_bias": True}, "attention_bias"),
    ({"head_dim": 32}, "head_dim"),
    ({"num_key_value_heads": 3}, "num_query_groups"),
])
def test_model_config_from_hf_names_the_unsupported_field(overrides, field):
    with pytest.raises(ConfigError, match=field):
        model_config_from_hf(_llama_config(**overrides), where="config.json")


def test_hf_config_keeps_token_ids_of_the_base_config():
    cfg = model_config_from_hf(_llama_config(), where="config.json")
    written = hf_config_from_model(cfg, "fp32", base=_llama_config(bos_token_id=7))
    assert written["bos_token_id"] == 7 and written["torch_dtype"] == "float32"


# ---- safetensors I/O ------------------------------------------------------------------------------

def test_sharded_writer_streams_shards_that_safetensors_reads(tmp_path):
    from safetensors.torch import load_file

    tensors = {"a": torch.randn(10, 4), "b": torch.randn(3).to(torch.bfloat16), "c": torch.randn(20, 4)}
    plan = [(n, tuple(t.shape), t.dtype) for n, t in tensors.items()]
    writer = ShardedSafetensorsWriter(tmp_path, plan, max_shard_bytes=200)
    with pytest.raises(ValueError, match="expects 'a'"):
        writer.write("b", tensors["b"])
    for name, tensor in tensors.items():
        writer.write(name, tensor)
    writer.finish()
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) == 2
    assert index["metadata"]["total_size"] == 10 * 4 * 4 + 3 * 2 + 20 * 4 * 4
    for name, tensor in tensors.items():
        assert torch.equal(load_file(tmp_path / index["weight_map"][name])[name], tensor)


def test_parse_size():
    assert parse_size("5GB") == 5 * 10**9 and parse_size("100KB") == 100_000 and parse_size("42") == 42
    with pytest.raises(ValueError):
        parse_size("lots")


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory) -> Path:
    return make_hf_llama(tmp_path_factory.mktemp("hf") / "model", vocab=300, layers=2)


def test_hf_checkpoint_reads_slices_lazily(hf_dir):
    from transformers import AutoModelForCausalLM

    hf = HfCheckpoint(hf_dir)
    assert len(set(hf.weight_map.values())) > 1  # several shards
    full = AutoModelForCausalLM.from_pretrained(hf_dir).state_dict()["model.layers.1.mlp.down_proj.weight"]
    part = hf.read("model.layers.1.mlp.down_proj.weight", (8, 16), (32, 64))
    assert torch.equal(part, full[8:16, 32:64])
    assert hf.shape("model.embed_tokens.weight") == (300, 64)


# ---- command errors: exit status 2, one line, nothing written -------------------------------------

def _copy(hf_dir: Path, tmp_path: Path) -> Path:
    target = tmp_path / "hf"
    shutil.copytree(hf_dir, target)
    return target


def _convert(capsys, *args) -> tuple[int, str]:
    status = cli_main(["convert", *args])
    return status, capsys.readouterr().err


def test_missing_shard_is_refused(hf_dir, tmp_path, capsys):
    source = _copy(hf_dir, tmp_path)
    index = json.loads((source / "model.safetensors.index.json").read_text())
    shard = sorted(set(index["weight_map"].values()))[1]
    (source / shard).unlink()
    status, err = _convert(capsys, "hf-to-mcore", "--hf-dir", str(source), "--out-dir", str(tmp_path / "out"))
    assert status == 2 and shard in err and "missing" in err
    assert not (tmp_path / "out").exists()


def test_config_that_does_not_match_the_tensors_is_refused(hf_dir, tmp_path, capsys):
    source = _copy(hf_dir, tmp_path)
    config = json.loads((source / "config.json").read_text())
    (source / "config.json").write_text(json.dumps({**config, "intermediate_size": 96}))
    status, err = _convert(capsys, "hf-to-mcore", "--hf-dir", str(source), "--out-dir", str(tmp_path / "out"))
    assert status == 2 and "gate_proj" in err and "[96, 64]" in err
    (source / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 1}))
    status, err = _convert(capsys, "hf-to-mcore", "--hf-dir", str(source), "--out-dir", str(tmp_path / "out"))
    assert status == 2 and "model.layers.1." in err and "num_hidden_layers=1" in err
    assert not (tmp_path / "out").exists()


def test_kv_groups_not_divisible_by_tp_is_refused(hf_dir, tmp_path, capsys):
    status, err = _convert(capsys, "hf-to-mcore", "--hf-dir", str(hf_dir), "--out-dir",
                           str(tmp_path / "out"), "--tp", "4")
    assert status == 2 and "--tp" in err and "KV groups" in err
    assert not (tmp_path / "out").exists()


def test_unknown_architecture_is_refused(hf_dir, tmp_path, capsys):
    source = _copy(hf_dir, tmp_path)
    config = json.loads((source / "config.json").read_text())
    (source / "config.json").write_text(json.dumps({**config, "architectures": ["GPT2LMHeadModel"]}))
    status, err = _convert(capsys, "hf-to-mcore", "--hf-dir", str(source), "--out-dir", str(tmp_path / "out"))
    assert status == 2 and "architectures" in err and "GPT2LMHeadModel" in err
    assert not (tmp_path / "out").exists()


def test_existing_target_is_refused_without_force(hf_dir, tmp_path, capsys):
    target = tmp_path / "out"
    target.mkdir()
    (target / "metadata.json").write_text("{}")
    status, err = _convert(capsys, "hf-to-mcore", "--hf-dir", str(hf_dir), "--out-dir", str(target))
    assert status == 2 and "--force" in err
    assert [p.name for p in target.iterdir()] == ["metadata.json"]


def test_mcore_to_hf_refuses_a_directory_that_is_no_checkpoint(tmp_path, capsys):
    status, err = _convert(capsys, "mcore-to-hf", "--ckpt-dir", str(tmp_path), "--out-dir",
                           str(tmp_path / "out"))
    assert status == 2 and "megatron_cpt.json" in err
    assert not (tmp_path / "out").exists()


def test_safetensors_header_reader_ignores_metadata(hf_dir):
    index = json.loads((hf_dir / "model.safetensors.index.json").read_text())
    first = sorted(set(index["weight_map"].values()))[0]
    header = read_safetensors_header(hf_dir / first)
    assert "__metadata__" not in header and all("shape" in v for v in header.values())


def test_tokenizer_from_sets_the_token_ids_and_must_fit_the_model(tmp_path):
    tokenizer = build_hf_tokenizer(tmp_path / "tok", vocab_size=400)  # eos <|end_of_text|> = 1
    (tokenizer / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": {"content": "<|begin_of_text|>"}, "eos_token": "<|end_of_text|>"}))
    fits = ModelConfig(num_layers=2, hidden_size=32, ffn_hidden_size=48, num_attention_heads=8,
                       num_query_groups=4, vocab_size=400, dtype="fp32")
    assert tokenizer_ids_for(tokenizer, fits) == {"bos_token_id": 0, "eos_token_id": 1}
    assert tokenizer_ids_for(None, fits) == {}
    with pytest.raises(ConfigError, match=rf"^--tokenizer-from {tokenizer}: the tokenizer has 400 "
                       "tokens, more than the checkpoint's model.vocab_size 100$"):
        tokenizer_ids_for(tokenizer, CFG)
    with pytest.raises(FileNotFoundError, match=rf"^--tokenizer-from {tmp_path}: no tokenizer.json"):
        tokenizer_ids_for(tmp_path, fits)
    (tokenizer / "tokenizer_config.json").write_text('{"eos_token": ')
    with pytest.raises(UserError, match=rf"^--tokenizer-from {tokenizer}: tokenizer_config.json is "
                                        rf"not valid JSON \(Expecting value"):
        tokenizer_ids_for(tokenizer, fits)
    (tokenizer / "tokenizer.json").write_text('{"model": 1}')
    with pytest.raises(UserError, match=rf"^--tokenizer-from {tokenizer}: tokenizer.json is not a "
                                        rf"tokenizers file \("):
        tokenizer_ids_for(tokenizer, fits)
