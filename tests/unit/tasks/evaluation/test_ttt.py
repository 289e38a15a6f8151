"""tasks.evaluation.ttt without a model: the records, table and files a run stores from
its per-document rows (real DuckDB file). The fine-tuning runs in
tests/integration/test_eval.py."""

from __future__ import annotations

import json

import pytest

from tasks.evaluation import ttt
from tasks.storage import db


def _doc_rows(seed: int, doc: str, source: str, base: float, sift: float, nn: float):
    extra = {"distinct": 3, "steps": 3, "dup_exact": 0.0, "dup_near": 0.0,
             "distinct_near": 3, "final_variance": 0.5}
    return [{"seed": seed, "doc": doc, "source": source, "strategy": "base", "bpb": base},
            {"seed": seed, "doc": doc, "source": source, "strategy": "sift", "bpb": sift,
             **extra, "overlap_nn": 0.5},
            {"seed": seed, "doc": doc, "source": source, "strategy": "nn", "bpb": nn,
             **extra, "overlap_nn": 1.0}]


def test_store_results_records_table_and_documents(tmp_path):
    rows = [*_doc_rows(0, "a", "news", 2.0, 1.5, 1.8), *_doc_rows(0, "b", "code", 1.0, 0.9, 1.0),
            *_doc_rows(1, "c", "news", 2.0, 1.0, 2.0), *_doc_rows(1, "d", "code", 1.0, 1.0, 1.0)]
    dbf = tmp_path / "curation.duckdb"
    per_seed, summary = ttt.store_results(dbf, "t1", tmp_path, rows, n=3)
    assert per_seed == {"base": [1.5, 1.5], "sift": [1.2, 1.0], "nn": [1.4, 1.5]}
    assert summary["documents"] == 4
    table = {r["strategy"]: r for r in summary["table"]}
    assert table["sift"]["bpb_mean"] == pytest.approx(1.1)
    assert table["sift"]["minus_base_mean"] == pytest.approx(-0.4)
    assert table["sift"]["overlap_nn"] == 0.5 and table["nn"]["overlap_nn"] is None
    assert table["base"]["steps"] is None and table["sift"]["steps"] == 3
    got = dict(((s, b, seed, m), v) for s, b, seed, m, v in db.query(
        dbf, "SELECT strategy, budget, seed, metric, value FROM evaluations "
        "WHERE run_id = 't1'"))
    assert got[("base", 0.0, 0, "bpb")] == 1.5 and got[("sift", 3.0, 1, "bpb[news]")] == 1.0
    assert ("nn", 3.0, 0, "overlap_nn") not in got  # nn against itself is not recorded
    assert ("base", 0.0, 0, "distinct_chunks") not in got
    assert ("sift", 3.0, 0, "bpb_equal_compute_minus_base") not in got  # no adaptive-sift
    lines = (tmp_path / "ttt_documents.jsonl").read_text().splitlines()
    assert [json.loads(x) for x in lines] == rows
