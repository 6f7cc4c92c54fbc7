"""The Debian packages behind the demo corpus: which sources miss theirs, and installing them.

    megatron-cpt data demo-corpus corpus --install-missing      # what `make demo` runs

A source is available when the files its package installed (dpkg's own file list) are on disk. A
package can be missing in two ways: not installed, or installed with those files left out by a dpkg
``path-exclude`` rule (slim container images drop /usr/share/man). As root with apt-get,
``install_missing`` runs ``apt-get install`` for the first and ``apt-get install --reinstall`` for
the second, both with a dpkg ``--path-include`` of the sources' files (it overrides an earlier
path-exclude and does nothing otherwise). Anyone else gets the exact commands to run. ``euid``, ``apt_get`` and ``run`` are parameters so that tests exercise both paths without
touching the machine's packages.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from megatron_cpt.errors import UserError
from megatron_cpt.data.demo_sources import DPKG_INFO, DemoSource, source_files

APT_INSTALL = ("apt-get", "install", "-y", "--no-install-recommends")
APT_UPDATE = ("apt-get", "update", "-qq")


@dataclass(frozen=True)
class MissingSources:
    not_installed: tuple[DemoSource, ...] = ()
    files_absent: tuple[DemoSource, ...] = ()  # installed, yet their files are not on disk

    @property
    def sources(self) -> tuple[DemoSource, ...]:
        return self.not_installed + self.files_absent

    def __bool__(self) -> bool:
        return bool(self.sources)

    def describe(self) -> str:
        return ", ".join(f"{s.name} ({s.package})" for s in self.sources)

    def install_commands(self) -> list[list[str]]:
        """The apt-get commands that make every source available (without ``apt-get update``).
        Each re-includes the sources' files for dpkg, in case a path-exclude rule drops them."""
        commands = []
        for extra, sources in (([], self.not_installed), (["--reinstall"], self.files_absent)):
            if sources:
                globs = sorted({s.path_glob for s in sources if s.path_glob})
                options = [arg for glob in globs
                           for arg in ("-o", f"Dpkg::Options::=--path-include={glob}")]
                commands.append([*APT_INSTALL, *extra, *options, *_packages(sources)])
        return commands


def _packages(sources: Sequence[DemoSource]) -> list[str]:
    return sorted({s.package for s in sources if s.package})


def find_sources(sources: Sequence[DemoSource], info_dir: Path = DPKG_INFO
                 ) -> tuple[list[tuple[DemoSource, list[Path]]], MissingSources]:
    """(available sources with their files, the missing ones)."""
    available, not_installed, files_absent = [], [], []
    for source in sources:
        files = source_files(source, info_dir)
        if files:
            available.append((source, files))
        elif files is None:
            not_installed.append(source)
        else:
            files_absent.append(source)
    return available, MissingSources(tuple(not_installed), tuple(files_absent))


def install_missing(missing: MissingSources, *, euid: int | None = None,
                    apt_get: str | None = None, run: Callable = subprocess.run) -> None:
    """Run the apt-get commands as root; otherwise raise a UserError that shows them."""
    commands = [list(APT_UPDATE), *missing.install_commands()]
    if apt_get is None:
        raise UserError(f"sources missing: {missing.describe()}; they come from Debian packages "
                        f"({' '.join(_packages(missing.sources))}) and this machine has no apt-get")
    if euid != 0:
        shown = " && ".join("sudo " + shlex.join(command) for command in commands)
        raise UserError(f"sources missing: {missing.describe()}; install them as root: {shown}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for command in commands:
        print(f"demo-corpus: {shlex.join(command)}", file=sys.stderr, flush=True)
        result = run(command, env=env)
        if result.returncode != 0:
            raise UserError(f"`{shlex.join(command)}` failed with exit status {result.returncode}")
