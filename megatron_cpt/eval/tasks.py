"""Multiple-choice items, read from benchmark releases as they are laid out (docs/EVAL.md).

    task = load_task(EvalTaskConfig(format="ceval", path="data/ceval-exam", shots=5))
    task.items[0]            # Item(subject="accountant", question=..., choices=(...), answer=2)

| format | files | columns |
|---|---|---|
| ceval | ``DIR/{dev,val,test}/SUBJECT_SPLIT.csv`` | header ``id,question,A,B,C,D,answer[,explanation]`` |
| cmmlu | ``DIR/{dev,test}/SUBJECT.csv`` | header ``,Question,A,B,C,D,Answer`` |
| mmlu | ``DIR/{dev,val,test}/SUBJECT_SPLIT.csv`` | no header: question, A, B, C, D, answer |
| jsonl | ``FILE``, or ``DIR/SPLIT.jsonl`` | ``{"question", "choices": [...], "answer": index, "subject"?}`` |

A task folder may hold ``subject_mapping.json`` (C-Eval's ``{subject: [English, Chinese,
category]}``, or ``{subject: title}``): the prompts then name each subject by its title.
Every defect is a ``UserError`` naming the file (and row) and what was expected.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

from megatron_cpt.config.eval import FORMATS, EvalTaskConfig
from megatron_cpt.errors import UserError

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
NO_SUBJECT = "all"  # jsonl items without a subject
# Column names of the CSV formats with a header: question, the four choices, the answer letter.
HEADER_COLUMNS = {"ceval": ("question", "A", "B", "C", "D", "answer"),
                  "cmmlu": ("Question", "A", "B", "C", "D", "Answer")}
MAPPING_FILE = "subject_mapping.json"


@dataclass(frozen=True)
class Item:
    subject: str
    question: str
    choices: tuple[str, ...]
    answer: int  # index into choices
    source: str  # FILE:ROW, for messages


@dataclass(frozen=True)
class Task:
    config: EvalTaskConfig
    items: tuple[Item, ...]  # the scored split, subject after subject
    examples: dict[str, tuple[Item, ...]]  # subject -> the solved examples before its questions
    titles: dict[str, str]  # subject -> how the prompt names it

    @property
    def name(self) -> str:
        return self.config.label

    @property
    def subjects(self) -> list[str]:
        return list(dict.fromkeys(item.subject for item in self.items))


def parse_task_spec(spec: str) -> tuple[Optional[str], str, str]:
    """``[NAME=]FORMAT:PATH`` (the ``--task`` of ``megatron-cpt eval``) -> (name, format, path)."""
    name, rest = spec.split("=", 1) if "=" in spec.split(":", 1)[0] else ("", spec)
    fmt, sep, path = rest.partition(":")
    if not sep or not path:
        raise UserError(f"--task '{spec}': expected [NAME=]TASK:PATH, e.g. ceval:data/ceval-exam")
    if fmt not in FORMATS:
        raise UserError(f"--task '{spec}': unknown task '{fmt}' (known: {', '.join(FORMATS)})")
    return name or None, fmt, path


def load_task(config: EvalTaskConfig) -> Task:
    """Read and check the scored split and, with shots, the dev examples of every subject."""
    root = Path(config.path)
    where = f"task '{config.label}' ({config.format}:{root})"
    if not root.exists():
        raise UserError(f"{where}: no such file or directory")
    split = config.split_name
    by_subject = _read_split(config, root, split, where)
    if config.subjects is not None:
        unknown = [s for s in config.subjects if s not in by_subject]
        if unknown:
            raise UserError(f"{where}: unknown subject '{unknown[0]}' in split {split} "
                            f"(it has: {_some(by_subject)})")
        by_subject = {s: by_subject[s] for s in config.subjects}
    if config.items_per_subject is not None:
        by_subject = {s: items[: config.items_per_subject] for s, items in by_subject.items()}
    items = tuple(item for subject_items in by_subject.values() for item in subject_items)
    if not items:
        raise UserError(f"{where}: the {split} split holds no items")
    examples: dict[str, tuple[Item, ...]] = {}
    if config.shots:
        dev = _read_split(config, root, "dev", where)
        for subject in by_subject:
            pool = dev.get(subject, [])
            if len(pool) < config.shots:
                raise UserError(f"{where}: subject '{subject}' has {len(pool)} dev item(s); "
                                f"shots={config.shots} needs {config.shots}")
            examples[subject] = tuple(pool[: config.shots])
    return Task(config, items, examples, _titles(root, list(by_subject), config.prompt_language))


def _some(names) -> str:
    names = sorted(names)
    return ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")


def _read_split(config: EvalTaskConfig, root: Path, split: str, where: str) -> dict[str, list[Item]]:
    """Subject -> its items, in file order (subjects sorted by name)."""
    if config.format == "jsonl":
        return _read_jsonl_split(root, split, where)
    folder = root / split
    if not folder.is_dir():
        raise UserError(f"{where}: no {split}/ folder (a {config.format} release holds one folder "
                        f"per split, e.g. {root / split})")
    suffix = "" if config.format == "cmmlu" else f"_{split}"
    files = sorted(folder.glob(f"*{suffix}.csv"))
    if not files:
        raise UserError(f"{where}: {folder} holds no *{suffix}.csv files")
    result = {}
    for path in files:
        subject = path.name[: -len(f"{suffix}.csv")]
        rows = (_header_rows(path, HEADER_COLUMNS[config.format]) if config.format in HEADER_COLUMNS
                else _plain_rows(path))
        items = [_csv_item(subject, fields, f"{path}:{row}") for row, fields in rows]
        if not items:
            raise UserError(f"{path}: holds no items")
        result[subject] = items
    return result


def _header_rows(path: Path, columns: tuple[str, ...]) -> Iterator[tuple[int, list[str]]]:
    with _open(path) as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            raise UserError(f"{path}: no column '{missing[0]}' (expected the columns "
                            f"{', '.join(columns)})")
        for row in reader:
            yield reader.line_num, [row[c] if row[c] is not None else "" for c in columns]


def _plain_rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    with _open(path) as handle:
        reader = csv.reader(handle)
        for row in reader:
            if len(row) != 6:
                raise UserError(f"{path}:{reader.line_num}: {len(row)} column(s), expected 6 "
                                f"(question, A, B, C, D, answer; no header)")
            yield reader.line_num, row


def _open(path: Path):
    try:
        return path.open(encoding="utf-8-sig", newline="")
    except OSError as exc:
        raise UserError(f"{path}: cannot be read ({exc.strerror})") from None


def _csv_item(subject: str, fields: list[str], where: str) -> Item:
    question, *choices, answer = fields
    letter = answer.strip()
    if len(letter) != 1 or letter not in LETTERS[: len(choices)]:
        hint = " (this split's answers may not be released)" if not letter else ""
        raise UserError(f"{where}: answer '{answer}' is not one of "
                        f"{', '.join(LETTERS[: len(choices)])}{hint}")
    return _checked_item(subject, question, choices, LETTERS.index(letter), where)


def _checked_item(subject: str, question: str, choices: list[str], answer: int, where: str) -> Item:
    if not question.strip():
        raise UserError(f"{where}: the question is empty")
    return Item(subject, question, tuple(choices), answer, where)


def _read_jsonl_split(root: Path, split: str, where: str) -> dict[str, list[Item]]:
    if root.is_file():
        if split == "dev":
            raise UserError(f"{where}: shots need dev examples, and {root} is one file: put the "
                            f"scored items in DIR/test.jsonl and the examples in DIR/dev.jsonl")
        path = root
    else:
        path = root / f"{split}.jsonl"
        if not path.is_file():
            raise UserError(f"{where}: no {path} (a jsonl task folder holds SPLIT.jsonl files)")
    result: dict[str, list[Item]] = {}
    with _open(path) as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                item = _jsonl_item(line, f"{path}:{number}")
                result.setdefault(item.subject, []).append(item)
    return dict(sorted(result.items()))


def _jsonl_item(line: str, where: str) -> Item:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise UserError(f"{where}: not JSON ({exc.msg})") from None
    if not isinstance(record, dict):
        raise UserError(f"{where}: expected an object with question, choices and answer")
    question, choices, answer = (record.get(k) for k in ("question", "choices", "answer"))
    subject = record.get("subject", NO_SUBJECT)
    if not isinstance(question, str):
        raise UserError(f"{where}: 'question' must be a string")
    if (not isinstance(choices, list) or len(choices) < 2 or len(choices) > len(LETTERS)
            or not all(isinstance(c, str) and c for c in choices)):
        raise UserError(f"{where}: 'choices' must be a list of 2 to {len(LETTERS)} non-empty "
                        f"strings")
    if not isinstance(answer, int) or isinstance(answer, bool) or not 0 <= answer < len(choices):
        raise UserError(f"{where}: 'answer' {answer!r} is not among the choices (expected an index "
                        f"0 to {len(choices) - 1})")
    if not isinstance(subject, str) or not subject:
        raise UserError(f"{where}: 'subject' must be a non-empty string when given")
    return _checked_item(subject, question, choices, answer, where)


def _titles(root: Path, subjects: list[str], language: str) -> dict[str, str]:
    """How prompts name each subject: ``subject_mapping.json`` when the folder has one, else the
    subject with spaces for underscores."""
    mapping = {}
    path = (root if root.is_dir() else root.parent) / MAPPING_FILE
    if path.is_file():
        try:
            mapping = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise UserError(f"{path}: not a JSON object of subject titles ({exc})") from None
        if not isinstance(mapping, dict):
            raise UserError(f"{path}: expected a JSON object of subject titles")
    titles = {}
    for subject in subjects:
        title = mapping.get(subject)
        if isinstance(title, list) and len(title) >= 2:  # C-Eval: [English, Chinese, category]
            title = title[1] if language == "zh" else title[0]
        titles[subject] = title if isinstance(title, str) and title else subject.replace("_", " ")
    return titles
