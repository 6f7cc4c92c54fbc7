"""``megatron-cpt data``: corpora, tokenizers and indexed datasets.

    megatron-cpt data demo-corpus corpus --install-missing
    megatron-cpt data train-tokenizer --input corpus --vocab-size 8000 --output tok
    megatron-cpt data prepare --input corpus/zh_poetry.jsonl --output-prefix data/zh_poetry \\
        --tokenizer sp:tok/tokenizer.model --workers 2
    megatron-cpt data inspect-mix examples/demo_llama3_tiny_cpt_2xcpu.yaml --steps 200
    megatron-cpt data prepare-chat --input chat.jsonl --output-prefix data/chat \
        --tokenizer hf:Meta-Llama-3-8B-Instruct --seq-length 4096
    megatron-cpt data demo-chat corpus --output chat/demo_chat.jsonl

Heavy libraries (torch, megatron-core, tokenizer backends) are imported inside the verbs.
"""

from __future__ import annotations

import argparse
import sys

TXT_HELP = ("how a .txt file splits into documents: paragraph (blank-line separated, default), "
            "line (one per line) or file (one per file)")


def register(verbs: argparse._SubParsersAction) -> None:
    data = verbs.add_parser("data", help="corpora -> tokenizer -> indexed datasets",
                            description="Corpora, tokenizers and megatron-core indexed datasets.")
    sub = data.add_subparsers(dest="data_verb", required=True, metavar="DATA_VERB")
    _register_prepare(sub)
    _register_prepare_chat(sub)
    _register_train_tokenizer(sub)
    _register_demo_corpus(sub)
    _register_demo_chat(sub)
    _register_inspect_mix(sub)


def _register_prepare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prepare", help="tokenize JSONL/text files into a megatron-core .bin/.idx")
    p.add_argument("--input", nargs="+", required=True, metavar="PATH",
                   help=".jsonl/.json/.txt files (optionally .gz) or directories of them")
    p.add_argument("--output-prefix", required=True, metavar="P",
                   help="writes P.bin, P.idx and P.stats.json")
    p.add_argument("--tokenizer", required=True, metavar="SPEC",
                   help="hf:DIR | tiktoken:NAME | tiktoken:FILE.tiktoken | sp:FILE.model")
    p.add_argument("--workers", type=int, default=1, help="tokenizer processes (default 1)")
    p.add_argument("--text-key", default="text", help="JSON field holding the text (default text)")
    p.add_argument("--txt-mode", default="paragraph", choices=("paragraph", "line", "file"),
                   help=TXT_HELP)
    eod = p.add_mutually_exclusive_group()
    eod.add_argument("--append-eod", dest="append_eod", action="store_true", default=True,
                     help="end every document with the tokenizer's end-of-document id (default)")
    eod.add_argument("--no-eod", dest="append_eod", action="store_false")
    p.add_argument("--prepend-bos", action="store_true",
                   help="start every document with the tokenizer's beginning-of-text id "
                        "(<|begin_of_text|> for Llama-3)")
    p.add_argument("--force", action="store_true", help="overwrite an existing P.bin/P.idx")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.set_defaults(func=_run_prepare)


def _run_prepare(args: argparse.Namespace) -> int:
    from megatron_cpt.data.prepare import prepare_indexed_dataset

    stats = prepare_indexed_dataset(
        args.input, args.output_prefix, args.tokenizer, workers=args.workers,
        text_key=args.text_key, append_eod=args.append_eod, prepend_bos=args.prepend_bos,
        txt_mode=args.txt_mode,
        force=args.force, progress=args.progress)
    print(f"wrote {stats.output_prefix}.bin/.idx: {stats.docs} docs, {stats.tokens} tokens "
          f"({stats.dtype}), {stats.bytes} bytes in {stats.seconds:.2f} s = "
          f"{stats.tokens_per_second:.0f} tokens/s; stats in {stats.output_prefix}.stats.json")
    return 0


def _register_prepare_chat(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prepare-chat",
                       help="render chat JSONL in the tokenizer's chat format: ids + loss mask")
    p.add_argument("--input", nargs="+", required=True, metavar="PATH",
                   help=".jsonl files (optionally .gz) or directories of them: 'messages', "
                        "'prompt'/'response' or 'instruction'/'input'/'output' records")
    p.add_argument("--output-prefix", required=True, metavar="P",
                   help="writes P.bin/.idx (ids), P.mask.bin/.idx (loss mask), P.stats.json")
    p.add_argument("--tokenizer", required=True, metavar="SPEC",
                   help="hf:DIR with a chat_template, or tiktoken:PATH (a Llama-3 rank file)")
    p.add_argument("--seq-length", type=int, required=True, metavar="N",
                   help="the training sequence length (train.seq_length) conversations must fit")
    p.add_argument("--too-long", choices=("truncate", "drop", "error"), default="truncate",
                   help="what a conversation longer than --seq-length gets (default truncate); "
                        "always counted and printed")
    p.add_argument("--train-on", choices=("assistant", "all"), default="assistant",
                   help="tokens the loss is computed on: the assistant turns and their end of "
                        "turn (default), or every token")
    p.add_argument("--force", action="store_true", help="overwrite an existing P.bin/P.idx")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.set_defaults(func=_run_prepare_chat)


def _run_prepare_chat(args: argparse.Namespace) -> int:
    from megatron_cpt.data.prepare_chat import format_summary, prepare_chat_dataset

    stats = prepare_chat_dataset(args.input, args.output_prefix, args.tokenizer,
                                 seq_length=args.seq_length, too_long=args.too_long,
                                 train_on=args.train_on, force=args.force, progress=args.progress)
    print(format_summary(stats))
    return 0


def _register_train_tokenizer(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-tokenizer",
                       help="train a sentencepiece BPE tokenizer (byte fallback)")
    p.add_argument("--input", nargs="+", required=True, metavar="PATH")
    p.add_argument("--vocab-size", type=int, required=True, metavar="N")
    p.add_argument("--output", required=True, metavar="DIR", help="writes DIR/tokenizer.model")
    p.add_argument("--text-key", default="text")
    p.add_argument("--txt-mode", default="paragraph", choices=("paragraph", "line", "file"),
                   help=TXT_HELP)
    p.add_argument("--threads", type=int, default=1,
                   help="trainer threads (default 1: byte-identical models run to run)")
    p.add_argument("--character-coverage", type=float, default=0.9995)
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=_run_train_tokenizer)


def _run_train_tokenizer(args: argparse.Namespace) -> int:
    from megatron_cpt.data.train_tokenizer import train_sentencepiece

    info = train_sentencepiece(args.input, args.vocab_size, args.output, text_key=args.text_key,
                               txt_mode=args.txt_mode, threads=args.threads,
                               character_coverage=args.character_coverage, force=args.force)
    print(f"wrote {info['tokenizer']}: vocab {info['vocab_size']}, eod id {info['eod_id']}, "
          f"trained on {info['training_docs']} docs / {info['training_lines']} lines")
    return 0


def _register_demo_corpus(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo-corpus",
                       help="bilingual JSONL corpus from Debian packages + Python stdlib")
    p.add_argument("out", metavar="OUT", help="directory for SOURCE.jsonl files and manifest.json")
    p.add_argument("--max-docs", type=int, default=None, metavar="N",
                   help="keep the first N documents of each source (default all)")
    p.add_argument("--require-all", action="store_true",
                   help="fail when any source's package is missing")
    p.add_argument("--install-missing", action="store_true",
                   help="install missing packages first: as root with apt-get; otherwise fail "
                        "and print the commands to run")
    p.set_defaults(func=_run_demo_corpus)


def _run_demo_corpus(args: argparse.Namespace) -> int:
    import functools
    import os
    import shutil

    from megatron_cpt.data.demo_corpus import build_demo_corpus
    from megatron_cpt.data.demo_packages import install_missing

    installer = functools.partial(install_missing, euid=os.geteuid(),
                                  apt_get=shutil.which("apt-get")) if args.install_missing else None
    return build_demo_corpus(args.out, max_docs=args.max_docs, require_all=args.require_all,
                             installer=installer)


def _register_demo_chat(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo-chat",
                       help="bilingual chat set from the demo corpus's manual pages (NAME lines)")
    p.add_argument("corpus", metavar="CORPUS", help="directory written by `data demo-corpus`")
    p.add_argument("--output", required=True, metavar="FILE", help="the chat JSONL to write")
    p.add_argument("--per-language", type=int, default=24, metavar="N",
                   help="conversations per language (default 24)")
    p.set_defaults(func=_run_demo_chat)


def _run_demo_chat(args: argparse.Namespace) -> int:
    from megatron_cpt.data.demo_chat import build_demo_chat

    entries = build_demo_chat(args.corpus, args.output, args.per_language)
    counts = {lang: sum(e.language == lang for e in entries) for lang in ("en", "zh")}
    print(f"wrote {args.output}: {len(entries)} conversations ({counts['en']} English, "
          f"{counts['zh']} Chinese), e.g. {entries[0].question!r} -> {entries[0].answer!r}")
    return 0


def _register_inspect_mix(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect-mix",
                       help="draw the first N steps' training samples; realized share per source "
                            "(a data.chat recipe: its packing and epochs)")
    p.add_argument("recipe", help="YAML recipe with a data section")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="dotted overrides, e.g. data.mixture.almr=0.7 train.steps=1000")
    p.add_argument("--steps", type=int, default=None, metavar="N",
                   help="global batches to draw (default: train.steps)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--tolerance", type=float, default=None, metavar="T",
                   help="exit 1 when a realized share is off its request by more than T "
                        "(a fraction: 0.005 = half a percentage point)")
    p.set_defaults(func=_run_inspect_mix)


def _run_inspect_mix(args: argparse.Namespace) -> int:
    import json

    from megatron_cpt.config.recipe import load_recipe
    from megatron_cpt.data.inspect_mix import inspect_mix

    recipe = load_recipe(args.recipe, args.overrides)
    if recipe.data.chat is not None:  # fine-tuning data: the packing and the epochs instead
        from megatron_cpt.data.chat_dataset import resolve_chat_data

        plan = resolve_chat_data(recipe.data, recipe.train, recipe.model.vocab_size,
                                 with_validation=recipe.train.eval_interval > 0)
        print(json.dumps(plan.to_dict(), indent=2) if args.json else plan.format_table())
        return 0
    report = inspect_mix(recipe, steps=args.steps)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.format_table())
    if args.tolerance is not None and report.max_deviation > args.tolerance:
        print(f"megatron-cpt data: a realized share is {report.max_deviation:.4f} off its "
              f"request (tolerance {args.tolerance})", file=sys.stderr)
        return 1
    return 0
