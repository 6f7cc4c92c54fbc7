"""A small bilingual chat set built offline from the demo corpus's manual pages.

    megatron-cpt data demo-chat outputs/demo/corpus --output outputs/demo/chat/man_qa.jsonl

Every English and Chinese manual page whose NAME section reads ``name[, name...] - what it does``
gives one conversation: the user asks what the first name is, in the page's language, and the
assistant answers with the page's NAME line (whitespace tidied). Pages are taken in corpus order,
at most ``--per-language`` of each language, one per name and language, so the set is small
enough for a tiny model to learn by heart in the demo. JSONL in the ``messages`` layout.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

from megatron_cpt.errors import UserError
from megatron_cpt.files import write_atomic

SOURCES = {"en": "en_manpages.jsonl", "zh": "zh_manpages.jsonl"}
QUESTIONS = {"en": "What is {name}?", "zh": "{name} 是什么？"}
# "NAME", "名称", "NAME(名称)", "名称 (NAME)": the section heading the corpus's pages start with.
_HEADING = re.compile(r"^\s*(NAME|名称)")
_NAME_LINE = re.compile(r"^(?P<names>[^\s-][^\n]*?)\s+-{1,2}\s+(?P<what>\S.*)$")


@dataclass(frozen=True)
class ManEntry:
    language: str
    name: str
    answer: str  # the tidied NAME line

    @property
    def question(self) -> str:
        return QUESTIONS[self.language].format(name=self.name)

    def conversation(self) -> dict:
        return {"messages": [{"role": "user", "content": self.question},
                             {"role": "assistant", "content": self.answer}],
                "language": self.language}


def name_line_entry(text: str, language: str) -> Optional[ManEntry]:
    """The entry of one page's text, or None when it has no ``name - what`` NAME line."""
    lines = text.split("\n")
    if not lines or not _HEADING.match(lines[0]):
        return None
    first = next((line.strip() for line in lines[1:] if line.strip()), "")
    match = _NAME_LINE.match(first)
    if match is None:
        return None
    names = " ".join(match.group("names").split())
    what = " ".join(match.group("what").split())
    return ManEntry(language, names.split(",")[0].strip(), f"{names} - {what}")


def manual_entries(corpus: Path, language: str) -> Iterator[ManEntry]:
    path = corpus / SOURCES[language]
    if not path.is_file():
        raise UserError(f"{path}: not found; build the corpus with `megatron-cpt data demo-corpus "
                        f"{corpus}`")
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            entry = name_line_entry(json.loads(line)["text"], language)
            if entry is not None:
                yield entry


def build_demo_chat(corpus: str | Path, output: str | Path, per_language: int = 24) -> list[ManEntry]:
    """Write the chat set; returns its entries (English first, then Chinese)."""
    if per_language < 1:
        raise UserError(f"--per-language: must be >= 1, got {per_language}")
    entries: list[ManEntry] = []
    for language in SOURCES:
        seen: set[str] = set()
        for entry in manual_entries(Path(corpus), language):
            if entry.name not in seen:
                seen.add(entry.name)
                entries.append(entry)
            if len(seen) == per_language:
                break
    text = "".join(json.dumps(e.conversation(), ensure_ascii=False) + "\n" for e in entries)
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    write_atomic(Path(output), text)
    return entries
