"""Conversion runs on CPU ranks even where Transformer Engine is installed (the Dockerfile's image):
it builds megatron-core's local layers with SDPA, never a Transformer Engine layer, whose
constructor needs CUDA. ``tests/stubs/transformer_engine`` stands in for an installed TE: it
imports, and every attempt to build one of its layers fails and is logged."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))

from conversion_fixtures import make_hf_llama, parse_verify_line, run_cli  # noqa: E402

STUBS = TESTS / "stubs"


def _te_installed_env(log: Path) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(STUBS), os.environ.get("PYTHONPATH")) if p)
    return {"PYTHONPATH": path, "TE_STUB_LOG": str(log)}


def test_conversion_and_verify_build_no_transformer_engine_layer(tmp_path):
    log = tmp_path / "te_layers_built.log"
    env = _te_installed_env(log)
    # The stub is in effect: a training run would pick the Transformer Engine spec.
    probe = subprocess.run(
        [sys.executable, "-c", "from megatron_cpt.model.backend import resolve_attention_backend; "
                               "print(resolve_attention_backend('auto'))"],
        capture_output=True, text=True, env={**os.environ, **env}, timeout=120)
    assert probe.stdout.strip() == "te", probe.stderr[-2000:]

    hf = make_hf_llama(tmp_path / "hf", vocab=256, layers=2)
    ckpt = tmp_path / "ckpt"
    converted = run_cli("convert", "hf-to-mcore", "--hf-dir", str(hf), "--out-dir", str(ckpt),
                        "--dtype", "fp32", extra_env=env)
    assert converted.returncode == 0, (converted.stdout + converted.stderr)[-4000:]
    # A checkpoint of a run that trained with the Transformer Engine layers and FP8.
    meta_path = ckpt / "megatron_cpt.json"
    meta = json.loads(meta_path.read_text())
    meta["model"].update(attention_backend="te", dtype="bf16", fp8={"recipe": "delayed"})
    meta_path.write_text(json.dumps(meta))
    verified = run_cli("convert", "verify", "--hf-dir", str(hf), "--ckpt-dir", str(ckpt),
                       "--threshold", "1e-4", extra_env=env)
    output = verified.stdout + verified.stderr
    assert verified.returncode == 0, output[-4000:]
    assert parse_verify_line(output)["max_abs_diff"] < 1e-4
    assert not log.exists(), f"Transformer Engine layers were built: {log.read_text()[:500]}"
