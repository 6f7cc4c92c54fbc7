"""Small benchmark folders laid out as the C-Eval, CMMLU and MMLU releases are, and a JSONL task:
two subjects, four scored items and two dev examples each, answers spread over A-D."""

from __future__ import annotations

import csv
import json
from pathlib import Path

LETTERS = "ABCD"
# subject -> split -> [(question, choices, answer letter)]
ITEMS = {
    "chinese_history": {
        "val": [("秦始皇统一六国是在哪一年？", ["公元前221年", "公元前206年", "公元前230年", "公元前210年"], "A"),
                ("唐朝的都城是哪里？", ["洛阳", "长安", "开封", "南京"], "B"),
                ("造纸术是谁改进的？", ["张衡", "华佗", "蔡伦", "毕昇"], "C"),
                ("郑和下西洋发生在哪个朝代？", ["宋朝", "元朝", "清朝", "明朝"], "D")],
        "dev": [("赤壁之战发生在哪个时期？", ["三国", "汉初", "唐末", "宋初"], "A"),
                ("“贞观之治”的皇帝是谁？", ["汉武帝", "唐太宗", "宋太祖", "明成祖"], "B")],
    },
    "high_school_geography": {
        "val": [("中国最长的河流是哪条？", ["黄河", "长江", "珠江", "淮河"], "B"),
                ("世界上最高的山峰是哪座？", ["珠穆朗玛峰", "乔戈里峰", "泰山", "华山"], "A"),
                ("赤道穿过下列哪个国家？", ["中国", "日本", "俄罗斯", "巴西"], "D"),
                ("太阳从哪个方向升起？", ["西方", "北方", "东方", "南方"], "C")],
        "dev": [("中国的首都是哪座城市？", ["上海", "北京", "广州", "深圳"], "B"),
                ("地球上面积最大的大洋是？", ["太平洋", "大西洋", "印度洋", "北冰洋"], "A")],
    },
}


def _rows(subject: str, split: str):
    return ITEMS[subject]["dev" if split == "dev" else "val"]


def write_ceval(root: Path, splits=("dev", "val")) -> Path:
    """``root/{dev,val}/SUBJECT_SPLIT.csv`` with C-Eval's header."""
    for subject in ITEMS:
        for split in splits:
            path = root / split / f"{subject}_{split}.csv"
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("w", encoding="utf-8", newline="") as handle:
                writer = csv.writer(handle)
                header = ["id", "question", "A", "B", "C", "D", "answer"]
                writer.writerow(header + (["explanation"] if split == "dev" else []))
                for index, (question, choices, answer) in enumerate(_rows(subject, split)):
                    extra = ["1. 解释"] if split == "dev" else []
                    writer.writerow([index, question, *choices, answer, *extra])
    return root


def write_cmmlu(root: Path) -> Path:
    """``root/{dev,test}/SUBJECT.csv`` with CMMLU's header (an unnamed index column first)."""
    for subject in ITEMS:
        for split in ("dev", "test"):
            path = root / split / f"{subject}.csv"
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("w", encoding="utf-8", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(["", "Question", "A", "B", "C", "D", "Answer"])
                for index, (question, choices, answer) in enumerate(_rows(subject, split)):
                    writer.writerow([index, question, *choices, answer])
    return root


def write_mmlu(root: Path) -> Path:
    """``root/{dev,test}/SUBJECT_SPLIT.csv`` without a header, as Hendrycks' data.tar."""
    for subject in ITEMS:
        for split in ("dev", "test"):
            path = root / split / f"{subject}_{split}.csv"
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("w", encoding="utf-8", newline="") as handle:
                csv.writer(handle).writerows([q, *c, a] for q, c, a in _rows(subject, split))
    return root


def write_jsonl(root: Path) -> Path:
    """``root/{dev,test}.jsonl`` with subjects."""
    root.mkdir(parents=True, exist_ok=True)
    for split in ("dev", "test"):
        lines = [json.dumps({"question": q, "choices": c, "answer": LETTERS.index(a), "subject": s},
                            ensure_ascii=False)
                 for s in ITEMS for q, c, a in _rows(s, split)]
        (root / f"{split}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def answers() -> list[int]:
    """The scored items' answer indices, in load order (subjects sorted)."""
    return [LETTERS.index(a) for s in sorted(ITEMS) for _, _, a in ITEMS[s]["val"]]
