"""Bad data behind a valid recipe: a missing or empty source, or ids that do not match the
tokenizer the data was prepared with. One error naming the field and file, exit status 2, and
`megatron-cpt train` writes no run directory."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from megatron_cpt.config import ConfigError, load_recipe
from megatron_cpt.data.mixture import resolve_mixture
from mixture_fixtures import mixture_overrides, write_empty_source, write_source

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "examples" / "llama3_tiny_cpt_2xcpu.yaml"


def _mixture(root: Path, second: str = "en") -> dict:
    return {"almr": 0.5, "remainder": {"en": 1.0}, "sources": [
        {"name": "zh", "prefix": str(root / "zh"), "language": "zh"},
        {"name": "en", "prefix": str(root / second), "language": "en"}]}


@pytest.fixture()
def root(tmp_path) -> Path:
    write_source(tmp_path / "zh", 20_000, seed=1)
    write_source(tmp_path / "en", 20_000, seed=2)
    write_empty_source(tmp_path / "empty")
    return tmp_path


def _resolve(root: Path, second: str = "en", extra: list[str] = ()):
    recipe = load_recipe(TINY, mixture_overrides(_mixture(root, second), list(extra)))
    return resolve_mixture(recipe.data, recipe.train, recipe.model.vocab_size)


def test_zero_token_source_names_field_and_file(root):
    with pytest.raises(ConfigError) as info:
        _resolve(root, "empty")
    message = str(info.value)
    assert message.startswith("data.mixture.sources[1].prefix:")
    assert f"{root / 'empty'}.bin' is empty: the source holds 0 tokens" in message


def test_missing_index_names_field_and_file(root):
    (root / "en.idx").unlink()
    with pytest.raises(FileNotFoundError, match=r"^data.mixture.sources\[1\].prefix: .*en.idx' "
                       r"does not exist: write it with `megatron-cpt data prepare --output-prefix "):
        _resolve(root)


def test_index_lengths_are_megatron_cores_and_a_bad_index_is_named(root):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    from megatron_cpt.data.index_file import sequence_lengths

    prefix = str(root / "en")
    assert sequence_lengths(prefix, "x").tolist() == IndexedDataset(prefix).sequence_lengths.tolist()
    index = Path(prefix + ".idx")
    whole = index.read_bytes()
    index.write_bytes(whole[:100])  # cut inside the sequence lengths
    with pytest.raises(ConfigError, match=r"^data.mixture.sources\[1\].prefix: .*en.idx' is "
                       r"truncated \(\d+ of \d+ sequence lengths\)"):
        _resolve(root)
    index.write_bytes(b"not an index" + whole[12:])
    with pytest.raises(ConfigError, match=r"en.idx' is not a megatron-core index"):
        _resolve(root)


def test_eod_id_must_match_the_prepared_data(root):
    (root / "en.stats.json").write_text(json.dumps({"eod_id": 2, "vocab_size": 4000,
                                                    "tokenizer": "sp:tok/tokenizer.model"}))
    with pytest.raises(ConfigError, match="^data.eod_token_id: 0, but .*end-of-document id 2"):
        _resolve(root)
    with pytest.raises(ConfigError, match="^model.vocab_size: 1000 is smaller"):
        _resolve(root, extra=["data.eod_token_id=2", "model.vocab_size=1000"])


def test_empty_validation_part_is_named(root):
    with pytest.raises(ConfigError, match="^data.split: the validation part"):
        _resolve(root, extra=["data.split=100,0,0"])
    # Without evaluation it is not needed.
    recipe = load_recipe(TINY, mixture_overrides(_mixture(root), ["data.split=100,0,0"]))
    plan = resolve_mixture(recipe.data, recipe.train, with_validation=False)
    assert [s.valid_documents for s in plan.sources] == [0, 0]


@pytest.mark.parametrize("case", ["zero-tokens", "almr"])
def test_train_command_fails_before_any_run_dir(root, case):
    run_dir = root / "run"
    mixture = _mixture(root, "empty" if case == "zero-tokens" else "en")
    if case == "almr":
        mixture["almr"] = 1.5
    args = [sys.executable, "-m", "megatron_cpt", "train", str(TINY),
            *mixture_overrides(mixture, [f"logging.run_dir={run_dir}"])]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    expected = ("data.mixture.sources[1].prefix" if case == "zero-tokens"
                else "data.mixture.almr: must be in [0, 1], got 1.5")
    assert expected in proc.stderr and "Traceback" not in proc.stderr
    assert not run_dir.exists()


def test_cpu_recipe_without_the_demo_data_names_make_demo(tmp_path):
    """Acceptance: examples/llama3_tiny_cpt_2xcpu.yaml before `make demo` (a directory without
    outputs/demo) fails with one line that names the missing step, and writes no run directory."""
    proc = subprocess.run([sys.executable, "-m", "megatron_cpt", "train", str(TINY)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr == (
        "megatron-cpt train: error: data.paths[0]: 'outputs/demo/data/zh_fortunes.bin' does not "
        "exist: run `make demo` first (it writes outputs/demo/data/)\n")
    assert list(tmp_path.iterdir()) == []
