"""SIGTERM to a local launch (``megatron-cpt train`` on one node) reaches the ranks without going
through torchrun, whose shutdown timeout (30 s, fixed before torch 2.11) would otherwise SIGKILL
them in the middle of their stop save. Here torchrun's timeout is 1 s and the ranks take 3 s."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from harness import kill_tree

HERE = Path(__file__).resolve().parent


def test_sigterm_lets_the_ranks_finish_their_save(tmp_path):
    launcher = ("import sys; from megatron_cpt.launch.local import run_local; "
                "sys.exit(run_local('slow_stop_worker', [sys.argv[1]], 2, "
                "env={'TORCH_ELASTIC_SHUTDOWN_TIMEOUT': '1'}))")
    # Through torchrun, whatever an earlier test left in this process's environment: with
    # CUDA_VISIBLE_DEVICES="" the ranks would be forked instead.
    env = {name: value for name, value in os.environ.items() if name != "CUDA_VISIBLE_DEVICES"}
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])
    log_path = tmp_path / "log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-c", launcher, str(tmp_path)], env=env,
                                stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while not all((tmp_path / f"started_{rank}").exists() for rank in (0, 1)):
            assert proc.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, "the ranks did not start within 120 s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            kill_tree(proc.pid)
            proc.wait()
    output = log_path.read_text()
    assert proc.returncode == 0, output[-3000:]
    assert (tmp_path / "saved_0").exists() and (tmp_path / "saved_1").exists(), output[-3000:]
