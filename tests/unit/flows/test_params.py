"""The per-flow parameter models hold the flow signatures, the CLI verbs and the run ids
together: one field, one flow parameter, one option, with the same default."""

from __future__ import annotations

import inspect

import pytest
import typer.main

from flows import params as P
from flows.cli import app

# (model, flow module, flow function, CLI verb, {field: option name}, fields with no option)
FLOWS = [
    (P.SampleParams, "flows.sample", "sample_flow", "sample", {}, {"out"}),
    (P.EmbedParams, "flows.embed", "embed_flow", "embed", {}, set()),
    (P.IndexParams, "flows.index", "index_flow", "index", {}, set()),
    (P.ImportEmbeddingsParams, "flows.import_embeddings", "import_embeddings_flow",
     "import-embeddings", {"source": "from_"}, set()),
    (P.SelectParams, "flows.select", "select_flow", "select", {}, set()),
    (P.DemoParams, "flows.demo", "demo_flow", "demo", {}, set()),
    (P.RankParams, "flows.rank", "rank_flow", "rank", {"strategies": "strategy"}, set()),
    (P.HandoffParams, "flows.handoff", "handoff_flow", "handoff", {}, set()),
    # a curation job collects by pool and tolerates nothing to collect; the verb does not
    (P.CollectParams, "flows.collect", "collect_flow", "collect", {},
     {"pool_name", "missing_ok"}),
]
IDS = [f[3] for f in FLOWS]


def _required(model, name: str) -> bool:
    return model.model_fields[name].is_required()


@pytest.mark.parametrize("model, module, fn, verb, renamed, no_option", FLOWS, ids=IDS)
def test_the_flow_signature_is_the_model(model, module, fn, verb, renamed, no_option):
    flow = getattr(__import__(module, fromlist=[fn]), fn)
    sig = inspect.signature(flow.fn).parameters
    assert set(sig) - model.CONTROL == set(model.model_fields), verb
    for name, par in sig.items():
        if name in model.CONTROL:
            continue
        if _required(model, name):
            assert par.default is inspect.Parameter.empty, name
        elif par.default is not None or model.default(name) is None:
            assert par.default == model.default(name), name
        # else: a list default, given as None in the signature (Prefect shares defaults)


@pytest.mark.parametrize("model, module, fn, verb, renamed, no_option", FLOWS, ids=IDS)
def test_every_field_is_an_option_of_the_verb(model, module, fn, verb, renamed, no_option):
    cmd = typer.main.get_command(app).commands[verb]
    options = {p.name: p for p in cmd.params}
    for name in model.model_fields:
        if name in no_option:
            continue
        opt = options.get(renamed.get(name, name))
        assert opt is not None, f"{verb}: no option for {name}"
        if not _required(model, name) and opt.default is not None:
            assert opt.default == model.default(name), f"{verb} --{name}"


@pytest.mark.parametrize(("model", "values", "message"), [
    (P.RankParams, {"pool": "p", "pool_name": "p", "budget": 5, "strategies": ["bogus"]},
     "strategies.0: unknown strategy 'bogus'; choose from 'random'"),
    (P.RankParams, {"pool": "p", "pool_name": "p", "budget": float("nan")},
     "budget: --budget must be > 0, got nan"),
    (P.RankParams, {"pool": "p", "pool_name": "p", "budget": 5, "unit": "words"},
     "unit: unknown unit 'words'; choose from 'items' or 'tokens'"),
    (P.SelectParams, {"name": "c", "queries": "q", "k": 0}, "k: Input should be greater"),
    (P.IndexParams, {"name": "c", "store_dtype": "int8"}, "store_dtype: unknown store_dtype"),
    (P.HandoffParams, {"run": "r", "format": "xml"}, "format: unknown format 'xml'"),
])
def test_a_bad_value_is_refused_naming_the_parameter(model, values, message):
    with pytest.raises(P.ParameterError) as err:
        model.of(values)
    assert message in str(err.value)


def test_unknown_keys_are_named_through_of():
    # of() keeps only fields (a flow's locals() hold more); model_validate refuses extras
    with pytest.raises(Exception, match="batch_sise"):
        P.EmbedParams.model_validate({"corpus": "c", "name": "n", "batch_sise": 8})


def test_run_keys_are_the_dicts_the_flows_hashed_before(tmp_path):
    pool = tmp_path / "pool.jsonl"
    pool.write_text("{}\n")
    rank = P.RankParams.of({"pool": str(pool), "pool_name": "p", "budget": 10.0,
                            "strategies": None, "actors": 4, "strict": True})
    assert rank.run_key() == {
        "pool": str(pool.resolve()), "pool_name": "p", "budget": 10.0, "unit": "items",
        "strategies": ["random", "mean_entropy", "k_center", "facility_location"],
        "targets": None, "allocation": "proportional", "batch_size": None, "lm": None,
        "max_new_tokens": 64, "uncertainty_metric": "mean_entropy", "corpus": None,
        "encoder": None, "seed": 0, "knn": 64, "lam": 0.1}
    q = tmp_path / "q.jsonl"
    q.write_text('{"text": "x"}\n')
    sel = P.SelectParams.of({"name": "c", "queries": str(q), "strategy": "nn-f"})
    assert sel.run_key() == {"name": "c", "queries": str(q.resolve()), "k": 200, "n": 50,
                             "lam": 0.01, "strategy": "nn-f", "seed": 0, "min_gain": None,
                             "nprobe": None, "rerank_factor": None, "dup_threshold": 0.9}
    embed = P.EmbedParams.of({"corpus": "/no/such/*.zst", "name": "c", "actors": 3})
    assert embed.run_key() == {"corpus": "/no/such/*.zst", "name": "c", "model": None,
                               "max_tokens": None, "shard_docs": 2000}
    index = P.IndexParams.of({"name": "c", "memory_budget": 512, "rebuild": True})
    assert index.run_key() == {"name": "c", "factory": "auto", "memory_budget": "512",
                               "target_recall": 0.95, "recall_k": 200, "store_dtype": "auto"}


def test_select_needs_exactly_one_prompt_file(tmp_path):
    with pytest.raises(P.ParameterError, match="exactly one of queries"):
        P.SelectParams.of({"name": "c"})
    with pytest.raises(P.ParameterError, match="does not exist"):
        P.SelectParams.of({"name": "c", "queries": str(tmp_path / "missing.jsonl")})
