"""A rank whose stop takes longer than torchrun's shutdown timeout: on SIGTERM it "saves" for
SAVE_S seconds, then writes OUT_DIR/saved_<rank> and exits 0. It writes OUT_DIR/started_<rank> once
its handler is in place and it takes SIGTERM (ranks of a local launch start with it blocked).

    python -m slow_stop_worker OUT_DIR   (one rank of torchrun)
"""

import os
import signal
import sys
import time
from pathlib import Path

from megatron_cpt.process_lifetime import unblock_sigterm

SAVE_S = 3


def main(out_dir: str) -> int:
    stop = []
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.append(signum))
    unblock_sigterm()
    rank = os.environ["RANK"]
    Path(out_dir, f"started_{rank}").touch()
    deadline = time.monotonic() + 120
    while not stop and time.monotonic() < deadline:
        time.sleep(0.05)
    if not stop:
        return 1
    time.sleep(SAVE_S)
    Path(out_dir, f"saved_{rank}").touch()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
