"""Acceptance: for ALMR 0.1, 0.33 and 0.7, the training samples megatron-core draws over more than
1e6 tokens give every source, language and group its requested token share within half a
percentage point (inspect-mix, in process, on generated sources of different sizes)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from megatron_cpt.config import load_recipe
from megatron_cpt.data.inspect_mix import inspect_mix
from mixture_fixtures import mixture_overrides, write_source

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "examples" / "llama3_tiny_cpt_2xcpu.yaml"
TOLERANCE = 0.005
STEPS, GBS, SEQ = 500, 16, 128  # 1,024,000 tokens


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> list[dict]:
    root = tmp_path_factory.mktemp("mix")
    sizes = {"zh_web": 300_000, "zh_poetry": 60_000, "en_web": 500_000, "code": 150_000,
             "math": 60_000}
    for seed, (name, tokens) in enumerate(sizes.items()):
        write_source(root / name, tokens, seed)
    return [
        {"name": "zh_web", "prefix": str(root / "zh_web"), "language": "zh"},
        # Weight 2: drawn twice as often per token as zh_web.
        {"name": "zh_poetry", "prefix": str(root / "zh_poetry"), "language": "zh", "weight": 2.0},
        {"name": "en_web", "prefix": str(root / "en_web"), "language": "en"},
        {"name": "code", "prefix": str(root / "code"), "language": "code"},
        # An English source in the math group: the domain wins over the language.
        {"name": "math", "prefix": str(root / "math"), "language": "en", "domain": "math"},
    ]


def _recipe(sources: list[dict], almr: float, extra: list[str] = ()):
    mixture = {"almr": almr, "additional_language": "zh",
               "remainder": {"en": 0.6, "code": 0.3, "math": 0.1}, "sources": sources}
    return load_recipe(TINY, mixture_overrides(mixture, [
        f"train.steps={STEPS}", f"train.global_batch_size={GBS}", "train.micro_batch_size=1",
        f"train.seq_length={SEQ}", "data.split=95,5,0", *extra]))


@pytest.mark.parametrize("almr", [0.1, 0.33, 0.7])
def test_realized_shares_meet_the_request(sources, almr):
    report = inspect_mix(_recipe(sources, almr))
    assert report.tokens >= 1_000_000
    rows = {row.name: row for row in report.sources}
    train = {s.name: s.train_tokens for s in report.plan.sources}
    zh_mass = train["zh_web"] + 2 * train["zh_poetry"]
    requested = {"zh_web": almr * train["zh_web"] / zh_mass,
                 "zh_poetry": almr * 2 * train["zh_poetry"] / zh_mass,
                 "en_web": (1 - almr) * 0.6, "code": (1 - almr) * 0.3, "math": (1 - almr) * 0.1}
    for name, share in requested.items():
        assert rows[name].requested == pytest.approx(share)
        assert abs(rows[name].realized - share) < TOLERANCE, (name, rows[name])
    languages = {row.name: row for row in report.languages}
    assert languages["zh"].requested == pytest.approx(almr)
    assert languages["en"].requested == pytest.approx((1 - almr) * 0.7)
    for row in report.languages + report.groups:
        assert abs(row.realized - row.requested) < TOLERANCE, row
    assert sum(row.tokens for row in report.sources) == report.tokens


def test_repeated_source_is_warned_not_refused(sources):
    report = inspect_mix(_recipe(sources, 0.1))
    math = next(s for s in report.plan.sources if s.name == "math")
    assert math.epochs > 1
    assert any(w.startswith("math will be repeated") for w in report.plan.warnings)
    assert not any(w.startswith("zh_web") for w in report.plan.warnings)


def test_zero_share_source_is_left_out_of_the_blend(sources):
    report = inspect_mix(_recipe(sources, 0.0, ["train.steps=50"]))
    rows = {row.name: row for row in report.sources}
    assert rows["zh_web"].tokens == rows["zh_poetry"].tokens == 0
    assert [s.name for s in report.plan.training_sources] == ["en_web", "code", "math"]


def test_inspect_mix_command_prints_json_and_checks_the_tolerance(sources, tmp_path):
    recipe = tmp_path / "mix.yaml"
    recipe.write_text(TINY.read_text())
    args = [str(recipe), *_overrides_for_cli(sources, 0.33), "--steps", "100", "--json",
            "--tolerance", str(TOLERANCE)]
    proc = subprocess.run([sys.executable, "-m", "megatron_cpt", "data", "inspect-mix", *args],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["steps"] == 100 and report["samples"] == 100 * GBS
    assert abs(report["languages"]["zh"]["realized"] - 0.33) < TOLERANCE
    assert report["plan"]["sources"][0]["name"] == "zh_web"


def _overrides_for_cli(sources: list[dict], almr: float) -> list[str]:
    mixture = {"almr": almr, "additional_language": "zh",
               "remainder": {"en": 0.6, "code": 0.3, "math": 0.1}, "sources": sources}
    return mixture_overrides(mixture, [f"train.steps={STEPS}", f"train.global_batch_size={GBS}",
                                       "train.micro_batch_size=1", f"train.seq_length={SEQ}",
                                       "data.split=95,5,0"])
