"""A real bilingual corpus without any hub: Debian packages plus the Python standard library.

    apt-get install -y --no-install-recommends fortunes-zh manpages-zh fortunes manpages
    megatron-cpt data demo-corpus corpus

Writes one JSONL per source (``{"text", "source", "id"}`` per line) and ``manifest.json`` listing each
source with its language tag (zh / en / code), document count and text bytes. Missing packages are
named with the command that installs them; what is available is still built.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path

from megatron_cpt.errors import UserError
from megatron_cpt.data.demo_sources import DEMO_SOURCES, DPKG_INFO, DemoSource, source_files


def install_command(packages: list[str]) -> str:
    return "apt-get install -y --no-install-recommends " + " ".join(packages)


def write_source(source: DemoSource, files: list[Path], out_dir: Path,
                 max_docs: int | None = None) -> dict:
    """Write OUT/<name>.jsonl atomically; returns its manifest entry."""
    target = out_dir / f"{source.name}.jsonl"
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    docs = text_bytes = 0
    try:
        with tmp.open("w", encoding="utf-8") as out:
            for path in files:
                if max_docs is not None and docs >= max_docs:
                    break
                for doc_id, text in source.read(path):
                    if max_docs is not None and docs >= max_docs:
                        break
                    record = {"text": text, "source": source.name, "id": doc_id}
                    out.write(json.dumps(record, ensure_ascii=False) + "\n")
                    docs += 1
                    text_bytes += len(text.encode("utf-8"))
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return {"name": source.name, "file": target.name, "lang": source.lang,
            "package": source.package or f"python{platform.python_version()} stdlib",
            "description": source.description, "files": len(files), "docs": docs,
            "bytes": text_bytes}


def build_demo_corpus(out: str, *, max_docs: int | None = None, require_all: bool = False,
                      sources: tuple[DemoSource, ...] = DEMO_SOURCES,
                      info_dir: Path = DPKG_INFO) -> int:
    """Build every source whose package is installed; returns the exit status (0 = built)."""
    if max_docs is not None and max_docs < 1:
        raise UserError(f"--max-docs: must be >= 1, got {max_docs}")
    available: list[tuple[DemoSource, list[Path]]] = []
    missing: list[DemoSource] = []
    for source in sources:
        files = source_files(source, info_dir)
        if files:
            available.append((source, files))
            continue
        missing.append(source)
        if files is not None:  # installed, yet nothing on disk: e.g. a dpkg path-exclude rule
            print(f"demo-corpus: package {source.package} is installed but its files for "
                  f"{source.name} are absent (excluded by /etc/dpkg/dpkg.cfg.d?)", file=sys.stderr)
    missing_packages = sorted({s.package for s in missing if s.package})
    if missing:
        names = ", ".join(f"{s.name} ({s.package})" for s in missing)
        print(f"demo-corpus: missing sources: {names}\n"
              f"  install with: {install_command(missing_packages)}", file=sys.stderr)
        if require_all or not available:
            raise UserError(f"sources missing: {names}; install with: "
                            f"{install_command(missing_packages)}")
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    entries = []
    for source, files in available:
        entry = write_source(source, files, out_dir, max_docs)
        entries.append(entry)
        print(f"{entry['file']:<20} {entry['lang']:<4} {entry['docs']:>7} docs "
              f"{entry['bytes'] / 1e6:8.2f} MB  ({entry['package']})")
    for source in missing:  # a stale file from an earlier build would contradict the manifest
        (out_dir / f"{source.name}.jsonl").unlink(missing_ok=True)
    manifest = {"sources": entries,
                "missing": [{"name": s.name, "package": s.package} for s in missing],
                "install_missing": install_command(missing_packages) if missing_packages else None,
                "max_docs": max_docs}
    manifest_text = json.dumps(manifest, indent=2, ensure_ascii=False) + "\n"
    (out_dir / "manifest.json").write_text(manifest_text, encoding="utf-8")
    print(f"wrote {out_dir}/manifest.json: {len(entries)} sources, "
          f"{sum(e['docs'] for e in entries)} docs")
    return 0
