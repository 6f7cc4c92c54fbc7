"""`data demo-corpus --install-missing` (what `make demo` runs): as root with apt-get it installs
the missing Debian packages, otherwise it stops and prints the exact commands. The package check
reads a fake dpkg directory and the commands go to a recording runner: no package is touched."""

from __future__ import annotations

import json
import subprocess
from functools import partial
from pathlib import Path

import pytest

from megatron_cpt.data.demo_corpus import build_demo_corpus
from megatron_cpt.data.demo_packages import MissingSources, find_sources, install_missing
from megatron_cpt.data.demo_sources import DEMO_SOURCES, DemoSource
from megatron_cpt.errors import UserError

UPDATE = ["apt-get", "update", "-qq"]
INSTALL = ["apt-get", "install", "-y", "--no-install-recommends"]
INCLUDE_ALL = ["-o", "Dpkg::Options::=--path-include=/usr/share/games/fortunes/*",
               "-o", "Dpkg::Options::=--path-include=/usr/share/man/man*",
               "-o", "Dpkg::Options::=--path-include=/usr/share/man/zh_CN/man*"]


class RecordingRun:
    """Stands in for subprocess.run: records each command; ``effect`` may fake its result."""

    def __init__(self, effect=None, status: int = 0):
        self.commands: list[list[str]] = []
        self.envs: list[dict] = []
        self.effect, self.status = effect, status

    def __call__(self, command, env=None):
        self.commands.append(list(command))
        self.envs.append(env)
        if self.effect:
            self.effect(command)
        return subprocess.CompletedProcess(command, self.status)


@pytest.fixture()
def no_packages(tmp_path) -> Path:
    dpkg = tmp_path / "dpkg"
    dpkg.mkdir()
    return dpkg


def test_without_root_it_stops_with_the_exact_commands(no_packages, tmp_path):
    run = RecordingRun()
    installer = partial(install_missing, euid=1000, apt_get="/usr/bin/apt-get", run=run)
    with pytest.raises(UserError) as info:
        build_demo_corpus(str(tmp_path / "out"), require_all=True, info_dir=no_packages,
                          installer=installer)
    assert str(info.value) == (
        "sources missing: zh_poetry (fortunes-zh), zh_fortunes (fortunes-zh), zh_manpages "
        "(manpages-zh), en_fortunes (fortunes), en_manpages (manpages); install them as root: "
        "sudo apt-get update -qq && sudo apt-get install -y --no-install-recommends "
        "-o 'Dpkg::Options::=--path-include=/usr/share/games/fortunes/*' "
        "-o 'Dpkg::Options::=--path-include=/usr/share/man/man*' "
        "-o 'Dpkg::Options::=--path-include=/usr/share/man/zh_CN/man*' "
        "fortunes fortunes-zh manpages manpages-zh")
    assert run.commands == [] and not (tmp_path / "out").exists()


def test_without_apt_get_it_says_so(no_packages):
    _, missing = find_sources(DEMO_SOURCES, no_packages)
    with pytest.raises(UserError, match="this machine has no apt-get$"):
        install_missing(missing, euid=0, apt_get=None, run=RecordingRun())


def test_as_root_it_runs_apt_get_for_the_missing_packages(no_packages):
    _, missing = find_sources(DEMO_SOURCES, no_packages)
    run = RecordingRun()
    install_missing(missing, euid=0, apt_get="/usr/bin/apt-get", run=run)
    assert run.commands == [
        UPDATE, [*INSTALL, *INCLUDE_ALL, "fortunes", "fortunes-zh", "manpages", "manpages-zh"]]
    assert all(env["DEBIAN_FRONTEND"] == "noninteractive" for env in run.envs)


def test_a_failing_apt_get_is_a_user_error(no_packages):
    _, missing = find_sources(DEMO_SOURCES, no_packages)
    with pytest.raises(UserError, match=r"^`apt-get update -qq` failed with exit status 100$"):
        install_missing(missing, euid=0, apt_get="/usr/bin/apt-get", run=RecordingRun(status=100))


def test_excluded_files_are_reinstalled_with_a_path_include(no_packages):
    # Installed (dpkg lists it), yet its pages are not on disk: a dpkg path-exclude rule.
    (no_packages / "manpages-zh.list").write_text("/usr/share/man/zh_CN/man1/absent.1.gz\n")
    source = next(s for s in DEMO_SOURCES if s.package == "manpages-zh")
    _, missing = find_sources((source,), no_packages)
    assert missing == MissingSources(files_absent=(source,))
    assert missing.install_commands() == [[
        *INSTALL, "--reinstall", "-o", "Dpkg::Options::=--path-include=/usr/share/man/zh_CN/man*",
        "manpages-zh"]]


def test_after_installing_the_corpus_is_built(no_packages, tmp_path):
    """The full root path: missing -> apt-get (faked: it writes the dpkg file list and the file)
    -> checked again -> built."""
    page = tmp_path / "files" / "poem.txt"
    source = DemoSource("zh_fake", "zh", "fake-poems", "a fake package", lambda p: True,
                        lambda path: iter([("1", path.read_text(encoding="utf-8"))]))

    def fake_install(command):
        if command[:2] == ["apt-get", "install"]:
            page.parent.mkdir()
            page.write_text("床前明月光", encoding="utf-8")
            (no_packages / "fake-poems.list").write_text(f"{page}\n")

    run = RecordingRun(fake_install)
    out = tmp_path / "out"
    assert build_demo_corpus(str(out), require_all=True, sources=(source,), info_dir=no_packages,
                             installer=partial(install_missing, euid=0, apt_get="apt-get",
                                               run=run)) == 0
    assert run.commands == [UPDATE, [*INSTALL, "fake-poems"]]
    assert json.loads((out / "zh_fake.jsonl").read_text(encoding="utf-8"))["text"] == "床前明月光"
    assert json.loads((out / "manifest.json").read_text())["missing"] == []
