"""The parameter models of the evaluation flows (flows.params.EvalTTTParams and
EvalBudgetParams) against the flow signatures, the CLI verbs and the run ids the flows
computed before the models existed (the dicts and ids below were printed by that code)."""

from __future__ import annotations

import inspect

import pytest

from flows.params import EvalBudgetParams, EvalTTTParams, ParameterError
from tasks.storage.runs import make_run_id

WS = "/ws"  # absolute and never created: the sample folder resolves to itself

#: (model, flow module, flow function, CLI verb)
FLOWS = [(EvalTTTParams, "flows.eval_ttt", "eval_ttt_flow", "eval-ttt"),
         (EvalBudgetParams, "flows.eval_budget", "eval_budget_flow", "eval-budget")]
IDS = ["eval-ttt", "eval-budget"]

OLD_TTT_DEFAULTS = {
    "name": "mini-pile", "sample": "/ws/sample", "n_docs": 8, "n": 8, "k": 200, "lam": 0.01,
    "lr": 0.0001, "seeds": [0, 1, 2], "strategies": ["sift", "nn", "random"],
    "split": "test", "lm": None, "max_train_tokens": 256, "prompt_chars": 800,
    "continuation_chars": 600}
OLD_BUDGET_DEFAULTS = {
    "sample": "/ws/sample", "n_select": 120, "n_test": 40,
    "budgets": [0.05, 0.1, 0.25, 0.5, 1.0],
    "strategies": ["random", "k_center", "facility_location", "sift"], "seeds": [0, 1, 2],
    "lr": 0.0001, "epochs": 1, "batch_size": 8, "lam": 0.1, "lm": None, "encoder": None,
    "max_prompt_tokens": 128, "max_response_tokens": 64}


def _flow(module: str, name: str):
    import importlib

    return getattr(importlib.import_module(module), name)


@pytest.mark.parametrize(("model", "module", "fn", "verb"), FLOWS, ids=IDS)
def test_flow_signature_is_the_model(model, module, fn, verb):
    sig = inspect.signature(_flow(module, fn).fn)
    params = {k: v.default for k, v in sig.parameters.items() if k not in model.CONTROL}
    assert set(model.CONTROL) <= set(sig.parameters)
    assert list(params) == [k for k in sig.parameters if k in model.model_fields]
    assert set(params) == set(model.model_fields)
    for k, default in params.items():
        if isinstance(model.default(k), list):  # None is the model's default (of() drops it)
            assert default is None and getattr(model.of({k: None}), k) == model.default(k), k
        else:
            assert default == model.default(k), k


@pytest.mark.parametrize(("model", "module", "fn", "verb"), FLOWS, ids=IDS)
def test_every_field_is_a_cli_option_with_the_same_default(model, module, fn, verb):
    import typer.main

    from flows.cli import _floats, _ints, _names, app

    cmd = typer.main.get_command(app).commands[verb]
    options = {p.name: p.default for p in cmd.params}
    assert set(options) == set(model.model_fields) | set(model.CONTROL)
    parse = {"seeds": _ints, "budgets": _floats, "strategies": _names}
    for k in model.model_fields:
        cli = parse[k](options[k]) if k in parse else options[k]
        assert cli == model.default(k), k


@pytest.mark.parametrize(("model", "bad", "named"), [
    (EvalTTTParams, {"strategies": ["sift", "k_center"]}, "strategies.1"),
    (EvalTTTParams, {"split": "train"}, "split"),
    (EvalTTTParams, {"n": 0}, "n:"),
    (EvalTTTParams, {"n": 50, "k": 20}, "k (20) must be at least n (50)"),
    (EvalTTTParams, {"seeds": []}, "seeds"),
    (EvalBudgetParams, {"budgets": [0.5, 1.5]}, "budgets.1"),
    (EvalBudgetParams, {"budgets": [0.0]}, "budgets.0"),
    (EvalBudgetParams, {"strategies": ["random", "nn"]}, "strategies.1"),
    (EvalBudgetParams, {"n_select": 1}, "n_select"),
    (EvalBudgetParams, {"threads": 0}, "threads"),
], ids=lambda v: "-".join(f"{k}={x}" for k, x in v.items()) if isinstance(v, dict) else "")
def test_a_bad_value_names_the_parameter(model, bad, named):
    with pytest.raises(ParameterError, match=model.FLOW) as err:
        model.of(bad)
    assert named in str(err.value)


@pytest.mark.parametrize(("module", "fn", "bad"), [
    ("flows.eval_ttt", "eval_ttt_flow", {"strategies": ["nope"]}),
    ("flows.eval_budget", "eval_budget_flow", {"budgets": [1.5]}),
], ids=IDS)
def test_the_flow_refuses_a_bad_value_before_any_work(tmp_path, module, fn, bad):
    with pytest.raises(ParameterError):
        _flow(module, fn).fn(workspace=str(tmp_path / "ws"), **bad)
    assert not (tmp_path / "ws").exists()


def test_budget_normalisations():
    p = EvalBudgetParams.of({"budgets": [0.5, 0.25], "strategies": ["sift", "k_center", "sift"],
                             "seeds": None})
    assert p.budgets == [0.25, 0.5, 1.0]  # sorted, the 100 % reference added
    assert p.strategies == ["random", "sift", "k_center"]  # distinct, random first
    assert p.seeds == [0, 1, 2]
    assert EvalBudgetParams.of({"budgets": [], "strategies": []}) == EvalBudgetParams()
    # what the CLI hands the flow validates to itself (the flow validates again)
    assert EvalBudgetParams.of(p.flow_kwargs()) == p
    q = EvalTTTParams.of({"strategies": None, "seeds": [4]})
    assert q.strategies == ["sift", "nn", "random"] and EvalTTTParams.of(q.flow_kwargs()) == q


def test_run_key_needs_the_sample_folder_resolved(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="in_workspace"):
        EvalTTTParams().run_key()
    monkeypatch.chdir(tmp_path)
    p = EvalBudgetParams(sample="rel/sample").in_workspace(WS)
    assert p.run_key()["sample"] == str(tmp_path.resolve() / "rel" / "sample")


def test_run_keys_and_ids_are_those_of_the_flows_before_the_models():
    ttt = EvalTTTParams().in_workspace(WS)
    assert ttt.run_key() == OLD_TTT_DEFAULTS
    assert make_run_id("eval-ttt", ttt.run_key()) == "eval-ttt-1014a193e9"
    # nn-f and adaptive-sift add their knobs (and only they); threads never counts
    ttt2 = EvalTTTParams.of({"strategies": ["sift", "nn-f", "adaptive-sift"], "alpha": 0.4,
                             "seeds": [3], "n": 4, "k": 8, "threads": 1}).in_workspace(WS)
    assert ttt2.run_key() == {**OLD_TTT_DEFAULTS, "n": 4, "k": 8, "seeds": [3],
                              "strategies": ["sift", "nn-f", "adaptive-sift"],
                              "dup_threshold": 0.9, "alpha": 0.4}
    assert make_run_id("eval-ttt", ttt2.run_key()) == "eval-ttt-d700405435"

    bud = EvalBudgetParams(threads=2).in_workspace(WS)
    assert bud.run_key() == OLD_BUDGET_DEFAULTS
    assert make_run_id("eval-budget", bud.run_key()) == "eval-budget-80fb339f70"
    # an uncertainty strategy adds the scorer's knobs
    bud2 = EvalBudgetParams.of({"budgets": [0.5, 0.25], "seeds": [3], "max_new_tokens": 6,
                                "strategies": ["k_center", "mean_entropy"]}).in_workspace(WS)
    assert bud2.run_key() == {**OLD_BUDGET_DEFAULTS, "budgets": [0.25, 0.5, 1.0],
                              "strategies": ["random", "k_center", "mean_entropy"],
                              "seeds": [3], "max_new_tokens": 6, "gen_batch_size": 16}
    assert make_run_id("eval-budget", bud2.run_key()) == "eval-budget-410784e18f"
