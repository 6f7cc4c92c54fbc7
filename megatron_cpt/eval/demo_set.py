"""The demo's Chinese multiple-choice set, built offline from the demo corpus: which continuation
of a span of held-out Chinese text is the real one?

    python -m megatron_cpt.eval.demo_set --corpus outputs/demo/corpus \\
        --tokenizer sp:outputs/demo/tokenizer/tokenizer.model --out outputs/demo/eval/zh_mc.jsonl

Each item's question is the first ``--prefix`` characters of a span of a line; its four choices
are the next ``--continuation`` characters and three copies of them whose Chinese characters are replaced
by characters drawn uniformly from those of the corpus (punctuation and Latin letters stay). A
copy is kept only when it is as many tokens as the real text, read after the question as it is
scored (``eval.requests.encode_pair``): a model that knows no Chinese scores all four alike
(chance: 25%), one that has learned which characters Chinese text uses picks the real one. The
spans come from the last 10% of each Chinese source's documents, which the demo recipe
(``data.split: 90,10,0``) holds out of training.

Shuffles of the real characters that keep its tokens would test word order instead; the demo's
60-step CPT model is at chance on those (docs/EVAL.md), so the set tests what it has learned.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import unicodedata
from pathlib import Path

from megatron_cpt.data.tokenizers import Tokenizer, load_tokenizer
from megatron_cpt.errors import UserError
from megatron_cpt.eval.requests import encode_pair
from megatron_cpt.files import write_atomic

HELD_OUT_SHARE = 0.1  # the demo recipe's validation split: the last 10% of documents
TRIES = 200  # replacements tried per span


def _is_chinese(character: str) -> bool:
    return unicodedata.name(character, "").startswith("CJK UNIFIED IDEOGRAPH")


def _chinese_share(text: str) -> float:
    return sum(map(_is_chinese, text)) / max(len(text), 1)


def read_chinese_sources(corpus: Path) -> dict[str, list[str]]:
    """Source -> the texts of its documents, for the corpus's Chinese sources."""
    manifest = corpus / "manifest.json"
    if not manifest.is_file():
        raise UserError(f"--corpus: no {manifest} (build it with `megatron-cpt data demo-corpus`)")
    sources = [s for s in json.loads(manifest.read_text())["sources"] if s["lang"] == "zh"]
    return {source["name"]: [json.loads(line)["text"] for line in
                             (corpus / source["file"]).read_text(encoding="utf-8").splitlines()
                             if line.strip()] for source in sources}


def held_out_spans(documents: list[str], length: int) -> list[str]:
    """Consecutive spans of ``length`` characters of each line, mostly Chinese, of the held-out
    documents."""
    first = len(documents) - int(len(documents) * HELD_OUT_SHARE)
    lines = [line.strip() for text in documents[first:] for line in text.splitlines()]
    spans = (line[start: start + length] for line in lines
             for start in range(0, len(line) - length + 1, length))
    return [span for span in spans if _chinese_share(span) >= 0.8]


def replacement_characters(sources: dict[str, list[str]], tokenizer: Tokenizer) -> list[str]:
    """The corpus's distinct Chinese characters that the tokenizer reads as one token each."""
    characters = {c for documents in sources.values() for text in documents for c in text
                  if _is_chinese(c)}
    after = len(tokenizer.encode("。"))
    return sorted(c for c in characters if len(tokenizer.encode("。" + c)) == after + 1)


def make_item(span: str, subject: str, tokenizer: Tokenizer, prefix: int, continuation: int,
              pool: list[str], rng: random.Random) -> dict | None:
    question, real = span[:prefix], span[prefix:]
    tokens = len(encode_pair(tokenizer, question, real, False)[1])
    copies: list[str] = []
    for _ in range(TRIES):
        candidate = "".join(rng.choice(pool) if _is_chinese(c) else c for c in real)
        if (candidate != real and candidate not in copies
                and len(encode_pair(tokenizer, question, candidate, False)[1]) == tokens):
            copies.append(candidate)
            if len(copies) == 3:
                answer = rng.randrange(4)
                return {"question": question, "choices": copies[:answer] + [real] + copies[answer:],
                        "answer": answer, "subject": subject}
    return None


def build_demo_set(corpus: Path, tokenizer_spec: str, items: int, prefix: int, continuation: int,
                   seed: int = 0) -> list[dict]:
    """Up to ``items`` items, taken in turn from each Chinese source."""
    tokenizer = load_tokenizer(tokenizer_spec)
    rng = random.Random(seed)
    sources = read_chinese_sources(corpus)
    pool = replacement_characters(sources, tokenizer)
    pools = {name: iter(held_out_spans(documents, prefix + continuation))
             for name, documents in sources.items()}
    result: list[dict] = []
    while pools and len(result) < items:
        for name in list(pools):
            item = None
            while item is None:
                span = next(pools[name], None)
                if span is None:
                    del pools[name]
                    break
                item = make_item(span, name, tokenizer, prefix, continuation, pool, rng)
            if item is not None and len(result) < items:
                result.append(item)
    if not result:
        raise UserError(f"--corpus {corpus}: no held-out Chinese span of {prefix + continuation} "
                        f"characters yields an item")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m megatron_cpt.eval.demo_set",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", required=True, type=Path, help="the demo corpus folder")
    parser.add_argument("--tokenizer", required=True, metavar="SPEC", help="the model's tokenizer")
    parser.add_argument("--out", required=True, type=Path, help="the JSONL file to write")
    parser.add_argument("--items", type=int, default=240)
    parser.add_argument("--prefix", type=int, default=8, help="question length in characters")
    parser.add_argument("--continuation", type=int, default=6, help="choice length in characters")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        items = build_demo_set(args.corpus, args.tokenizer, args.items, args.prefix,
                               args.continuation, args.seed)
    except UserError as exc:
        print(f"demo_set: error: {exc}", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(args.out, "".join(json.dumps(i, ensure_ascii=False) + "\n" for i in items))
    counts = {}
    for item in items:
        counts[item["subject"]] = counts.get(item["subject"], 0) + 1
    print(f"wrote {args.out}: {len(items)} items ("
          + ", ".join(f"{name} {n}" for name, n in counts.items()) + "), 4 choices, chance 0.25")
    return 0


if __name__ == "__main__":
    sys.exit(main())
