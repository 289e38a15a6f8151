"""tasks.selection: prompt files read one prompt per line (JSONL or text) in blocks, the
selection arguments checked, and a block's picks as long-format rows."""

from __future__ import annotations

import typing

import numpy as np
import pytest

from tasks.selection.prompt_files import iter_prompt_lines
from tasks.selection.select import (
    STRATEGIES,
    check_selection_args,
    iter_query_blocks,
    load_queries,
    selection_rows,
)


def test_jsonl_prompts_under_any_text_key_with_ids(tmp_path):
    f = tmp_path / "q.jsonl"
    f.write_text('\ufeff{"text": "a", "query_id": 7}\n\n{"prompt": "b", "id": "x"}\n'
                 '{"query": "c"}\n{"instruction": "d"}\n', encoding="utf-8")
    q = load_queries(f)
    assert q.texts == ["a", "b", "c", "d"]
    assert q.ids == ["7", "x", "q000004", "q000005"]  # else the line number


def test_a_text_file_is_one_prompt_per_line(tmp_path):
    f = tmp_path / "q.txt"
    f.write_text('first prompt\n\n  {"text": "kept as text"}  \n')
    assert [(n, t, o) for n, t, o in iter_prompt_lines(f, "queries file")] == [
        (1, "first prompt", None), (3, '{"text": "kept as text"}', None)]


def test_blocks_hold_at_most_block_prompts(tmp_path):
    f = tmp_path / "q.txt"
    f.write_text("".join(f"p{i}\n" for i in range(7)))
    blocks = list(iter_query_blocks(f, block=3))
    assert [b.texts for b in blocks] == [["p0", "p1", "p2"], ["p3", "p4", "p5"], ["p6"]]
    assert blocks[2].ids == ["q000007"]


@pytest.mark.parametrize(("content", "message"), [
    ('{"text": "a", "id": 1}\n{"text": "b", "id": 1}\n',
     r"q.jsonl:2: duplicate query_id '1' \(first on line 1\)"),
    ('{"text": "a"}\n[1]\n', r"q.jsonl:2: expected a JSON object"),
    ('{"text": ""}\n', r"q.jsonl:1: missing or empty field 'text'"),
    ('{"text": \n', r"q.jsonl:1: invalid JSON"),
    ("\n\n", r"queries file .*q.jsonl holds no prompts"),
])
def test_bad_prompt_files_name_file_and_line(tmp_path, content, message):
    f = tmp_path / "q.jsonl"
    f.write_text(content)
    with pytest.raises(ValueError, match=message):
        load_queries(f)


def test_a_missing_prompt_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="queries file .*nope.jsonl does not exist"):
        load_queries(tmp_path / "nope.jsonl")


@pytest.mark.parametrize(("args", "message"), [
    (("bogus", 200, 50, 0.01), "unknown strategy 'bogus'; choose one of sift, nn"),
    (("sift", 0, 50, 0.01), "k and n must be positive"),
    (("nn", 200, 50, 0.0), "lam must be > 0"),
    (("nn-f", 200, 50, 0.01, 3.0), "dup_threshold is a cosine similarity"),
    (("adaptive-sift", 200, 50, 0.01, 0.9, 0.0), "alpha must be > 0"),
])
def test_selection_arguments_are_checked(args, message):
    with pytest.raises(ValueError, match=message):
        check_selection_args(*args)
    check_selection_args("sift", 200, 50, 0.01)


def test_the_strategies_are_the_select_flows_choices():
    # the library's own check and the flow's parameter model name the same strategies
    from flows.params import SelectStrategy

    assert typing.get_args(SelectStrategy) == STRATEGIES


def test_selection_rows_are_one_per_pick_with_1_based_rank():
    picks = np.array([[5, 9, -1], [2, -1, -1]])
    result = {"picks": picks, "variances": np.array([[.9, .8, .8], [.7, .7, .7]]),
              "similarity": np.array([[.5, .4, np.nan], [.6, np.nan, np.nan]])}
    rows = selection_rows("r", "adaptive-sift", ["a", "b"], result).to_pylist()
    assert [(r["query_id"], r["rank"], r["doc_id"]) for r in rows] == [
        ("a", 1, 5), ("a", 2, 9), ("b", 1, 2)]
    assert rows[1]["posterior_variance"] == .8 and rows[2]["similarity"] == .6
    assert {r["run_id"] for r in rows} == {"r"} and {r["strategy"] for r in rows} == {
        "adaptive-sift"}
