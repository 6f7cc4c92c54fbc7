"""Recipes load, type-check and validate once; every error names its field."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from megatron_cpt.config import ConfigError, load_recipe
from megatron_cpt.config.loader import apply_overrides, parse_override
from megatron_cpt.config.model import padded_vocab_size
from megatron_cpt.config.parallel import ParallelConfig

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
TINY = REPO / "examples" / "llama3_tiny_cpt_2xcpu.yaml"


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_every_example_recipe_validates(path):
    recipe = load_recipe(path)
    assert recipe.train.global_batch_size % (recipe.train.micro_batch_size * recipe.data_parallel_size) == 0


def test_examples_cover_8b_and_70b_fp8_on_h100():
    names = [p.name for p in EXAMPLES]
    for size in ("8b", "70b"):
        fp8 = [n for n in names if n.startswith(f"llama3_{size}_") and "h100" in n and "fp8" in n]
        assert fp8, f"no llama3_{size} FP8 H100 recipe in examples/"
        recipe = load_recipe(REPO / "examples" / fp8[0])
        assert recipe.model.fp8 is not None and recipe.model.dtype == "bf16"


def test_preset_shapes_are_the_published_ones(tmp_path):
    recipe = tmp_path / "preset.yaml"
    # only the preset: no model field overrides it
    recipe.write_text("model: {preset: llama3-tiny}\ndata: {paths: [unused]}\n")
    r8 = load_recipe(recipe, ["model.preset=llama3-8b", "model.dtype=bf16"])
    m = r8.model
    assert (m.num_layers, m.hidden_size, m.ffn_hidden_size, m.num_attention_heads,
            m.num_query_groups, m.vocab_size, m.rope_theta, m.norm_eps, m.tie_embeddings) == (
        32, 4096, 14336, 32, 8, 128256, 500000.0, 1e-5, False)
    r70 = load_recipe(recipe, ["model.preset=llama3-70b"])
    m = r70.model
    assert (m.num_layers, m.hidden_size, m.ffn_hidden_size, m.num_attention_heads,
            m.num_query_groups, m.vocab_size) == (80, 8192, 28672, 64, 8, 128256)
    assert load_recipe(recipe, ["model.preset=llama3.1-8b"]).model.rope_scaling.factor == 8.0
    # a recipe's own field wins over its preset (the tiny CPU recipe sets the demo's vocabulary)
    assert load_recipe(TINY, ["model.preset=llama3-8b"]).model.vocab_size == 4000


def test_overrides_are_typed_and_nested():
    recipe = load_recipe(TINY, ["train.steps=7", "optim.lr=1e-4", "optim.min_lr=1e-5", "parallel.tp=1",
                                "optim.schedule.decay_style=wsd", "optim.schedule.wsd_decay_steps=2",
                                "optim.schedule.warmup_steps=1"])
    assert recipe.train.steps == 7 and recipe.optim.lr == pytest.approx(1e-4)
    assert recipe.optim.schedule.decay_style == "wsd"
    assert parse_override("data.paths=[a, b]") == ("data.paths", ["a", "b"])
    assert apply_overrides({}, ["a.b.c=1"]) == {"a": {"b": {"c": 1}}}
    with pytest.raises(ConfigError, match=r"^a.b.c: 'a.b' is not a section$"):
        apply_overrides({"a": {"b": 2}}, ["a.b.c=1"])


INVALID = [
    (["parallel.tp=3"], "parallel.tp"),  # 3 does not divide 4 heads
    (["model.num_query_groups=3"], "model.num_query_groups"),
    (["parallel.tp=4", "launch.procs_per_node=4"], "parallel.tp"),  # 4 > 2 KV groups
    (["parallel.pp=3", "parallel.tp=1", "launch.procs_per_node=3"], "parallel.pp"),  # 4 layers / 3
    (["train.global_batch_size=7"], "train.global_batch_size"),
    (["train.micro_batch_size=0"], "train.micro_batch_size"),
    (["optim.lr=-1"], "optim.lr"),
    (["optim.min_lr=1.0"], "optim.min_lr"),
    (["optim.schedule.decay_style=wsd"], "optim.schedule.wsd_decay_steps"),
    (["optim.schedule.decay_style=exponential"], "optim.schedule.decay_style"),
    (["train.steps=abc"], "train.steps"),
    (["parallel.tpp=2"], "parallel.tpp"),
    (["model.preset=llama4-8b"], "model.preset"),
    (["train.seq_length=4096"], "train.seq_length"),
    (["parallel.vpp=2", "parallel.pp=1"], "parallel.vpp"),
    (["parallel.first_stage_layers=5", "parallel.pp=2", "parallel.tp=1"], "parallel.first_stage_layers"),
    (["data.paths=[]"], "data.paths"),
    (["data.eod_token_id=5000"], "data.eod_token_id"),
    (["model.fp8={format: hybrid}", "model.dtype=fp32"], "model.fp8"),
    (["train.stop_at_step=50"], "train.stop_at_step"),
    (["checkpoint.save_interval=-1"], "checkpoint.save_interval"),
    (["parallel.sequence_parallel=true", "parallel.tp=1", "launch.procs_per_node=1"],
     "parallel.sequence_parallel"),
    # Context parallelism is refused, never silently ignored.
    (["parallel.cp=2", "parallel.tp=1"], "parallel.cp"),
    (["model.dtype=bf16", "model.fp8={param_gather: true}", "parallel.distributed_optimizer=false"],
     "model.fp8.param_gather"),
    (["model.rope_scaling={factor: 8.0, low_freq_factor: 2.0}"], "model.rope_scaling"),
    # Sequence parallelism splits the sequence over TP (the tiny recipe: TP2 with it).
    (["train.seq_length=127"], "train.seq_length"),
    # FP8 GEMMs: multiples of 16 tokens, 16 x TP with sequence parallelism.
    (["model.dtype=bf16", "model.fp8={format: hybrid}", "train.seq_length=48"], "train.seq_length"),
    (["model.dtype=bf16", "model.fp8={format: hybrid}", "parallel.tp=1", "launch.procs_per_node=1",
      "train.seq_length=40"], "train.seq_length"),
]


def test_sequence_lengths_that_split_are_accepted():
    assert load_recipe(TINY, ["train.seq_length=126"]).train.seq_length == 126
    assert load_recipe(TINY, ["train.seq_length=127", "parallel.sequence_parallel=false"])
    fp8 = ["model.dtype=bf16", "model.fp8={format: hybrid}"]
    assert load_recipe(TINY, fp8 + ["train.seq_length=96"])  # 3 x 16 x TP2
    assert load_recipe(TINY, fp8 + ["train.seq_length=48", "parallel.sequence_parallel=false"])


@pytest.mark.parametrize("overrides,field", INVALID, ids=[f for _, f in INVALID])
def test_invalid_recipe_names_the_field(overrides, field):
    with pytest.raises(ConfigError) as info:
        load_recipe(TINY, overrides)
    assert str(info.value).startswith(field), str(info.value)


def test_cli_rejects_invalid_recipe_without_a_run_dir(tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "megatron_cpt", "train", str(TINY), "parallel.tp=3",
         f"logging.run_dir={run_dir}"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "parallel.tp" in proc.stderr and "Traceback" not in proc.stderr
    assert not run_dir.exists()


def test_missing_recipe_file_is_one_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_recipe(tmp_path / "nope.yaml")


def test_sequence_parallel_is_on_whenever_tp_exceeds_one():
    assert ParallelConfig(tp=2).sequence_parallel_enabled
    assert not ParallelConfig(tp=1).sequence_parallel_enabled
    assert not ParallelConfig(tp=2, sequence_parallel=False).sequence_parallel_enabled
    assert load_recipe(TINY).parallel.sequence_parallel_enabled  # the tiny recipe runs TP=2


def test_pipeline_stage_layer_counts():
    assert ParallelConfig(pp=2).stage_layer_counts(4) == [2, 2]
    assert ParallelConfig(pp=4, first_stage_layers=1, last_stage_layers=1).stage_layer_counts(8) == [1, 3, 3, 1]
    assert ParallelConfig(pp=2, vpp=2).stage_layer_counts(8) == [2, 2, 2, 2]


def test_vocab_padding_is_a_multiple_of_divisor_times_tp():
    assert padded_vocab_size(128256, 128, 1) == 128256
    assert padded_vocab_size(128256, 128, 8) == 129024
    assert padded_vocab_size(1000, 128, 1) == 1024
    assert padded_vocab_size(1000, 128, 2) == 1024
    assert padded_vocab_size(1100, 128, 2) == 1280
