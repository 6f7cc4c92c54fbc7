"""The mixture section validates without touching the disk, and each error names its field."""

from __future__ import annotations

from pathlib import Path

import pytest

from megatron_cpt.config import ConfigError, load_recipe
from mixture_fixtures import mixture_overrides

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "examples" / "llama3_tiny_cpt_2xcpu.yaml"

SOURCES = [
    {"name": "zh_web", "prefix": "/data/zh_web", "language": "zh"},
    {"name": "en_web", "prefix": "/data/en_web", "language": "en"},
    {"prefix": "/data/python", "language": "en", "domain": "code"},
]
GOOD = {"almr": 0.33, "additional_language": "zh", "remainder": {"en": 0.8, "code": 0.2},
        "sources": SOURCES}


def _load(mixture: dict, extra: list[str] = ()):
    return load_recipe(TINY, mixture_overrides(mixture, list(extra)))


def test_a_mixture_validates_and_groups_by_domain_before_language():
    mixture = _load(GOOD).data.mixture
    assert [mixture.group_of(s) for s in mixture.sources] == ["zh", "en", "code"]
    assert mixture.sources[2].display_name == "python"
    shares = mixture.group_shares()
    assert shares["zh"] == pytest.approx(0.33) and shares["en"] == pytest.approx(0.536)
    assert sum(shares.values()) == pytest.approx(1.0)


def test_almr_one_needs_no_remainder_and_other_sources_only_validate():
    mixture = dict(GOOD, almr=1.0, remainder={})
    assert _load(mixture).data.mixture.almr == 1.0


def _with(**changes) -> dict:
    return {**GOOD, **changes}


def _source(index: int, **changes) -> dict:
    sources = [dict(s) for s in SOURCES]
    sources[index].update(changes)
    return _with(sources=sources)


INVALID = [
    (_with(almr=1.5), "data.mixture.almr"),
    (_with(almr=-0.1), "data.mixture.almr"),
    (_with(remainder={"en": 0.5, "code": 0.2}), "data.mixture.remainder"),
    (_with(remainder={"en": 0.8, "code": 0.2, "zh": 0.0}), "data.mixture.remainder.zh"),
    (_with(remainder={"en": 1.2, "code": -0.2}), "data.mixture.remainder.en"),
    (_with(remainder={"en": 0.7, "code": 0.2, "math": 0.1}), "data.mixture.remainder.math"),
    (_source(2, language="fr", domain=None), "data.mixture.sources[2]"),  # in no group
    (_with(sources=SOURCES[1:]), "data.mixture.almr"),  # nothing is zh
    (_with(sources=[]), "data.mixture.sources"),
    (_source(1, name="zh_web"), "data.mixture.sources[1].name"),
    (_source(0, name="zh web"), "data.mixture.sources[0].name"),
    (_source(2, weight=0), "data.mixture.sources[2].weight"),
    (_source(2, prefix="/data/python.bin"), "data.mixture.sources[2].prefix"),
    (_source(1, language=None), "data.mixture.sources[1].language"),
    ({k: v for k, v in GOOD.items() if k != "almr"}, "data.mixture.almr"),
]


@pytest.mark.parametrize("mixture,field", INVALID, ids=[f"{i}-{f}" for i, (_, f) in enumerate(INVALID)])
def test_invalid_mixture_names_the_field(mixture, field):
    with pytest.raises(ConfigError) as info:
        _load(mixture)
    assert str(info.value).startswith(field), str(info.value)


def test_paths_and_mixture_together_are_refused():
    with pytest.raises(ConfigError, match="^data.paths: give either"):
        load_recipe(TINY, mixture_overrides(GOOD)[1:])  # keeps the recipe's data.paths


def test_split_needs_a_training_part():
    with pytest.raises(ConfigError, match="^data.split"):
        _load(GOOD, ["data.split=0,50,50"])
