"""The worked study of docs/ALMR.md (``make almr-study``) as one results file, the Markdown tables
the docs show from it, and the comparison of a fresh run with the committed file.

    python -m megatron_cpt.almr.study write OUT/study.json --sweep OUT/sweep --demo outputs/demo \\
        --base OUT/base --fit constrained=OUT/fit_constrained --fit weighted=OUT/fit_weighted
    python -m megatron_cpt.almr.study compare OUT/study.json docs/almr/study.json
    python -m megatron_cpt.almr.study docs docs/almr/study.json docs/ALMR.md   # rewrite its tables

The file holds the figures (the losses of every run, each objective's optima, relations, verdict
and recommendation, at full precision) and what they were computed from (digests of the corpus,
tokenizer, data and base model; the versions of the numeric libraries): a difference in the figures
can be traced to the first input that differs. In docs/ALMR.md every table between
``<!-- study:NAME -->`` and ``<!-- /study:NAME -->`` is ``render(NAME, results)``
(tests/unit/test_almr_study_docs.py checks it).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import re
import sys
from importlib import metadata
from pathlib import Path
from typing import Optional

from megatron_cpt.errors import UserError

FORMAT = 1
FIGURES = ("reference", "losses", "seed_losses", "fits")  # compared number by number
UPSTREAM = ("inputs", "environment", "study")  # what the figures were computed from
LIBRARIES = ("torch", "megatron-core", "numpy", "scipy")
FIT_KEYS = ("objective_text", "covers", "best_model", "verdict", "detectable_slope",
            "recommendation", "warnings", "replicates", "validation_batches")


def _digest(paths: list[Path], root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def _read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from None


def collect_results(sweep: Path, demo: Path, base: Path, fits: dict[str, Path]) -> dict:
    """The results file's content from a finished study's directories."""
    from megatron_cpt.run_files import read_metrics

    manifest = _read_json(sweep / "sweep.json")
    first = next(r for r in manifest["runs"] if r["kind"] == "train")
    import yaml

    recipe = yaml.safe_load((sweep / first["name"] / "recipe.yaml").read_text())
    fitted = {name: _read_json(path / "almr_fit.json") for name, path in fits.items()}
    some = next(iter(fitted.values()))
    base_losses = [r["loss"] for r in read_metrics(base) if r.get("loss") is not None]
    return {
        "format": FORMAT,
        "study": {"almrs": manifest["almrs"], "lrs": manifest["lrs"], "seeds": manifest["seeds"],
                  "steps": manifest["steps"], "tokens_per_run": manifest["tokens"],
                  "recipe": manifest["recipe"], "base_steps": len(base_losses),
                  "layout": {"tp": recipe["parallel"]["tp"], "pp": recipe["parallel"]["pp"],
                             "procs_per_node": recipe["launch"]["procs_per_node"],
                             "cpu_threads": recipe["launch"]["cpu_threads"]}},
        "inputs": {"corpus": _digest(list((demo / "corpus").glob("*.jsonl")), demo),
                   "tokenizer": _digest([demo / "tokenizer" / "tokenizer.model"], demo),
                   "data": _digest(list((demo / "data").glob("*.bin"))
                                   + list((demo / "data").glob("*.idx")), demo),
                   "base_model_losses": hashlib.sha256(
                       json.dumps(base_losses).encode()).hexdigest()[:16]},
        "environment": {"python": platform.python_version(),
                        **{name: metadata.version(name) for name in LIBRARIES},
                        "cpu_capability": _cpu_capability()},
        "reference": some["reference"],
        "losses": some["losses"],
        "seed_losses": some["seed_losses"],
        "fits": {name: {**{k: fit[k] for k in FIT_KEYS},
                        "optima": fit["optima"], "relations": fit["relations"]}
                 for name, fit in fitted.items()},
    }


def _cpu_capability() -> str:
    """The instruction set torch's CPU kernels use here (AVX2, AVX512, ...): another one may sum
    in another order."""
    import torch

    return torch.backends.cpu.get_cpu_capability()


def _leaves(value, path: str = ""):
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _leaves(item, f"{path}.{key}" if path else key)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _leaves(item, f"{path}[{index}]")
    else:
        yield path, value


def compare(fresh: dict, committed: dict) -> tuple[bool, list[str]]:
    """(equal, lines): whether every figure is the same, and in words how they differ and which
    inputs differ."""
    new = dict(_leaves({k: fresh.get(k) for k in FIGURES}))
    old = dict(_leaves({k: committed.get(k) for k in FIGURES}))
    numbers = [p for p in sorted(set(new) | set(old))
               if isinstance(new.get(p), (int, float)) and isinstance(old.get(p), (int, float))
               and not isinstance(new.get(p), bool)]
    differ = [p for p in numbers if new[p] != old[p]]
    texts = [p for p in sorted(set(new) | set(old)) if p not in numbers and new.get(p) != old.get(p)]
    if not differ and not texts:
        return True, [f"equal: all {len(numbers)} numbers and {len(new) - len(numbers)} other "
                      f"values of the figures"]
    lines = []
    if differ:
        worst = max(differ, key=lambda p: abs(new[p] - old[p]))
        lines.append(f"{len(differ)} of {len(numbers)} numbers differ; the largest difference is "
                     f"{new[worst] - old[worst]:+.4g} at {worst} ({old[worst]:.6g} -> "
                     f"{new[worst]:.6g})")
        for section in ("losses", "fits"):
            inside = [p for p in differ if p.startswith(section)]
            if inside:
                largest = max(abs(new[p] - old[p]) for p in inside)
                lines.append(f"  {section}: {len(inside)} differ, largest |difference| "
                             f"{largest:.4g}")
    for path in texts:
        lines.append(f"  {path}: {old.get(path)!r} -> {new.get(path)!r}")
    upstream = [f"{section}.{key}" for section in UPSTREAM
                for key in sorted(set(fresh.get(section, {})) | set(committed.get(section, {})))
                if fresh.get(section, {}).get(key) != committed.get(section, {}).get(key)]
    lines.append("upstream: " + (", ".join(upstream) + " differ" if upstream else
                                 "the inputs, the study's settings and the library versions are "
                                 "the same: the training arithmetic differs"))
    return False, lines


def _g(value: Optional[float], digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _lr(value: float) -> str:
    mantissa, exponent = f"{value:.0e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def _interval(low, high, digits: int = 3) -> str:
    return "" if low is None else f" [{low:.{digits}f}, {high:.{digits}f}]"


def render(name: str, results: dict) -> str:
    """The Markdown of table ``name`` (``losses``, ``optima``, ``verdicts``)."""
    study = results["study"]
    if name == "losses":
        lines = ["| lr \\ ALMR | " + " | ".join(f"{a:g}" for a in study["almrs"]) + " |",
                 "|---" * (len(study["almrs"]) + 1) + "|"]
        seed_losses = results["seed_losses"]
        for lang, grid in results["losses"].items():
            before = results["reference"][lang]
            lines.append(f"| **{lang}** (before: {_g(before)}) |" + " |" * len(study["almrs"]))
            for i, lr in enumerate(study["lrs"]):
                cells = []
                for j, mean in enumerate(grid[i]):
                    runs = seed_losses[lang][i][j] if seed_losses else [mean]
                    spread = (max(runs) - min(runs)) if len(runs) > 1 else None
                    cells.append(_g(mean) + ("" if spread is None else f" ({spread:.3f})"))
                lines.append(f"| {_lr(lr)} | " + " | ".join(cells) + " |")
        return "\n".join(lines)
    if name == "optima":
        lrs = study["lrs"]
        lines = ["| best ALMR [95%] | " + " | ".join(f"lr {_lr(lr)}" for lr in lrs)
                 + " | slope b of `a + b ln(lr)` [95%] | fit |",
                 "|---" * (len(lrs) + 3) + "|"]
        for objective, fit in results["fits"].items():
            cells = []
            for o in fit["optima"]:
                edge = " (edge)" if o["at_edge"] else ""
                cells.append("infeasible" if not o["feasible"] else
                             f"{_g(o['almr'])}{_interval(o['low'], o['high'])}{edge}")
            linear = next(r for r in fit["relations"] if r["model"] == "log-linear")
            b = linear["params"]["b"]
            bounds = (linear["param_interval"] or {}).get("b")
            chi2 = linear["chi2_per_dof"]
            lines.append(f"| {objective} | " + " | ".join(cells)
                         + f" | {b:.3f}{_interval(*(bounds or (None, None)))} | R^2 "
                           f"{linear['r2']:.2f}" + (f", chi2/dof {chi2:.1f}" if chi2 is not None
                                                    else "") + " |")
        return "\n".join(lines)
    if name == "verdicts":
        lines = []
        for objective, fit in results["fits"].items():
            rec = fit["recommendation"]
            power = (f"; the smallest slope it finds at 95% in 80% of repeats: |b| = "
                     f"{fit['detectable_slope']:.3f}" if fit["detectable_slope"] is not None else "")
            lines.append(f"- **{objective}**: {fit['verdict']}{power}. Recommended at lr "
                         f"{rec['lr']:g}: ALMR {_g(rec['almr'])}"
                         f"{_interval(rec['low'], rec['high'])}.")
        return "\n".join(lines)
    raise UserError(f"no study table named {name!r} (losses, optima, verdicts)")


MARKER = re.compile(r"(<!-- study:(\w+) -->\n)(.*?)(\n<!-- /study:\2 -->)", re.S)


def doc_tables(text: str) -> dict[str, str]:
    """The tables of a doc, by name: what stands between its ``study:NAME`` markers."""
    return {match[2]: match[3] for match in MARKER.finditer(text)}


def rewrite_doc(text: str, results: dict) -> str:
    return MARKER.sub(lambda m: m[1] + render(m[2], results) + m[4], text)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m megatron_cpt.almr.study",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = parser.add_subparsers(dest="action", required=True)
    write = actions.add_parser("write", help="the results file of a finished study")
    write.add_argument("out")
    write.add_argument("--sweep", required=True)
    write.add_argument("--demo", required=True, help="the demo's corpus, tokenizer and data")
    write.add_argument("--base", required=True, help="the base model's run directory")
    write.add_argument("--fit", action="append", required=True, metavar="NAME=DIR")
    check = actions.add_parser("compare", help="a fresh results file against the committed one")
    check.add_argument("fresh")
    check.add_argument("committed")
    docs = actions.add_parser("docs", help="rewrite a doc's study tables from a results file")
    docs.add_argument("results")
    docs.add_argument("doc")
    args = parser.parse_args(argv)
    try:
        if args.action == "write":
            fits = dict(item.split("=", 1) for item in args.fit)
            results = collect_results(Path(args.sweep), Path(args.demo), Path(args.base),
                                      {k: Path(v) for k, v in fits.items()})
            Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
        elif args.action == "compare":
            equal, lines = compare(_read_json(Path(args.fresh)), _read_json(Path(args.committed)))
            print(f"{args.fresh} against {args.committed}: " + ("the same figures" if equal else
                                                                "the figures differ"))
            print("\n".join(f"  {line}" for line in lines))
        else:
            doc = Path(args.doc)
            doc.write_text(rewrite_doc(doc.read_text(), _read_json(Path(args.results))))
    except UserError as exc:
        print(f"almr study: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
