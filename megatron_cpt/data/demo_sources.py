"""The demo corpus's sources: real text shipped by Debian packages, and the Python stdlib.

Each source lists its files from the package's own dpkg file list, so the corpus does not depend on
what else is installed, and reads them into (document id, text) pairs in a fixed order.
"""

from __future__ import annotations

import gzip
import os
import re
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from megatron_cpt.data.roff_text import roff_to_text

DPKG_INFO = Path("/var/lib/dpkg/info")
FORTUNES = "/usr/share/games/fortunes/"
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
STDLIB_SKIP = {"test", "tests", "idle_test", "site-packages", "__pycache__"}


@dataclass(frozen=True)
class DemoSource:
    name: str  # output file stem
    lang: str  # "zh", "en" or "code"
    package: str | None  # Debian package; None for the Python standard library
    description: str
    wanted: Callable[[str], bool]  # which of the package's paths to read
    read: Callable[[Path], Iterator[tuple[str, str]]]  # file -> (doc id suffix, text)
    # A dpkg --path-include pattern covering those paths (re-includes them past a path-exclude).
    path_glob: str | None = None


def package_files(package: str, info_dir: Path = DPKG_INFO) -> list[str] | None:
    """Paths dpkg installed for ``package``; None when the package is not installed."""
    listing = info_dir / f"{package}.list"
    if not listing.is_file():
        return None
    return listing.read_text(encoding="utf-8").splitlines()


def source_files(source: DemoSource, info_dir: Path = DPKG_INFO) -> list[Path] | None:
    """Regular files of the source in sorted order (links skipped: they duplicate a page);
    None when its package is not installed."""
    if source.package is None:
        return stdlib_files()
    listed = package_files(source.package, info_dir)
    if listed is None:
        return None
    paths = (Path(p) for p in sorted(listed) if source.wanted(p))
    return [p for p in paths if p.is_file() and not p.is_symlink()]


def stdlib_files() -> list[Path]:
    """The standard library's .py files, without tests and without site-packages."""
    found: list[Path] = []
    for directory, subdirs, names in os.walk(sysconfig.get_paths()["stdlib"]):
        subdirs[:] = [d for d in subdirs if d not in STDLIB_SKIP]
        found += [Path(directory) / n for n in names if n.endswith(".py")]
    return sorted(p for p in found if p.is_file() and not p.is_symlink())


def read_fortunes(path: Path) -> Iterator[tuple[str, str]]:
    """A fortune file: entries separated by lines holding only '%'; colour escapes removed."""
    text = ANSI_ESCAPE.sub("", path.read_text(encoding="utf-8", errors="replace"))
    for number, entry in enumerate(re.split(r"^%\s*$", text, flags=re.M)):
        entry = entry.strip("\n").rstrip()
        if entry.strip():
            yield f"{path.name}:{number}", entry


def read_manpage(path: Path) -> Iterator[tuple[str, str]]:
    raw = gzip.open(path, "rb").read() if path.suffix == ".gz" else path.read_bytes()
    text = roff_to_text(raw.decode("utf-8", errors="replace"))
    if text:
        section = path.parent.name
        yield f"{section}/{path.name.removesuffix('.gz')}", text


def read_python(path: Path) -> Iterator[tuple[str, str]]:
    root = Path(sysconfig.get_paths()["stdlib"])
    text = path.read_text(encoding="utf-8", errors="replace")
    if text.strip():
        yield str(path.relative_to(root)), text


def _is_man_page(prefix: str) -> Callable[[str], bool]:
    return lambda p: p.startswith(prefix) and p.endswith(".gz")


def _is_fortune_file(names: set[str] | None) -> Callable[[str], bool]:
    def wanted(p: str) -> bool:
        name = p[len(FORTUNES):]
        return (p.startswith(FORTUNES) and "/" not in name and "." not in name and name != ""
                and (names is None or name in names))
    return wanted


ZH_MAN, EN_MAN = "/usr/share/man/zh_CN/man", "/usr/share/man/man"

DEMO_SOURCES = (
    DemoSource("zh_poetry", "zh", "fortunes-zh", "Tang 300 and Song 100 poems",
               _is_fortune_file({"tang300", "song100"}), read_fortunes, FORTUNES + "*"),
    DemoSource("zh_fortunes", "zh", "fortunes-zh", "Chinese sayings, classics and Debian texts",
               _is_fortune_file({"chinese"}), read_fortunes, FORTUNES + "*"),
    DemoSource("zh_manpages", "zh", "manpages-zh", "Chinese (zh_CN) manual pages as text",
               _is_man_page(ZH_MAN), read_manpage, ZH_MAN + "*"),
    DemoSource("en_fortunes", "en", "fortunes", "English fortune cookies",
               _is_fortune_file(None), read_fortunes, FORTUNES + "*"),
    DemoSource("en_manpages", "en", "manpages", "English Linux manual pages as text",
               _is_man_page(EN_MAN), read_manpage, EN_MAN + "*"),
    DemoSource("code_python", "code", None, "the Python standard library's source (no tests)",
               lambda p: True, read_python),
)
