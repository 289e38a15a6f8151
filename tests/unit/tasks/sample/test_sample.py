"""Tests for tasks.sample.bundled: schema, held-out queries, pool references, determinism, size."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from tasks.corpus.pile_reader import BadLine, PileDoc, iter_pile_file, list_pile_files
from tasks.sample import bundled as sample
from tasks.sample.bundled import (
    CODE_SOURCE,
    NEWS_SOURCE,
    build_sample,
    estimate_chunks,
    estimate_tokens,
)

TINY = {"n_docs": 120, "n_queries": 8, "pool_size": 60}
FILES = (
    "pile/part-00.jsonl.zst",
    "pile/part-01.jsonl.zst",
    "queries.jsonl",
    "pool.jsonl",
    "pool_references.jsonl",
    "sample.json",
)


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _corpus(out: Path) -> list[PileDoc]:
    items = [x for f in list_pile_files(out / "pile") for x in iter_pile_file(f)]
    assert not [x for x in items if isinstance(x, BadLine)]
    return items  # type: ignore[return-value]


def _query_pieces(text: str) -> list[str]:
    """The sentences / lines a query quotes (prompt wording included)."""
    pieces = re.split(r"(?<=[.?!:])\s+|\n+", text)
    return [p.strip() for p in pieces if len(p.strip()) >= 40]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("tiny")
    return out, build_sample(out, **TINY)


def test_tiny_pile_files(tiny: tuple[Path, dict]) -> None:
    out, res = tiny
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == sorted(
        FILES
    )  # nothing else, no temporary files left behind
    docs = _corpus(out)
    assert len(docs) == 120 == res["n_docs"]
    assert {d.source for d in docs} == {NEWS_SOURCE, CODE_SOURCE}
    assert res["files"]["docs_per_file"] == [60, 60]
    # Raw Pile schema: exactly {"text": str, "meta": {"pile_set_name": str}} per line.
    import zstandard

    for name in FILES[:2]:
        with zstandard.ZstdDecompressor().stream_reader(
            (out / name).open("rb"), read_across_frames=True
        ) as r:
            lines = r.read().decode("utf-8").splitlines()
        assert len(lines) == 60
        for line in lines:
            obj = json.loads(line)
            assert list(obj) == ["text", "meta"]
            assert list(obj["meta"]) == ["pile_set_name"]
            assert isinstance(obj["text"], str) and obj["text"].strip()
    code = [d.text for d in docs if d.source == CODE_SOURCE]
    news = [d.text for d in docs if d.source == NEWS_SOURCE]
    assert all(200 <= len(t) <= sample.CODE_MAX_CHARS for t in code)
    assert all(re.match(r"(@|def |async def |class )", t) for t in code)
    assert all("\n\n" in t for t in news)  # headline, blank line, body
    assert len(set(d.text for d in docs)) == len(docs)


def test_tiny_queries_are_held_out(tiny: tuple[Path, dict]) -> None:
    out, res = tiny
    queries = _read_jsonl(out / "queries.jsonl")
    assert [q["query_id"] for q in queries] == [f"q{i:04d}" for i in range(8)]
    assert all(list(q) == ["query_id", "text", "source"] for q in queries)
    assert sorted(q["source"] for q in queries) == [CODE_SOURCE] * 4 + [NEWS_SOURCE] * 4
    assert res["queries_per_source"] == {CODE_SOURCE: 4, NEWS_SOURCE: 4}
    corpus = [d.text for d in _corpus(out)]
    for q in queries:
        assert estimate_tokens(q["text"], q["source"]) <= 220
        assert q["text"] not in corpus
        if q["source"] == CODE_SOURCE:
            snippet = q["text"].split("\n\n", 1)[1]
            assert not any(snippet in doc for doc in corpus), q
        for piece in _query_pieces(q["text"]):
            assert not any(piece in doc for doc in corpus), (q["query_id"], piece)


def test_plan_holds_out_query_documents() -> None:
    plan = sample._plan(
        sample._load_news(str(sample._bbc_data_dir())),
        sample._load_code(sample.sysconfig.get_paths()["stdlib"]),
        n_docs=400,
        n_queries=40,
        pool_size=60,
        seed=3,
    )
    texts = [t for t, _ in plan.docs]
    assert len(plan.held_out) == 40 and len(plan.query_cores) >= 40
    assert not set(plan.held_out) & set(texts)
    for core in plan.query_cores:
        assert not any(core in t for t in texts)


def test_tiny_pool_and_references(tiny: tuple[Path, dict]) -> None:
    out, res = tiny
    pool = _read_jsonl(out / "pool.jsonl")
    refs = _read_jsonl(out / "pool_references.jsonl")
    assert len(pool) == 60 == res["pool_size"]
    assert [p["item_id"] for p in pool] == [f"p{i:05d}" for i in range(60)]
    assert [r["item_id"] for r in refs] == [p["item_id"] for p in pool]
    assert all(list(p) == ["item_id", "instruction", "input", "source"] for p in pool)
    assert all(list(r) == ["item_id", "response"] for r in refs)
    assert all(p["input"].strip() and p["instruction"].strip() for p in pool)
    assert all(isinstance(r["response"], str) and r["response"].strip() for r in refs)
    assert len({p["instruction"] for p in pool}) >= 5
    assert {p["source"] for p in pool} == {NEWS_SOURCE, CODE_SOURCE}
    assert res["pool_per_source"] == {CODE_SOURCE: 30, NEWS_SOURCE: 30}
    assert all(len(p["input"]) <= sample.POOL_INPUT_MAX_CHARS for p in pool)

    by_id = {r["item_id"]: r["response"] for r in refs}
    for p in pool:
        ref = by_id[p["item_id"]]
        if p["instruction"].startswith("Which category"):
            assert ref in {"business", "entertainment", "politics", "sports", "tech"}
            assert ref in p["instruction"]
        elif p["instruction"] == sample._T_DOCSTRING:
            assert p["input"].lstrip().startswith(("def ", "async def ", "@"))
            assert ref not in p["input"]  # the docstring was removed from the input
        elif p["instruction"] == sample._T_IMPLEMENT:
            assert ref.startswith(p["input"]) and len(ref) > len(p["input"])
        elif p["instruction"] == sample._T_RETURNS:
            assert ref.startswith("Return")
        elif p["instruction"] == sample._T_SUMMARY:
            assert ref not in p["input"]  # the lead sentence is the answer, not the input
    # No pool item quotes a held-out query document.
    queries = _read_jsonl(out / "queries.jsonl")
    code_snips = [q["text"].split("\n\n", 1)[1] for q in queries if q["source"] == CODE_SOURCE]
    assert not any(s in p["input"] or s in by_id[p["item_id"]] for s in code_snips for p in pool)


def test_summary_file_matches_result(tiny: tuple[Path, dict]) -> None:
    out, res = tiny
    summary = json.loads((out / "sample.json").read_text(encoding="utf-8"))
    for key, value in summary.items():
        assert res[key] == value, key
    assert set(res) - set(summary) == {"out", "paths", "build_seconds"}
    assert summary["seed"] == 0 and summary["n_queries"] == 8
    assert summary["versions"]["python"] and summary["versions"]["zstandard"]
    assert sum(summary["docs_per_source"].values()) == 120
    assert summary["est_chunks"] == sum(summary["est_chunks_per_source"].values())
    assert summary["total_chars"] == sum(summary["chars_per_source"].values())
    assert Path(res["paths"]["queries"]).is_file()
    assert [Path(p) for p in res["paths"]["pile"]] == list_pile_files(out / "pile")
    import hashlib

    for name, digest in summary["files"]["sha256"].items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest


def test_deterministic_and_rerun_overwrites_identically(
    tiny: tuple[Path, dict], tmp_path: Path
) -> None:
    out, _ = tiny
    other = tmp_path / "again"
    build_sample(other, **TINY)
    for name in FILES:
        assert (out / name).read_bytes() == (other / name).read_bytes(), name
    # Rerun over an existing build (and over a stray temporary file): same bytes again.
    (other / "pile" / ".part-00.jsonl.zst.tmp-1").write_bytes(b"junk")
    build_sample(other, **TINY)
    for name in FILES:
        assert (out / name).read_bytes() == (other / name).read_bytes(), name
    # Another seed gives another sample.
    third = tmp_path / "seed1"
    build_sample(third, **TINY, seed=1)
    assert (third / FILES[0]).read_bytes() != (out / FILES[0]).read_bytes()


def test_too_many_docs_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not enough source material"):
        build_sample(tmp_path / "x", n_docs=100_000, n_queries=2, pool_size=2)
    assert not (tmp_path / "x" / "sample.json").exists()


def test_estimates() -> None:
    assert estimate_tokens("a" * 400, NEWS_SOURCE) == 100
    assert estimate_tokens("a" * 300, CODE_SOURCE) == 100
    assert estimate_chunks("", NEWS_SOURCE) == 1
    assert estimate_chunks("a" * 1024, NEWS_SOURCE) == 1
    assert estimate_chunks("a" * 1025, NEWS_SOURCE) == 2
    assert estimate_chunks("a" * 769, CODE_SOURCE) == 2


def test_first_sentence() -> None:
    fs = sample._first_sentence
    assert fs("The U.S. economy grew 3.5%. Next.") == "The U.S. economy grew 3.5%."
    assert fs("J. K. Rowling wrote it. Then more.") == "J. K. Rowling wrote it."
    assert fs("Mr. Smith left. He said so.") == "Mr. Smith left."
    assert fs("Shares rose to $1.13bn (£600m). Then fell.") == "Shares rose to $1.13bn (£600m)."
    assert fs("no end") == "no end"


def test_default_build_size(tmp_path: Path) -> None:
    t0 = time.perf_counter()
    res = build_sample(tmp_path / "default")
    seconds = time.perf_counter() - t0
    assert res["n_docs"] >= 3000
    assert len(res["docs_per_source"]) >= 2
    assert all(n >= 500 for n in res["docs_per_source"].values())
    assert res["pool_size"] >= 1000 and res["n_queries"] == 64
    assert res["est_chunks"] <= 6000  # the demo's embedding budget on 2 cores
    assert seconds < 60
    docs = _corpus(tmp_path / "default")
    assert len(docs) == res["n_docs"]
    corpus = set(d.text for d in docs)
    queries = _read_jsonl(tmp_path / "default" / "queries.jsonl")
    assert not {q["text"] for q in queries} & corpus
    pool = _read_jsonl(tmp_path / "default" / "pool.jsonl")
    assert len({(p["instruction"], p["input"]) for p in pool}) == len(pool)  # no duplicates
    refs = _read_jsonl(tmp_path / "default" / "pool_references.jsonl")
    assert [r["item_id"] for r in refs] == [p["item_id"] for p in pool]
    assert all(r["response"].strip() for r in refs)
    everything = "\x00".join(sorted(corpus))
    for q in queries:
        for piece in _query_pieces(q["text"]):
            assert piece not in everything, (q["query_id"], piece)


# --------------------------------------------------------------------------- redundancy


def test_copy_counts_are_heavy_tailed() -> None:
    import random as _random

    rng = _random.Random(0)
    counts = [sample._copy_count(rng) for _ in range(20_000)]
    share = {c: counts.count(c) / len(counts) for c in (1, 2)}
    assert 0.76 < share[1] < 0.81 and 0.10 < share[2] < 0.14  # most recur once or twice
    assert sum(c >= 10 for c in counts) / len(counts) > 0.005  # ... a few many times
    assert max(counts) >= 30
    assert 1.45 < sum(counts) / len(counts) < 1.65  # mean 1.55: the Pile-like rate at R=0.3


@pytest.mark.parametrize("source", [NEWS_SOURCE, CODE_SOURCE])
def test_near_copies_differ_lightly(source: str) -> None:
    import random as _random

    from tasks.evaluation.evaluate import duplicate_stats

    if source == NEWS_SOURCE:
        text = " ".join(f"Sentence number {i} says something about topic {i}." for i in range(12))
        donor = "A donor article has its own sentence here. And another one follows it."
    else:
        text = "\n".join(["def f(x):", *[f"    y{i} = x + {i}" for i in range(12)],
                          "    return y0"])
        donor = "def g(a):\n    return a * 2  # double the value\n"
    rng = _random.Random(1)
    for kind in sample.NEAR_COPY_KINDS:
        for _ in range(5):
            copy = sample._near_copy(text, source, kind, [donor], rng)
            assert copy != text, kind
            # a near copy: its word 3-grams overlap the original's
            assert duplicate_stats([text, copy])["dup_near"] == 0.5, (kind, copy)


def test_redundant_sample(tmp_path: Path, tiny: tuple[Path, dict]) -> None:
    clean_out, clean = tiny
    out = tmp_path / "r"
    res = build_sample(out, **TINY, redundancy=0.3)
    assert "redundancy" not in clean
    red = res["redundancy"]
    assert red["recurring_docs"] == round(0.3 * clean["n_docs"])
    assert res["n_docs"] == clean["n_docs"] + red["copies"]
    assert sum(red["copies_by_kind"].values()) == red["copies"]
    assert red["copies_by_kind"]["exact"] > 0 and len(red["copies_by_kind"]) >= 3
    # held-out prompts, pool and references are byte-identical to the clean sample's
    for name in ("queries.jsonl", "pool.jsonl", "pool_references.jsonl"):
        assert (out / name).read_bytes() == (clean_out / name).read_bytes()
    docs = [d.text for d in _corpus(out)]
    originals = [d.text for d in _corpus(clean_out)]
    # the clean corpus is a subsequence of the redundant one (same order), the rest copies
    it = iter(docs)
    assert all(any(t == o for t in it) for o in originals)
    extra = list(docs)
    for o in originals:
        extra.remove(o)
    assert len(extra) == red["copies"]
    exact = [t for t in extra if t in set(originals)]
    assert len(exact) == red["copies_by_kind"]["exact"]
    from tasks.evaluation.evaluate import duplicate_stats

    for t in extra:  # every near copy is close to one original and equal to none
        if t not in set(originals):
            assert any(duplicate_stats([o, t])["dup_near"] == 0.5 for o in originals)
    # prompts still quote nothing the corpus contains
    everything = "\x00".join(docs)
    for q in _read_jsonl(out / "queries.jsonl"):
        for piece in _query_pieces(q["text"]):
            assert piece not in everything, (q["query_id"], piece)
    with pytest.raises(ValueError, match="redundancy"):
        build_sample(tmp_path / "bad", **TINY, redundancy=1.5)
