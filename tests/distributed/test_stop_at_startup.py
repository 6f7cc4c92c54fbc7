"""A SIGTERM to the local launcher at any moment of its start (from when its handler is in place)
reaches every rank, which then stops as asked: for forked ranks and for torchrun's. A launcher
that installs its handler only after starting its ranks fails here: a SIGTERM while it forks its
ranks kills it and leaves the ranks running, and one before torchrun's ranks have their handlers
kills torchrun or a rank.

``stop_at_startup_host.py`` makes the launches (cheaply: the ranks only wait to be stopped) and
chooses the moments; a failure names the seed that chose them.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

from harness import kill_tree

HERE = Path(__file__).resolve().parent
FORKED_LAUNCHES = 30
TORCHRUN_LAUNCHES = 2


def test_a_sigterm_at_any_moment_of_the_start_stops_every_rank(tmp_path):
    seed = random.randrange(2**32)
    # torchrun's launches must not become forked ones: no CUDA_VISIBLE_DEVICES="" in the launcher.
    env = {name: value for name, value in os.environ.items() if name != "CUDA_VISIBLE_DEVICES"}
    proc = subprocess.Popen([sys.executable, str(HERE / "stop_at_startup_host.py"), str(tmp_path),
                             str(seed), str(FORKED_LAUNCHES), str(TORCHRUN_LAUNCHES)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            kill_tree(proc.pid)
            proc.wait()
    assert proc.returncode == 0, stderr[-3000:]
    launches = [json.loads(line) for line in stdout.splitlines()]
    assert len(launches) == FORKED_LAUNCHES + TORCHRUN_LAUNCHES, stderr[-3000:]
    failed = [launch for launch in launches
              if (launch["status"], launch["stopped"], launch["left_running"]) != (0, [0, 1], [])]
    assert not failed, f"seed {seed}, {len(failed)} of {len(launches)} launches:\n" + "\n".join(
        f"{launch['kind']} at {launch['moment']}: "
        f"{'hung' if launch['status'] is None else 'exit ' + str(launch['status'])}, ranks "
        f"stopped {launch['stopped']}, left running {launch['left_running']}, output ends "
        f"{launch['output'][-300:]!r}" for launch in failed)
