"""A rank that starts as the training worker does (``StopRequests.install`` first thing, then
``run_rank``) and then only waits to be stopped: on SIGTERM it writes OUT_DIR/stopped_<rank> and
exits 0; never asked to stop, it gives up after WAIT_S seconds with status 1.

    python -m stop_at_startup_worker OUT_DIR   (one rank of run_local)
"""

import os
import sys
import time
from pathlib import Path

from megatron_cpt.launch.local import run_rank
from megatron_cpt.train.preemption import StopRequests

WAIT_S = 90


def _wait_for_stop(stops: StopRequests, out_dir: Path) -> int:
    deadline = time.monotonic() + WAIT_S
    while stops.signal_name is None:
        if time.monotonic() > deadline:
            return 1
        time.sleep(0.01)
    (out_dir / f"stopped_{os.environ['RANK']}").touch()
    return 0


def main(out_dir: str) -> int:
    stops = StopRequests()
    stops.install()
    return run_rank(lambda: _wait_for_stop(stops, Path(out_dir)), "test")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
