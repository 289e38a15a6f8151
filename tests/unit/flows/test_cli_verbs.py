"""Each `sift-curate` verb hands its flow the options as validated by the flow's parameter
model (plus the control arguments the flow takes), and nothing else: the flows are
replaced by recorders, so no Prefect, Ray or model runs."""

from __future__ import annotations

import importlib
import json
import os

import pytest
from typer.testing import CliRunner

from flows.cli import app

ENV = ("SIFT_WORKSPACE", "RAY_ADDRESS", "LABEL_STUDIO_URL")


@pytest.fixture
def ws(tmp_path, monkeypatch):
    saved = dict(os.environ)  # the verbs configure Prefect and friends through os.environ
    for key in ENV:
        monkeypatch.delenv(key, raising=False)
    (tmp_path / "q.jsonl").write_text('{"text": "a prompt"}\n')
    (tmp_path / "pool.jsonl").write_text('{"instruction": "x"}\n')
    yield tmp_path
    os.environ.clear()
    os.environ.update(saved)


def _record(monkeypatch, module: str) -> list[dict]:
    calls: list[dict] = []
    mod = importlib.import_module(f"flows.{module}")

    def fake(**kwargs):
        calls.append(kwargs)
        return {"run_id": "recorded"}

    monkeypatch.setattr(mod, f"{module}_flow", fake)
    return calls


def _invoke(*args: str) -> None:
    res = CliRunner().invoke(app, list(args), catch_exceptions=False)
    assert res.exit_code == 0, res.output


def test_embed_index_and_import(ws, monkeypatch):
    w = str(ws)
    embed = _record(monkeypatch, "embed")
    _invoke("embed", "--corpus", "/no/such/*.zst", "--name", "c", "--actors", "2",
            "--dtype", "bf16", "-w", w)
    assert embed == [{"corpus": "/no/such/*.zst", "name": "c", "model": None,
                      "batch_size": None, "max_tokens": None, "shard_docs": 2000, "actors": 2,
                      "gpus_per_actor": 0.0, "ray_address": None, "trust_remote_code": False,
                      "token_budget": None, "dtype": "bf16", "workspace": w, "run_id": None}]
    index = _record(monkeypatch, "index")
    _invoke("index", "--name", "c", "--memory-budget", "1GB", "--rebuild", "-w", w,
            "--run-id", "r1")
    assert index == [{"name": "c", "factory": "auto", "memory_budget": "1GB",
                      "target_recall": 0.95, "recall_k": 200, "train_size": None,
                      "block_vectors": 1 << 18, "store_dtype": "auto", "rebuild": True,
                      "ray_address": None, "workspace": w, "run_id": "r1"}]
    imported = _record(monkeypatch, "import_embeddings")
    _invoke("import-embeddings", "--name", "c", "--from", "/no/*.parquet", "--text-column",
            "body", "-w", w)
    assert imported == [{"name": "c", "source": "/no/*.parquet", "id_column": "doc_id",
                         "embedding_column": "embedding", "text_column": "body",
                         "source_column": "source", "model": None, "shard_rows": 100_000,
                         "workspace": w, "run_id": None}]


def test_sample_select_and_demo(ws, monkeypatch):
    w = str(ws)
    sample = _record(monkeypatch, "sample")
    _invoke("sample", "-w", w, "--n-docs", "10", "--redundancy", "0.3")
    assert sample == [{"out": str(ws / "sample"), "n_docs": 10, "n_queries": 64,
                       "pool_size": 1200, "seed": 0, "redundancy": 0.3}]
    select = _record(monkeypatch, "select")
    _invoke("select", "--name", "c", "--queries", str(ws / "q.jsonl"), "--strategy", "nn-f",
            "--dup-threshold", "0.8", "-w", w)
    assert select == [{"name": "c", "queries": str(ws / "q.jsonl"), "query_embeddings": None,
                       "k": 200, "n": 50, "lam": 0.01, "strategy": "nn-f", "seed": 0,
                       "min_gain": None, "nprobe": None, "rerank_factor": None, "block": 256,
                       "ray_address": None, "dup_threshold": 0.8, "alpha": 0.15,
                       "workspace": w, "run_id": None}]
    demo = _record(monkeypatch, "demo")
    _invoke("demo", "-w", w, "--k", "10", "--n", "5")
    assert demo == [{"k": 10, "n": 5, "lam": 0.01, "n_docs": None, "n_queries": 64,
                     "workspace": w}]


def test_rank_handoff_and_collect(ws, monkeypatch):
    w = str(ws)
    rank = _record(monkeypatch, "rank")
    _invoke("rank", "--pool", str(ws / "pool.jsonl"), "--pool-name", "p", "--budget", "5",
            "--strategy", "random,k_center", "--strategy", "sift", "--unit", "tokens",
            "-w", w)
    assert len(rank) == 1
    assert rank[0]["strategies"] == ["random", "k_center", "sift"]
    assert rank[0]["pool"] == str(ws / "pool.jsonl") and rank[0]["unit"] == "tokens"
    assert rank[0]["workspace"] == w and rank[0]["run_id"] is None
    assert set(rank[0]) == {*importlib.import_module("flows.params").RankParams.model_fields,
                            "workspace", "run_id"}
    handoff = _record(monkeypatch, "handoff")
    _invoke("handoff", "--run", "r", "--format", "csv", "-w", w)
    assert handoff == [{"run": "r", "format": "csv", "out": None, "strategy": None,
                        "force": False, "to": "files", "url": None, "project": None,
                        "workspace": w}]
    collect = _record(monkeypatch, "collect")
    _invoke("collect", "--project", "P", "-w", w)
    assert collect == [{"run": None, "project": "P", "pool_name": None, "url": None,
                        "missing_ok": False, "workspace": w}]


def test_evaluations(ws, monkeypatch):
    w = str(ws)
    ttt = _record(monkeypatch, "eval_ttt")
    _invoke("eval-ttt", "-w", w, "--seeds", "0,1", "--strategies", "sift,nn", "--run-id", "t")
    assert len(ttt) == 1
    assert ttt[0]["seeds"] == [0, 1] and ttt[0]["strategies"] == ["sift", "nn"]
    assert ttt[0]["workspace"] == w and ttt[0]["run_id"] == "t" and ttt[0]["sample"] is None
    budget = _record(monkeypatch, "eval_budget")
    _invoke("eval-budget", "-w", w, "--budgets", "0.5", "--strategies", "k_center")
    assert len(budget) == 1
    assert budget[0]["budgets"] == [0.5, 1.0]
    assert budget[0]["strategies"] == ["random", "k_center"]
    assert budget[0]["seeds"] == [0, 1, 2] and budget[0]["workspace"] == w


def test_a_bad_choice_is_refused_before_the_flow_runs(ws, monkeypatch):
    calls = _record(monkeypatch, "select")
    res = CliRunner().invoke(app, ["select", "--name", "c", "--queries", str(ws / "q.jsonl"),
                                   "--strategy", "bogus", "-w", str(ws)])
    assert res.exit_code != 0 and not calls
    assert "unknown strategy 'bogus'; choose from" in str(res.exception)


def test_curation_run_options_override_the_jobs_file(ws, monkeypatch):
    w = str(ws)
    (ws / "jobs.yaml").write_text("jobs:\n  a:\n    budget: 20\n    unit: tokens\n")
    runs = _record(monkeypatch, "curation_run")
    _invoke("curation-run", "-w", w, "--config", str(ws / "jobs.yaml"), "--budget", "7",
            "--strategy", "random", "--strategy", "facility_location,k_center")
    assert len(runs) == 1
    from flows.jobs import CurationJob

    expected = CurationJob(budget=7, unit="tokens",
                           strategies=["random", "facility_location", "k_center"])
    assert runs[0] == {**expected.model_dump(), "workspace": w}
    assert json.dumps(runs[0], default=str)  # what _show prints


def _choices(annotation) -> list[str]:
    """The values of every ``Literal`` inside a field's type (``X | None``, ``list[X]``)."""
    import typing

    if typing.get_origin(annotation) is typing.Literal:
        return [str(a) for a in typing.get_args(annotation)]
    return [c for a in typing.get_args(annotation) for c in _choices(a)]


# (model, verb, {field: option}); handoff --strategy is one of the rank run's strategies,
# so its help names that rule rather than the list
CHOICE_FIELDS = [("EmbedParams", "embed", {}), ("IndexParams", "index", {}),
                 ("SelectParams", "select", {}), ("RankParams", "rank",
                                                  {"strategies": "strategy"}),
                 ("HandoffParams", "handoff", {"strategy": None}),
                 ("EvalTTTParams", "eval-ttt", {}), ("EvalBudgetParams", "eval-budget", {})]


@pytest.mark.parametrize(("model", "verb", "renamed"), CHOICE_FIELDS,
                         ids=[c[1] for c in CHOICE_FIELDS])
def test_option_help_names_every_choice_of_the_model(model, verb, renamed):
    # the model validates the choices; the help text is the one place a user reads them
    import typer.main

    from flows import params

    options = {p.name: p for p in typer.main.get_command(app).commands[verb].params}
    checked = 0
    for name, field in getattr(params, model).model_fields.items():
        option = renamed.get(name, name)
        choices = _choices(field.annotation)
        if option is None or not choices:
            continue
        missing = [c for c in choices if c not in (options[option].help or "")]
        assert not missing, f"{verb} --{option} help lacks {missing}"
        checked += 1
    assert checked
