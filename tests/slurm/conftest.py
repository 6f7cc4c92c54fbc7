"""A real single-node Slurm cluster for the tests in this folder (one per session).

Skipped where Slurm's Debian packages or root are missing, unless MEGATRON_CPT_REQUIRE_SLURM=1
(set by .ci/run, which installs them): then a missing cluster fails the tests.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "distributed"))  # harness: run the CLI
from cluster import SlurmCluster, binaries_present  # noqa: E402


@pytest.fixture(scope="session")
def slurm():
    missing = None
    if not binaries_present():
        missing = "Slurm binaries (Debian: slurmctld slurmd slurm-client munge) are not installed"
    elif os.geteuid() != 0:
        missing = "the test cluster runs its daemons as root"
    if missing:
        if os.environ.get("MEGATRON_CPT_REQUIRE_SLURM") == "1":
            pytest.fail(missing)
        pytest.skip(missing)
    # munged wants every directory above its socket searchable by all: not pytest's 0700 tmp.
    root = Path(tempfile.mkdtemp(prefix="megatron-cpt-slurm-"))
    root.chmod(0o755)
    cluster = SlurmCluster(root).start()
    os.environ["SLURM_CONF"] = str(cluster.conf)  # sbatch/scontrol run by the code under test
    yield cluster
    cluster.stop()
    shutil.rmtree(root, ignore_errors=True)
