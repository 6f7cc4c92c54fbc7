"""``model.dtype: fp16`` trains: the schedules scale each loss by the optimizer's dynamic loss scale
(megatron-core's ``grad_scale_func``) before its backward pass, so the first applied fp16 update is
the fp32 one; without it the optimizer divided unscaled gradients by 2**32 and fp16 updates were a
thousand times too small."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def test_first_fp16_update_matches_fp32(tmp_path):
    out = tmp_path / "updates.json"
    script = Path(__file__).with_name("fp16_first_update.py")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=1",
         str(script), str(out)],
        capture_output=True, text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-4000:]
    updates = json.loads(out.read_text())
    fp32, fp16 = updates["fp32"], updates["fp16"]
    assert fp32["skipped"] == 0
    # The scale starts at 2**32: the first tries overflow and are skipped while it backs off.
    assert fp16["skipped"] > 0
    # Adam's first step moves each weight by about lr; fp16 as much as fp32.
    assert 0.3 * fp32["lr"] < fp32["mean_abs_update"] < fp32["lr"]
    assert abs(fp16["mean_abs_update"] - fp32["mean_abs_update"]) < 0.01 * fp32["mean_abs_update"]
