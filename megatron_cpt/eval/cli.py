"""``megatron-cpt eval``: multiple-choice benchmark accuracy of megatron-cpt checkpoints, scored by
log-likelihood on the checkpoint itself (no conversion), at any TP x PP x DP layout, on GPUs or
CPU ranks (docs/EVAL.md).

    megatron-cpt eval --ckpt-dir runs/cpt/checkpoints/step_001000 --tokenizer hf:/models/Meta-Llama-3-8B \\
        --task ceval:data/ceval-exam --task cmmlu:data/cmmlu --shots 5 --prepend-bos --tp 2 --out ceval.json
    megatron-cpt eval --ckpt-dir outputs/demo/base/checkpoints/step_000040 \\
        --ckpt-dir outputs/demo/run/checkpoints/step_000060 --tokenizer sp:outputs/demo/tokenizer \\
        --task zh_mc=jsonl:outputs/demo/eval/zh_mc.jsonl --scoring text --cpu --out outputs/demo/eval/results.json

``--task [NAME=]TASK:PATH`` with TASK one of ceval, cmmlu, mmlu, jsonl; the options after it
(split, shots, scoring, subjects, items per subject, language) apply to every ``--task``.
``--tasks FILE`` takes tasks with settings of their own from YAML: a ``tasks:`` list as in a
recipe's ``eval.tasks``, or a recipe (its ``eval.tasks``). Several ``--ckpt-dir`` are scored one
after another by the same ranks. Everything is read and checked
before any rank starts; bad input is one line, exit status 2, and nothing is written.
"""

from __future__ import annotations

import argparse
import dataclasses

from megatron_cpt.config.eval import EvalTaskConfig
from megatron_cpt.config.model import ModelConfig
from megatron_cpt.config.parallel import ParallelConfig
from megatron_cpt.errors import ConfigError, UserError

WORKER_MODULE = "megatron_cpt.eval.worker"
DEFAULT_OUT = "eval_results.json"


def register(verbs) -> None:
    parser = verbs.add_parser("eval", help="multiple-choice benchmark accuracy of checkpoints",
                              description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    parser.set_defaults(func=run_eval_command)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt-dir", action="append", required=True, metavar="CKPT",
                        help="a megatron-cpt checkpoint (training or converted); repeat for several")
    parser.add_argument("--tokenizer", required=True, metavar="SPEC",
                        help="the model's tokenizer: hf:DIR, sp:FILE.model, tiktoken:FILE")
    parser.add_argument("--task", action="append", default=[], metavar="[NAME=]TASK:PATH",
                        help="TASK: ceval, cmmlu, mmlu or jsonl; PATH: the release's folder "
                             "(jsonl: a file or a folder of SPLIT.jsonl); repeat for several")
    parser.add_argument("--tasks", default=None, metavar="FILE",
                        help="YAML with a tasks: list (as a recipe's eval.tasks), or a recipe")
    parser.add_argument("--split", default=None,
                        help="split to score (default: val for C-Eval, test otherwise)")
    parser.add_argument("--shots", type=int, default=0, help="dev examples per prompt (default 0)")
    parser.add_argument("--scoring", choices=("letter", "text"), default="letter",
                        help="the answer letter, or each choice's text per character")
    parser.add_argument("--subjects", default=None, help="comma-separated subjects (default all)")
    parser.add_argument("--items-per-subject", type=int, default=None, metavar="N",
                        help="only the first N items of each subject")
    parser.add_argument("--language", choices=("zh", "en"), default=None,
                        help="prompt language (default zh for ceval/cmmlu, en otherwise)")
    parser.add_argument("--prepend-bos", action="store_true",
                        help="start prompts with the beginning-of-text id (Llama-3)")
    parser.add_argument("--max-length", type=int, default=None, metavar="N",
                        help="longest sequence in tokens (default: the model's positions)")
    parser.add_argument("--tp", type=int, default=1, help="tensor-parallel ranks (default 1)")
    parser.add_argument("--pp", type=int, default=1, help="pipeline-parallel ranks (default 1)")
    parser.add_argument("--vpp", type=int, default=None, help="virtual pipeline stages per rank")
    parser.add_argument("--dp", type=int, default=1, help="data-parallel ranks (default 1)")
    parser.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default=None,
                        help="compute dtype (default: the checkpoint's)")
    parser.add_argument("--micro-batch-size", type=int, default=4, metavar="N",
                        help="sequences per micro-batch (default 4)")
    parser.add_argument("--cpu", action="store_true",
                        help="run on CPU ranks over gloo even where GPUs exist")
    parser.add_argument("--out", default=DEFAULT_OUT,
                        help=f"results JSON (default {DEFAULT_OUT})")
    parser.add_argument("--no-progress", action="store_true")


def worker_argv(args) -> list[str]:
    """The command line that makes a rank parse the same ``args``."""
    argv = [item for ckpt in args.ckpt_dir for item in ("--ckpt-dir", ckpt)]
    argv += ["--tokenizer", args.tokenizer] + [i for t in args.task for i in ("--task", t)]
    for option in ("tasks", "split", "shots", "scoring", "subjects", "items_per_subject", "language",
                   "max_length", "tp", "pp", "vpp", "dp", "dtype", "micro_batch_size", "out"):
        value = getattr(args, option)
        if value is not None:
            argv += [f"--{option.replace('_', '-')}", str(value)]
    return argv + [f"--{flag.replace('_', '-')}" for flag in ("prepend_bos", "cpu", "no_progress")
                   if getattr(args, flag)]


def tasks_from_file(path: str) -> list[EvalTaskConfig]:
    """``tasks:`` of a YAML file, or ``eval.tasks`` of a recipe."""
    from megatron_cpt.config.loader import build_dataclass, read_yaml

    tree = read_yaml(path)
    section = tree.get("eval") if "eval" in tree else tree
    tasks = section.get("tasks") if isinstance(section, dict) else None
    if not isinstance(tasks, list) or not tasks:
        raise UserError(f"--tasks {path}: expected a non-empty tasks: list (or a recipe with "
                        f"eval.tasks)")
    configs = []
    for index, entry in enumerate(tasks):
        where = f"--tasks {path}: tasks[{index}]"
        if not isinstance(entry, dict):
            raise UserError(f"{where}: expected a mapping with format and path")
        config = build_dataclass(EvalTaskConfig, entry, where)
        config.validate(where)
        configs.append(config)
    return configs


def task_configs(args) -> list[EvalTaskConfig]:
    from megatron_cpt.eval.tasks import parse_task_spec

    if not args.task and not args.tasks:
        raise UserError("--task or --tasks: name at least one task")
    subjects = [s.strip() for s in args.subjects.split(",") if s.strip()] if args.subjects else None
    configs = []
    for spec in args.task:
        name, fmt, path = parse_task_spec(spec)
        config = EvalTaskConfig(format=fmt, path=path, name=name, split=args.split,
                                shots=args.shots, scoring=args.scoring, subjects=subjects,
                                items_per_subject=args.items_per_subject, language=args.language)
        try:
            config.validate("task")
        except ConfigError as exc:
            raise UserError(f"--task '{spec}': {exc}") from None
        configs.append(config)
    configs += tasks_from_file(args.tasks) if args.tasks else []
    names = [c.label for c in configs]
    repeated = next((n for n in names if names.count(n) > 1), None)
    if repeated:
        raise UserError(f"--task: two tasks are named '{repeated}'; give each a name of its own")
    return configs


def checkpoint_models(args) -> list[ModelConfig]:
    """Each checkpoint's model, as scored: the compute dtype, no FP8, no recompute."""
    from megatron_cpt.checkpointing.dist_io import read_meta
    from megatron_cpt.config.loader import build_dataclass

    models = []
    for ckpt in args.ckpt_dir:
        model = build_dataclass(ModelConfig, read_meta(ckpt)["model"], "model")
        models.append(dataclasses.replace(model, dtype=args.dtype or model.dtype, fp8=None,
                                          recompute="none"))
    return models


def layout(args, models: list[ModelConfig]) -> ParallelConfig:
    parallel = ParallelConfig(tp=args.tp, pp=args.pp, vpp=args.vpp)
    for option in ("dp", "micro_batch_size"):
        if getattr(args, option) < 1:
            raise UserError(f"--{option.replace('_', '-')}: must be >= 1")
    try:
        for model in models:
            parallel.validate(model.num_layers, model.num_attention_heads, model.num_query_groups)
    except ConfigError as exc:
        raise UserError(f"--tp/--pp/--vpp: {str(exc).split(': ', 1)[-1]}") from None
    return parallel


def prepare(args):
    """Everything a rank needs, checked: (models, layout, benchmarks)."""
    from megatron_cpt.eval.benchmark import prepare_benchmarks

    configs = task_configs(args)
    models = checkpoint_models(args)
    parallel = layout(args, models)
    max_length = args.max_length or min(m.max_position_embeddings for m in models)
    if not 2 <= max_length <= min(m.max_position_embeddings for m in models):
        raise UserError(f"--max-length: {max_length} is outside 2 .. the model's "
                        f"{min(m.max_position_embeddings for m in models)} positions")
    benchmarks = prepare_benchmarks(configs, args.tokenizer, args.prepend_bos, max_length,
                                    min(m.vocab_size for m in models))
    return models, parallel, benchmarks


def run_eval_command(args) -> int:
    import torch

    from megatron_cpt.conversion.host import HOST_ENV, run_on_host
    from megatron_cpt.launch.local import inside_distributed_job, run_local

    if args.cpu:
        run_on_host()
    if inside_distributed_job():
        from megatron_cpt.eval.worker import evaluate_this_rank

        return evaluate_this_rank(args)
    models, parallel, benchmarks = prepare(args)
    ranks = args.tp * args.pp * args.dp
    if torch.cuda.is_available() and ranks > torch.cuda.device_count():
        raise UserError(f"--tp x --pp x --dp = {ranks} ranks, but this node has "
                        f"{torch.cuda.device_count()} GPUs (add --cpu for CPU ranks)")
    print(f"eval: {benchmarks.describe()}; {len(args.ckpt_dir)} checkpoint(s) on {ranks} "
          f"{'CPU' if args.cpu or not torch.cuda.is_available() else 'GPU'} rank(s)", flush=True)
    if ranks == 1:
        from megatron_cpt.eval.worker import evaluate_in_this_process

        return evaluate_in_this_process(args, models, parallel, benchmarks)
    return run_local(WORKER_MODULE, worker_argv(args), ranks, env=HOST_ENV if args.cpu else None)
