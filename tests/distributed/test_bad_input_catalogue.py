"""A catalogue of bad inputs across `train`, `convert` and `data`, run as a user runs them: each gives
exit status 2, exactly one line on stderr (``megatron-cpt VERB: error: ...`` naming the field or file),
no traceback, and no partial output. Initial weights are checked before any rank starts; an error
that only a rank can see (a corrupt file inside a checkpoint) reaches the user the same way, once.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conversion_fixtures import make_hf_llama, write_tiny_tokenizer
from harness import TINY_RECIPE
from token_fixtures import byte_run_overrides


def _truncate(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


def _damaged_copy(source: Path, target: Path, damage) -> Path:
    shutil.copytree(source, target)
    damage(target)
    return target


@pytest.fixture(scope="module")
def world(tmp_path_factory, byte_data, tiny_initial_weights):
    root = tmp_path_factory.mktemp("catalogue")
    train_args = byte_run_overrides(byte_data, steps=2, global_batch_size=8, micro_batch_size=2,
                                    seq_length=128)
    init = tiny_initial_weights  # read only: the damaged ones are copies
    biggest_shard = lambda d: max(d.glob("*.distcp"), key=lambda p: p.stat().st_size)  # noqa: E731
    hf = make_hf_llama(root / "hf")
    hf_shard = lambda d: sorted(d.glob("*.safetensors"))[1]  # noqa: E731
    (root / "corpus.jsonl").write_text('{"text": "w3 w4 w5"}\n')
    (root / "big_tokenizer").mkdir()
    write_tiny_tokenizer(root / "big_tokenizer", 5000)  # more tokens than the tiny model has
    # A corpus tokenized with that tokenizer (its stats record the vocabulary).
    subprocess.run([sys.executable, "-m", "megatron_cpt", "data", "prepare", "--input",
                    str(root / "corpus.jsonl"), "--output-prefix", str(root / "big_vocab_tokens"),
                    "--tokenizer", f"hf:{root / 'big_tokenizer'}", "--no-progress"], check=True,
                   capture_output=True, timeout=300)
    return {
        "root": root, "train": train_args, "init": init, "hf": hf,
        "init_incomplete": _damaged_copy(init, root / "init_incomplete",
                                         lambda d: (d / "megatron_cpt.json").unlink()),
        "init_truncated": _damaged_copy(init, root / "init_truncated",
                                        lambda d: _truncate(biggest_shard(d))),
        "init_corrupt": _damaged_copy(init, root / "init_corrupt",
                                      lambda d: _overwrite(d / "common.pt", os.urandom(300))),
        "hf_truncated": _damaged_copy(hf, root / "hf_truncated", lambda d: _truncate(hf_shard(d))),
        "hf_garbage": _damaged_copy(hf, root / "hf_garbage",
                                    lambda d: hf_shard(d).write_bytes(b"\x10" + os.urandom(400))),
        "hf_no_config": _damaged_copy(hf, root / "hf_no_config",
                                      lambda d: (d / "config.json").unlink()),
    }


def _overwrite(path: Path, data: bytes) -> None:
    # megatron-core 0.19 keeps the common state in the shards: no common.pt to damage there.
    assert path.is_file(), f"{path.name} is not written by this megatron-core"
    path.write_bytes(data)


def _train(w, name, *overrides):
    run_dir = w["root"] / "runs" / name
    return ["train", str(TINY_RECIPE), *w["train"], f"logging.run_dir={run_dir}", *overrides], [run_dir]


def _hf_to_mcore(w, name, hf_dir, *extra):
    out = w["root"] / "out" / name
    return (["convert", "hf-to-mcore", "--hf-dir", str(hf_dir), "--out-dir", str(out), *extra],
            [out, out.with_name(name + ".tmp")])


def _mcore_to_hf(w, name, ckpt, *extra):
    out = w["root"] / "out" / name
    return (["convert", "mcore-to-hf", "--ckpt-dir", str(ckpt), "--out-dir", str(out), *extra],
            [out, out.with_name(name + ".tmp")])


def _prepare(w, name, inputs, tokenizer):
    prefix = w["root"] / "out" / name
    return (["data", "prepare", "--input", str(inputs), "--output-prefix", str(prefix),
             "--tokenizer", tokenizer],
            [prefix.with_suffix(".bin"), prefix.with_suffix(".idx")])


# name -> (builder of (argv, paths that must not exist afterwards), text the message must hold)
CASES = {
    "unknown recipe field": (lambda w, n: _train(w, n, "parallel.tpp=2"), "parallel.tpp"),
    "context parallelism": (lambda w, n: _train(w, n, "parallel.cp=2", "parallel.tp=1"),
                            "parallel.cp"),
    "data files missing": (lambda w, n: _train(w, n, "data.paths=[/nonexistent/tokens]"),
                           "/nonexistent/tokens"),
    "data from another tokenizer": (lambda w, n: _train(
        w, n, f"data.paths=[{w['root'] / 'big_vocab_tokens'}]", "data.eod_token_id=2"),
        "smaller than the vocabulary (5000)"),
    "initial weights missing": (lambda w, n: _train(w, n, "checkpoint.pretrained=/nonexistent/ckpt"),
                                "no such directory"),
    "initial weights incomplete": (lambda w, n: _train(
        w, n, f"checkpoint.pretrained={w['init_incomplete']}"), "incomplete"),
    "initial weights of another width": (lambda w, n: _train(
        w, n, f"checkpoint.pretrained={w['init']}", "model.hidden_size=128",
        "model.ffn_hidden_size=384"), "model.hidden_size is 128 in the recipe but 64"),
    "initial weights of another vocabulary": (lambda w, n: _train(
        w, n, f"checkpoint.pretrained={w['init']}", "model.vocab_size=2000"),
        "model.vocab_size is 2000 in the recipe but"),
    "initial weights with a truncated shard": (lambda w, n: _train(
        w, n, f"checkpoint.pretrained={w['init_truncated']}"), "is truncated"),
    "initial weights with a corrupt file (seen by the ranks)": (lambda w, n: _train(
        w, n, f"checkpoint.pretrained={w['init_corrupt']}"), "corrupt"),
    "truncated safetensors": (lambda w, n: _hf_to_mcore(w, n, w["hf_truncated"]), "truncated"),
    "not safetensors": (lambda w, n: _hf_to_mcore(w, n, w["hf_garbage"]), "not a safetensors file"),
    "no config.json": (lambda w, n: _hf_to_mcore(w, n, w["hf_no_config"]), "config.json"),
    "tp does not divide the heads": (lambda w, n: _hf_to_mcore(w, n, w["hf"], "--tp", "3"),
                                     "--tp/--pp/--vpp"),
    "export of a missing checkpoint": (lambda w, n: _mcore_to_hf(w, n, "/nonexistent/ckpt"),
                                       "no such directory"),
    "export of a truncated checkpoint shard": (lambda w, n: _mcore_to_hf(w, n, w["init_truncated"]),
                                               "is truncated"),
    "export with a tokenizer larger than the model": (lambda w, n: _mcore_to_hf(
        w, n, w["init"], "--tokenizer-from", str(w["root"] / "big_tokenizer")), "5000 tokens"),
    "verify against truncated safetensors": (lambda w, n: (
        ["convert", "verify", "--hf-dir", str(w["hf_truncated"]), "--ckpt-dir", str(w["init"])], []),
        "truncated"),
    "corpus missing": (lambda w, n: _prepare(w, n, "/nonexistent/corpus.jsonl",
                                             f"hf:{w['hf']}"), "/nonexistent/corpus.jsonl"),
    "tokenizer that is not one": (lambda w, n: _prepare(w, n, w["root"] / "corpus.jsonl",
                                                        f"sp:{w['root'] / 'corpus.jsonl'}"),
                                  "tokenizer 'sp:"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_and_exit_2(world, case):
    build, expected = CASES[case]
    argv, must_not_exist = build(world, case.replace(" ", "_"))
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK")}
    proc = subprocess.run([sys.executable, "-m", "megatron_cpt", *argv], capture_output=True,
                          text=True, timeout=300, env=env)
    verb = argv[0]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith(f"megatron-cpt {verb}: error: "), proc.stderr
    assert expected in lines[0], lines[0]
    assert "Traceback" not in proc.stdout + proc.stderr
    for path in must_not_exist:
        assert not Path(path).exists(), f"partial output left: {path}"

