"""write_atomic: the whole content or the previous file, never a part, and no temporary left."""

from __future__ import annotations

import os
import stat

import pytest

from megatron_cpt import files
from megatron_cpt.files import write_atomic


def test_text_bytes_and_mode(tmp_path):
    script = write_atomic(tmp_path / "job.sbatch", "#!/bin/bash\necho 床\n", mode=0o755)
    assert script.read_text(encoding="utf-8") == "#!/bin/bash\necho 床\n"
    assert stat.S_IMODE(script.stat().st_mode) == 0o755
    write_atomic(tmp_path / "model.bin", b"\x00\xff")
    assert (tmp_path / "model.bin").read_bytes() == b"\x00\xff"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job.sbatch", "model.bin"]


def test_a_failed_rename_keeps_the_previous_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "sweep.json"
    target.write_text("old")

    def fail(src, dst):
        assert os.path.basename(src) == f".sweep.json.tmp{os.getpid()}"
        assert open(src).read() == "new"
        raise OSError("disk full")

    monkeypatch.setattr(files.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        write_atomic(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["sweep.json"]
