"""A checkpoint without ``_extra_state`` (converted on a CPU node) loads into layers that ask for it
(Transformer Engine's FP8 state), and the reverse; the loaded weights are equal. See
check_extra_state.py for the layers used."""

import json
import os
import subprocess
import sys
from pathlib import Path

from harness import free_port


def test_extra_state_both_ways(tmp_path):
    script = Path(__file__).with_name("check_extra_state.py")
    proc = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True,
                          text=True, timeout=300, env=dict(os.environ, MASTER_PORT=str(free_port())))
    assert proc.returncode == 0, proc.stderr[-4000:]
    facts = json.loads(proc.stdout.strip().splitlines()[-1])
    # Two layers' core attention and the final norm carry extra state; the plain model has none.
    assert facts["fp8_model_extra_state_keys"] == 3
    assert facts["plain_model_extra_state_keys"] == 0
    assert facts["differ_before_load"]
    assert facts["mcore_plain_load_fails"]  # megatron-core alone cannot load it
    assert facts["plain_into_fp8_equal"] and facts["plain_into_fp8_fresh"]
    assert facts["fp8_into_plain_equal"]
    assert facts["fp8_into_fp8_equal"] and facts["fp8_into_fp8_state_restored"]
    assert "output_layer.weight" in facts["missing_weight_error"]
