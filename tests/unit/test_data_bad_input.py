"""data prepare on bad input: exit 2, one message naming file:line (or the field / tokenizer),
and no .bin/.idx (final or temporary) left behind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from data_fixtures import build_hf_tokenizer, many_docs, write_jsonl

from megatron_cpt.cli import main


@pytest.fixture(scope="module")
def hf_spec(tmp_path_factory) -> str:
    return f"hf:{build_hf_tokenizer(tmp_path_factory.mktemp('tok') / 'tok')}"


def _good_lines(count: int) -> bytes:
    return b"".join(json.dumps({"text": t}).encode() + b"\n" for t in many_docs(count))


# name -> (file name, file bytes, expected message with {path})
CASES = {
    "empty file": ("a.jsonl", b"", "{path}: empty file (no documents)"),
    "only blank lines": ("a.txt", b"\n  \n\n", "{path}: empty file (no documents)"),
    "invalid JSON line": ("a.jsonl", _good_lines(2) + b'{"text": "x",,}\n',
                          "{path}:3: invalid JSON"),
    "missing text field": ("a.jsonl", _good_lines(1) + b'{"body": "x", "id": 1}\n',
                           "{path}:2: missing field 'text' (fields: body, id)"),
    "text not a string": ("a.jsonl", b'{"text": 42}\n', "{path}:1: field 'text' is int"),
    "not an object": ("a.jsonl", b'["text"]\n', "{path}:1: expected a JSON object, got list"),
    "non-UTF-8 in JSONL": ("a.jsonl", _good_lines(3) + b'{"text": "caf\xe9"}\n',
                           "{path}:4: not valid UTF-8 (byte 0xe9 at column 14)"),
    "non-UTF-8 in a paragraph": ("a.txt", b"fine\n\nline one\nline \xff two\n",
                                 "{path}:4: not valid UTF-8 (byte 0xff at column 6)"),
    "all texts empty": ("a.jsonl", b'{"text": ""}\n', "{path}: no non-empty documents"),
    "unknown format": ("a.csv", b"text\nhello\n", "{path}: unknown input format"),
}


def _run(tmp_path: Path, inputs: list[str], spec: str, *extra: str) -> tuple[int, Path]:
    out = tmp_path / "out"
    code = main(["data", "prepare", "--input", *inputs, "--output-prefix", str(out / "ds"),
                 "--tokenizer", spec, "--no-progress", *extra])
    return code, out


def _leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.glob("*")) if out.exists() else []


@pytest.mark.parametrize("case", CASES)
def test_bad_input_file(tmp_path, hf_spec, capsys, case):
    name, content, message = CASES[case]
    good = write_jsonl(tmp_path / "good.jsonl", many_docs(5))
    bad = tmp_path / name
    bad.write_bytes(content)
    code, out = _run(tmp_path, [str(good), str(bad)], hf_spec)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("megatron-cpt data: error: ") and "\n" not in err
    assert message.format(path=bad) in err
    assert _leftovers(out) == []


@pytest.mark.parametrize("workers", [1, 2])
def test_error_late_in_a_long_run_leaves_nothing(tmp_path, hf_spec, capsys, workers):
    """The bad line sits after many chunks were already written to the temporary .bin."""
    bad = tmp_path / "a.jsonl"
    bad.write_bytes(_good_lines(3000) + b"{oops\n" + _good_lines(10))
    code, out = _run(tmp_path, [str(bad)], hf_spec, "--workers", str(workers))
    assert code == 2
    assert f"{bad}:3001: invalid JSON" in capsys.readouterr().err
    assert _leftovers(out) == []


def test_unknown_tokenizer(tmp_path, capsys):
    good = write_jsonl(tmp_path / "good.jsonl", many_docs(5))
    code, out = _run(tmp_path, [str(good)], "bpe:gpt2")
    assert code == 2
    assert "tokenizer 'bpe:gpt2': unknown backend 'bpe'" in capsys.readouterr().err
    assert _leftovers(out) == []


def test_missing_input_file(tmp_path, hf_spec, capsys):
    code, out = _run(tmp_path, [str(tmp_path / "nope.jsonl")], hf_spec)
    assert code == 2
    assert f"{tmp_path / 'nope.jsonl'}: input file not found" in capsys.readouterr().err
    assert _leftovers(out) == []


def test_failed_rerun_keeps_the_previous_output(tmp_path, hf_spec):
    good = write_jsonl(tmp_path / "good.jsonl", many_docs(5))
    assert _run(tmp_path, [str(good)], hf_spec)[0] == 0
    before = (tmp_path / "out" / "ds.bin").read_bytes()
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b"{oops\n")
    code, out = _run(tmp_path, [str(bad)], hf_spec, "--force")
    assert code == 2
    assert _leftovers(out) == ["ds.bin", "ds.idx", "ds.stats.json"]
    assert (out / "ds.bin").read_bytes() == before
