"""docs/ALMR.md shows the committed results of `make almr-study` (docs/almr/study.json): every
table between its study markers is rendered from that file, so the docs cannot drift from the
figures; and a fresh results file is compared with it number by number, naming the inputs that
differ."""

from __future__ import annotations

import copy
import json
from pathlib import Path

from megatron_cpt.almr.study import compare, doc_tables, render, rewrite_doc

REPO = Path(__file__).resolve().parents[2]
COMMITTED = REPO / "docs" / "almr" / "study.json"
DOC = REPO / "docs" / "ALMR.md"


def test_the_docs_tables_equal_the_committed_results():
    results = json.loads(COMMITTED.read_text())
    tables = doc_tables(DOC.read_text())
    assert sorted(tables) == ["losses", "optima", "verdicts"]
    for name, table in tables.items():
        assert table == render(name, results), (
            f"docs/ALMR.md's {name} table differs from {COMMITTED.name}: python -m "
            f"megatron_cpt.almr.study docs docs/almr/study.json docs/ALMR.md")
    assert rewrite_doc(DOC.read_text(), results) == DOC.read_text()
    # The committed study: replicates, intervals over seeds, a stated verdict per objective.
    assert len(results["study"]["seeds"]) >= 2
    for fit in results["fits"].values():
        assert "run-to-run variation" in fit["covers"] and fit["verdict"]


def test_a_fresh_study_is_compared_number_by_number():
    results = json.loads(COMMITTED.read_text())
    equal, lines = compare(results, copy.deepcopy(results))
    assert equal and lines[0].startswith("equal: all ")
    fresh = copy.deepcopy(results)
    fresh["losses"]["zh"][0][0] += 0.25
    fresh["fits"]["weighted"]["verdict"] = "no significant dependence at this scale"
    fresh["inputs"]["tokenizer"] = "0" * 16
    equal, lines = compare(fresh, results)
    assert not equal
    assert lines[0].startswith("1 of ") and "the largest difference is +0.25 at losses.zh[0][0]" in lines[0]
    assert any(line.strip().startswith("fits.weighted.verdict: ") for line in lines)
    assert lines[-1] == "upstream: inputs.tokenizer differ"
