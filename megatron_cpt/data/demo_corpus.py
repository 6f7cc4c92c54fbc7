"""A real bilingual corpus without any hub: Debian packages plus the Python standard library.

    megatron-cpt data demo-corpus corpus --install-missing   # as root: apt-get installs the packages
    megatron-cpt data demo-corpus corpus                     # builds what is there, names the rest

Writes one JSONL per source (``{"text", "source", "id"}`` per line) and ``manifest.json`` listing each
source with its language tag (zh / en / code), document count and text bytes. Missing packages are
named with the command that installs them; what is available is still built (demo_packages.py).
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
from pathlib import Path
from typing import Callable

from megatron_cpt.errors import UserError
from megatron_cpt.data.demo_packages import MissingSources, find_sources
from megatron_cpt.data.demo_sources import DEMO_SOURCES, DPKG_INFO, DemoSource


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
                      sources: tuple[DemoSource, ...] = DEMO_SOURCES, info_dir: Path = DPKG_INFO,
                      installer: Callable[[MissingSources], None] | None = None) -> int:
    """Build every source whose package is installed; returns the exit status (0 = built).
    ``installer`` (``install_missing`` for ``--install-missing``) is called first when any
    source is missing."""
    if max_docs is not None and max_docs < 1:
        raise UserError(f"--max-docs: must be >= 1, got {max_docs}")
    available, missing = find_sources(sources, info_dir)
    if missing and installer is not None:
        installer(missing)
        available, missing = find_sources(sources, info_dir)
    for source in missing.files_absent:
        print(f"demo-corpus: package {source.package} is installed but its files for "
              f"{source.name} are absent (excluded by /etc/dpkg/dpkg.cfg.d?)", file=sys.stderr)
    fix = " && ".join(shlex.join(command) for command in missing.install_commands())
    if missing:
        print(f"demo-corpus: missing sources: {missing.describe()}\n  install with: {fix}",
              file=sys.stderr)
        if require_all or not available:
            raise UserError(f"sources missing: {missing.describe()}; install with: {fix}")
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    entries = []
    for source, files in available:
        entry = write_source(source, files, out_dir, max_docs)
        entries.append(entry)
        print(f"{entry['file']:<20} {entry['lang']:<4} {entry['docs']:>7} docs "
              f"{entry['bytes'] / 1e6:8.2f} MB  ({entry['package']})")
    for source in missing.sources:  # a stale file from an earlier build would contradict the manifest
        (out_dir / f"{source.name}.jsonl").unlink(missing_ok=True)
    manifest = {"sources": entries,
                "missing": [{"name": s.name, "package": s.package} for s in missing.sources],
                "install_missing": fix or None,
                "max_docs": max_docs}
    manifest_text = json.dumps(manifest, indent=2, ensure_ascii=False) + "\n"
    (out_dir / "manifest.json").write_text(manifest_text, encoding="utf-8")
    print(f"wrote {out_dir}/manifest.json: {len(entries)} sources, "
          f"{sum(e['docs'] for e in entries)} docs")
    return 0
