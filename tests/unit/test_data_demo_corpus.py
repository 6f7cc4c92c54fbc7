"""data demo-corpus: real sources where their Debian packages are installed, clear reports
where they are not."""

from __future__ import annotations

import json
import re

import pytest

from megatron_cpt.cli import main
from megatron_cpt.errors import UserError
from megatron_cpt.data.demo_corpus import build_demo_corpus
from megatron_cpt.data.demo_sources import DEMO_SOURCES, DemoSource, package_files, source_files

PACKAGES = sorted({s.package for s in DEMO_SOURCES if s.package})
INSTALLED = [p for p in PACKAGES if package_files(p) is not None]
CJK = re.compile(r"[\u4e00-\u9fff]")


@pytest.mark.skipif(not INSTALLED, reason=f"none of {', '.join(PACKAGES)} is installed "
                    "(apt-get install -y --no-install-recommends " + " ".join(PACKAGES) + ")")
def test_demo_corpus_from_installed_packages(tmp_path, capsys):
    assert main(["data", "demo-corpus", str(tmp_path), "--max-docs", "3"]) == 0
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    built = {e["name"]: e for e in manifest["sources"]}
    expected = {s.name for s in DEMO_SOURCES if s.package is None or s.package in INSTALLED}
    assert set(built) == expected
    for source in DEMO_SOURCES:
        if source.name not in built:
            continue
        entry = built[source.name]
        records = [json.loads(line) for line in (tmp_path / entry["file"]).open(encoding="utf-8")]
        assert entry["lang"] == source.lang and entry["docs"] == len(records) == 3
        assert entry["bytes"] == sum(len(r["text"].encode()) for r in records)
        assert all(r["source"] == source.name and r["text"].strip() and r["id"] for r in records)
        text = "\n".join(r["text"] for r in records)
        if source.lang == "zh":
            assert len(CJK.findall(text)) > 20, source.name
        assert "\x1b[" not in text and "\\fB" not in text
        if source.name.endswith("manpages"):
            assert not re.search(r"^\.[A-Za-z]{1,2}\b", text, re.M)  # no roff requests left
    missing = {m["package"] for m in manifest["missing"]}
    assert missing == set(PACKAGES) - set(INSTALLED)


def _stdlib_and(package_source: DemoSource) -> tuple[DemoSource, ...]:
    stdlib = next(s for s in DEMO_SOURCES if s.package is None)
    return (package_source, stdlib)


def test_missing_package_is_named_with_its_install_command(tmp_path, capsys):
    sources = _stdlib_and(next(s for s in DEMO_SOURCES if s.package == "manpages-zh"))
    empty_dpkg = tmp_path / "dpkg"
    empty_dpkg.mkdir()
    assert build_demo_corpus(str(tmp_path / "out"), max_docs=2, sources=sources,
                             info_dir=empty_dpkg) == 0
    err = capsys.readouterr().err
    command = ("apt-get install -y --no-install-recommends "
               "-o 'Dpkg::Options::=--path-include=/usr/share/man/zh_CN/man*' manpages-zh")
    assert "missing sources: zh_manpages (manpages-zh)" in err
    assert f"install with: {command}" in err
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert [e["name"] for e in manifest["sources"]] == ["code_python"]
    assert manifest["install_missing"] == command
    with pytest.raises(UserError, match="manpages-zh"):
        build_demo_corpus(str(tmp_path / "out"), sources=sources, info_dir=empty_dpkg,
                          require_all=True)


def test_nothing_available_is_an_error(tmp_path, capsys):
    sources = tuple(s for s in DEMO_SOURCES if s.package)
    empty_dpkg = tmp_path / "dpkg"
    empty_dpkg.mkdir()
    with pytest.raises(UserError, match="apt-get install -y --no-install-recommends .* "
                       + " ".join(PACKAGES) + "$"):
        build_demo_corpus(str(tmp_path / "out"), sources=sources, info_dir=empty_dpkg)
    assert not (tmp_path / "out").exists()


def test_installed_package_with_excluded_files_is_reported(tmp_path, capsys):
    dpkg = tmp_path / "dpkg"
    dpkg.mkdir()
    (dpkg / "fortunes.list").write_text("/usr/share/games/fortunes/does-not-exist\n")
    source = next(s for s in DEMO_SOURCES if s.package == "fortunes")
    assert source_files(source, dpkg) == []
    build_demo_corpus(str(tmp_path / "out"), max_docs=1, sources=_stdlib_and(source), info_dir=dpkg)
    assert "package fortunes is installed but its files" in capsys.readouterr().err
