"""Curation jobs as configuration: one model behind the flow, the CLI and the deployments;
bad files named down to the key; scheduled deployments that could never run refused."""

from __future__ import annotations

import inspect
import os
from pathlib import Path

import pytest
import yaml

from flows.jobs import (
    ConfigError,
    CurationJob,
    default_jobs,
    find_job,
    load_jobs,
    parse_jobs,
    validate_job,
)

TWO_JOBS = """
defaults:
  budget: 20
  strategies: [random, k_center]
  handoff_strategy: k_center
jobs:
  news:
    corpus: /data/news/*.jsonl.zst
    corpus_name: news
    pool: /data/pools/news.jsonl
    pool_name: news-pool
    schedule: "30 2 * * *"
  code:
    corpus: /data/code/
    corpus_name: code
    pool: /data/pools/code.jsonl
    pool_name: code-pool
    budget: 500
    unit: tokens
    schedule: {cron: "0 4 * * 1", timezone: Europe/Berlin}
  adhoc:
    budget: 5
    schedule: null
"""


def _write(tmp_path: Path, text: str, name: str = "jobs.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_the_flow_signature_is_the_job_model():
    from flows.curation_run import curation_run_flow

    sig = inspect.signature(curation_run_flow.fn)
    params = {k: p.default for k, p in sig.parameters.items() if k != "workspace"}
    assert list(params) == list(CurationJob.model_fields)
    defaults = CurationJob()
    for name, default in params.items():
        expected = getattr(defaults, name)
        assert default == expected or (name == "strategies" and default is None), name


def test_every_job_key_is_a_cli_option():
    import typer.main

    from flows.cli import app

    cmd = typer.main.get_command(app).commands["curation-run"]
    options = {p.name for p in cmd.params}
    renamed = {"strategies": "strategy"}
    missing = [k for k in CurationJob.model_fields if renamed.get(k, k) not in options]
    assert not missing, missing
    # and the other way round: the verb passes its options on by name, so an option that
    # is not a job key (nor --config, --job, --workspace) would be dropped silently
    fields = {renamed.get(k, k) for k in CurationJob.model_fields}
    assert options - fields == {"config", "job", "workspace"}


def test_a_two_job_file_merges_defaults_and_keeps_schedules(tmp_path):
    jobs = load_jobs(_write(tmp_path, TWO_JOBS))
    assert [j.name for j in jobs] == ["news", "code", "adhoc"]
    news, code, adhoc = jobs
    assert news.job.budget == 20 and news.job.strategies == ["random", "k_center"]
    assert news.schedule.cron == "30 2 * * *" and news.schedule.timezone == "UTC"
    assert code.job.budget == 500 and code.job.unit == "tokens"
    assert code.schedule.timezone == "Europe/Berlin"
    assert adhoc.schedule is None and adhoc.job.uses_sample
    assert adhoc.job.effective_shard_docs() == 250 and news.job.effective_shard_docs() == 2000
    # a deployment carries only what differs from the defaults
    assert news.job.parameters() == {
        "corpus": "/data/news/*.jsonl.zst", "corpus_name": "news",
        "pool": "/data/pools/news.jsonl", "pool_name": "news-pool", "budget": 20.0,
        "strategies": ["random", "k_center"], "handoff_strategy": "k_center"}
    assert find_job(jobs, "code", "f").job.corpus_name == "code"
    with pytest.raises(ConfigError, match="has 3 jobs.*choose one with --job"):
        find_job(jobs, None, "f")
    with pytest.raises(ConfigError, match="no job 'nope'"):
        find_job(jobs, "nope", "f")


@pytest.mark.parametrize(("body", "message"), [
    ("jobs:\n  a: {budgt: 3}\n", r"jobs\.a: budgt: unknown key \(did you mean 'budget'\?\)"),
    ("jobs:\n  a: {budget: -1}\n", r"jobs\.a: budget: Input should be greater than 0"),
    ("jobs:\n  a: {budget: .nan}\n", r"jobs\.a: budget: "),
    ("jobs:\n  a: {strategies: [sift, bogus]}\n", r"jobs\.a: strategies\.1: .*got 'bogus'"),
    ("jobs:\n  a: {unit: bytes}\n", r"jobs\.a: unit: Input should be 'items' or 'tokens'"),
    ("jobs:\n  a: {handoff_strategy: sift}\n",
     r"jobs\.a: handoff_strategy 'sift' is not among the strategies ranked"),
    ("jobs:\n  a: {corpus: /x}\n", r"jobs\.a: corpus is given, so corpus_name is needed"),
    ("jobs:\n  a: {schedule: '0 99 * * *'}\n", r"jobs\.a\.schedule: Invalid cron string"),
    ("jobs:\n  a: {schedule: {cron: '0 1 * * *', timezone: Mars/Base}}\n",
     r"jobs\.a\.schedule: Invalid timezone"),
    ("jobs:\n  a b: {}\n", r"jobs\.a b: invalid job name"),
    ("jobs: {}\n", r"jobs: expected a mapping of job name -> job keys"),
    ("job:\n  a: {}\n", r"unknown top-level key\(s\) job"),
    ("jobs:\n  a: [1, 2]\n", r"jobs\.a: expected a mapping of job keys, got list"),
    ("jobs:\n  a: {budget: 3\n", r"not valid YAML"),
])
def test_bad_files_name_the_file_job_and_key(tmp_path, body, message):
    path = _write(tmp_path, body)
    with pytest.raises(ConfigError, match=message) as err:
        load_jobs(path)
    assert str(path) in str(err.value)


def test_every_error_of_a_file_is_reported_at_once(tmp_path):
    path = _write(tmp_path, "jobs:\n  a: {unit: bytes, schedule: nope}\n  b: {lm: 3}\n")
    with pytest.raises(ConfigError) as err:
        load_jobs(path)
    text = str(err.value)
    assert "jobs.a: unit" in text and "jobs.a.schedule" in text and "jobs.b: lm" in text


def test_missing_and_non_utf8_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_jobs(tmp_path / "none.yaml")
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes("jobs:\n  caf\xe9: {}\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="latin1.yaml: not UTF-8"):
        load_jobs(bad)


def test_parameters_from_options_are_validated_too():
    with pytest.raises(ConfigError, match="options: budget: Input should be greater than 0"):
        validate_job({"budget": 0}, "options")
    assert validate_job({"budget": 7}).budget == 7


@pytest.fixture
def workspace_env(tmp_path, monkeypatch):
    monkeypatch.setenv("SIFT_WORKSPACE", str(tmp_path / "ws"))
    return tmp_path / "ws"


def test_serve_builds_one_curation_deployment_per_job(tmp_path, workspace_env):
    from deployments.serve import build_deployments, check_schedulable

    jobs = load_jobs(_write(tmp_path, TWO_JOBS))
    deployments = {f"{d.flow_name}/{d.name}": d for d in build_deployments(jobs=jobs)}
    assert {"curation-run/news", "curation-run/code", "curation-run/adhoc",
            "embed/embed", "rank/rank"} <= set(deployments)
    assert "curation-run/nightly" not in deployments
    news = deployments["curation-run/news"]
    assert news.parameters["corpus_name"] == "news"
    assert news.parameters["workspace"] == str(workspace_env)
    assert news.schedules[0].schedule.cron == "30 2 * * *"
    code = deployments["curation-run/code"].schedules[0].schedule
    assert (code.cron, code.timezone) == ("0 4 * * 1", "Europe/Berlin")
    assert not deployments["curation-run/adhoc"].schedules
    check_schedulable(list(deployments.values()))  # nothing required is missing


def test_the_default_nightly_needs_no_parameters(workspace_env):
    from deployments.serve import build_deployments, check_schedulable, missing_required

    nightly = [d for d in build_deployments() if d.flow_name == "curation-run"]
    assert [d.name for d in nightly] == ["nightly"]
    assert nightly[0].parameters == {"workspace": str(workspace_env)}
    assert nightly[0].schedules[0].schedule.cron == "0 3 * * *"
    assert missing_required(nightly[0]) == []
    check_schedulable(nightly)
    assert [j.name for j in default_jobs(None)] == ["nightly"]
    assert default_jobs(None)[0].schedule is None


def test_a_scheduled_deployment_missing_required_parameters_is_refused(workspace_env):
    from deployments.serve import check_schedulable
    from flows.embed import embed_flow

    d = embed_flow.to_deployment(name="embed-nightly", cron="0 1 * * *",
                                 parameters={"workspace": os.environ["SIFT_WORKSPACE"]})
    with pytest.raises(ConfigError, match=r"embed/embed-nightly: scheduled, but the required "
                                          r"parameter\(s\) corpus, name are not set"):
        check_schedulable([d])
    # unscheduled it is fine: a person supplies the parameters per run
    check_schedulable([embed_flow.to_deployment(name="embed", parameters={})])


def test_prefect_yaml_has_one_curation_deployment_per_job(tmp_path):
    from deployments.serve import main

    out = tmp_path / "prefect.jobs.yaml"
    main(["--config", str(_write(tmp_path, TWO_JOBS)), "--prefect-yaml", str(out),
          "--workspace", "/data/ws"])
    doc = yaml.safe_load(out.read_text())
    by_name = {d["name"]: d for d in doc["deployments"]}
    assert {"news", "code", "adhoc", "embed", "rank", "handoff"} <= set(by_name)
    assert "nightly" not in by_name
    news = by_name["news"]
    assert news["entrypoint"] == "flows/curation_run.py:curation_run_flow"
    assert news["parameters"]["pool_name"] == "news-pool"
    assert news["parameters"]["workspace"] == "/data/ws"
    assert news["schedules"] == [{"cron": "30 2 * * *", "timezone": "UTC"}]
    assert "schedules" not in by_name["adhoc"]
    assert news["work_pool"]["name"] == "sift-local"
    # every parameter a job sets is a parameter of the flow
    from flows.curation_run import curation_run_flow

    names = set(inspect.signature(curation_run_flow.fn).parameters)
    for d in by_name.values():
        if d["entrypoint"].startswith("flows/curation_run.py"):
            assert set(d.get("parameters", {})) <= names


def test_the_shipped_prefect_yaml_nightly_needs_no_parameters():
    import deployments.serve as serve

    doc = yaml.safe_load(serve.PREFECT_YAML.read_text())
    nightly = next(d for d in doc["deployments"] if d["name"] == "nightly")
    assert nightly["entrypoint"] == "flows/curation_run.py:curation_run_flow"
    assert not nightly.get("parameters")
    assert nightly["schedules"][0]["cron"] == "0 3 * * *"


def test_serve_refuses_a_bad_jobs_file_before_serving(tmp_path, capsys):
    from deployments.serve import main

    with pytest.raises(SystemExit, match=r"jobs\.a: budget"):
        main(["--config", str(_write(tmp_path, "jobs:\n  a: {budget: -3}\n"))])


def test_parse_jobs_rejects_a_non_mapping():
    with pytest.raises(ConfigError, match="expected a mapping with a 'jobs' key"):
        parse_jobs([1, 2], "x.yaml")


def test_nn_f_is_a_valid_curation_strategy():
    from flows.jobs import CurationJob

    job = CurationJob(strategies=["nn-f", "random"], handoff_strategy="nn-f")
    assert job.strategies == ["nn-f", "random"]
