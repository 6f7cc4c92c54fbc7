"""SIGTERM to a local launch (``megatron-cpt train`` on one node) reaches the ranks without going
through torchrun, whose shutdown timeout (30 s, fixed before torch 2.11) would otherwise SIGKILL
them in the middle of their stop save. Here torchrun's timeout is 2 s and the ranks take 6 s."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def test_sigterm_lets_the_ranks_finish_their_save(tmp_path):
    launcher = ("import sys; from megatron_cpt.launch.local import run_local; "
                "sys.exit(run_local('slow_stop_worker', [sys.argv[1]], 2, "
                "env={'TORCH_ELASTIC_SHUTDOWN_TIMEOUT': '2'}))")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, "-c", launcher, str(tmp_path)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"started_{rank}").exists() for rank in (0, 1)):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()[-3000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode == 0, output[-3000:]
    assert (tmp_path / "saved_0").exists() and (tmp_path / "saved_1").exists(), output[-3000:]
