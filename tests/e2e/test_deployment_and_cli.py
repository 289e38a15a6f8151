"""End to end: the installed `sift-curate` CLI, and a real `prefect server` with the flows
served as deployments and started by `prefect deployment run`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tasks.sample.bundled import build_sample
from tasks.storage import db
from tests.e2e.procs import CLI, PREFECT, clean_env, free_port, stop

pytestmark = pytest.mark.e2e


def _env(tmp_path: Path, **extra: str) -> dict:
    return clean_env(tmp_path / "ws", tmp_path / "prefect-home", **extra)


def test_cli_help_explains_every_option():
    out = subprocess.run([CLI, "--help"], capture_output=True, text=True, check=True).stdout
    for verb in ("sample", "embed", "index", "select", "demo", "sql"):
        assert verb in out
    out = subprocess.run([CLI, "select", "--help"], capture_output=True, text=True,
                         check=True, env={**os.environ, "COLUMNS": "200"}).stdout
    for option in ("--name", "--queries", "--k", "--n", "--lam", "--strategy", "--min-gain",
                   "--nprobe", "--run-id", "--workspace"):
        assert option in out, option


def test_cli_reports_bad_strategy_clearly(tmp_path):
    res = subprocess.run([CLI, "select", "--name", "nothing", "--queries", "q.jsonl",
                          "--strategy", "bogus"], capture_output=True, text=True,
                         env=_env(tmp_path), timeout=300)
    assert res.returncode != 0
    assert "unknown strategy 'bogus'" in res.stdout + res.stderr


def _wait(cmd: list[str], env: dict, ok, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    out = ""
    while time.monotonic() < deadline:
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)
        out = res.stdout + res.stderr
        if res.returncode == 0 and ok(out):
            return out
        time.sleep(2)
    raise AssertionError(f"timed out waiting for {cmd}: {out[-2000:]}")


def _serve(env: dict, logs: Path, name: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "deployments.serve", *args], env=env,
        cwd=Path(__file__).resolve().parents[2], stdout=open(logs / f"{name}.log", "w"),
        stderr=subprocess.STDOUT, start_new_session=True)


def _run_deployment(name: str, env: dict, logs: Path, serve_log: str) -> str:
    """`prefect deployment run NAME --watch` with no parameters, as the scheduler sends it."""
    res = subprocess.run([PREFECT, "deployment", "run", name, "--watch", "--watch-timeout",
                          "900"], capture_output=True, text=True, env=env, timeout=960)
    out = res.stdout + res.stderr
    assert res.returncode == 0 and "Completed" in out, out[-3000:] + (
        (logs / serve_log).read_text()[-3000:])
    return out


def _curation_counts(dbf: Path) -> tuple:
    return (db.query(dbf, "SELECT strategy, count(*) FROM selections GROUP BY 1 ORDER BY 1"),
            db.query(dbf, "SELECT flow, count(*) FROM runs GROUP BY 1 ORDER BY 1"),
            db.query(dbf, "SELECT count(*), sum(n_items) FROM handoffs"))


def test_scheduled_curation_deployments_run_with_no_parameters(tmp_path):
    """prefect server + `python -m deployments.serve` (no config: curation-run/nightly on
    the workspace's sample) + `prefect deployment run` with no parameters, twice; then
    serve --config with a two-job YAML file and run one job, again with no parameters."""
    ws = tmp_path / "ws"
    build_sample(ws / "sample", n_docs=40, n_queries=4, pool_size=24)  # nightly's default
    other = build_sample(tmp_path / "other", n_docs=40, n_queries=4, pool_size=20, seed=1)
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = _env(tmp_path, PREFECT_API_URL=api)
    server_env = {k: v for k, v in env.items() if k != "PREFECT_API_URL"}
    logs = tmp_path / "logs"
    logs.mkdir()
    server = subprocess.Popen(
        [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=server_env, stdout=open(logs / "server.log", "w"), stderr=subprocess.STDOUT,
        start_new_session=True)
    serve = None
    dbf = ws / "curation.duckdb"
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text(f"""
defaults:
  budget: 10
  batch_size: 5
  strategies: [random, k_center]
  handoff_strategy: k_center
  handoff_format: jsonl
jobs:
  other-nightly:
    corpus: {other["paths"]["pile_dir"]}
    corpus_name: other-pile
    pool: {other["paths"]["pool"]}
    pool_name: other-pool
    shard_docs: 30
    schedule: "15 1 * * *"
  sample-weekly:
    schedule: {{cron: "0 5 * * 0", timezone: Europe/Berlin}}
""")
    try:
        _wait([sys.executable, "-c", f"import urllib.request;urllib.request.urlopen("
               f"'{api}/health').read()"], env, lambda _: True, 120)
        serve = _serve(env, logs, "serve")
        _wait([PREFECT, "deployment", "ls"], env, lambda out: "curation-run/nightly" in out,
              180)
        inspect = subprocess.run([PREFECT, "deployment", "inspect", "curation-run/nightly"],
                                 capture_output=True, text=True, env=env, timeout=60).stdout
        assert "0 3 * * *" in inspect  # the nightly cron schedule
        _run_deployment("curation-run/nightly", env, logs, "serve.log")
        first = _curation_counts(dbf)
        assert dict(first[0]) == {"facility_location": 24, "random": 24}
        _run_deployment("curation-run/nightly", env, logs, "serve.log")
        assert _curation_counts(dbf) == first  # replaced, never duplicated
        runs = db.query(dbf, "SELECT summary FROM runs WHERE flow = 'rank'")
        assert json.loads(runs[0][0])["new_items"] == 0
        index = db.query(dbf, "SELECT summary FROM runs WHERE flow = 'index'")
        assert json.loads(index[0][0])["new_vectors"] == 0
        stop(serve)

        serve = _serve(env, logs, "serve-config", "--config", str(jobs))
        _wait([PREFECT, "deployment", "ls"], env,
              lambda out: "curation-run/other-nightly" in out
              and "curation-run/sample-weekly" in out, 180)
        inspect = subprocess.run([PREFECT, "deployment", "inspect",
                                  "curation-run/sample-weekly"], capture_output=True,
                                 text=True, env=env, timeout=60).stdout
        assert "0 5 * * 0" in inspect and "Europe/Berlin" in inspect
        _run_deployment("curation-run/other-nightly", env, logs, "serve-config.log")
    finally:
        if serve is not None:
            stop(serve)
        stop(server)
    assert serve.poll() is not None and server.poll() is not None
    assert db.query(dbf, "SELECT strategy, count(*), max(batch) FROM selections "
                    "WHERE pool_name = 'other-pool' GROUP BY 1 ORDER BY 1") == [
        ("k_center", 10, 2), ("random", 10, 2)]
    files = db.query(dbf, "SELECT path, n_items FROM handoffs WHERE path LIKE '%.jsonl' "
                     "ORDER BY path")
    assert [n for _, n in files] == [5, 5]
    for path, _ in files:
        lines = Path(path).read_text().splitlines()
        assert len(lines) == 5 and all("text" in json.loads(line) for line in lines)


def test_serve_refuses_a_bad_jobs_file_naming_the_key(tmp_path):
    bad = tmp_path / "jobs.yaml"
    bad.write_text("jobs:\n  nightly:\n    budgt: 10\n")
    res = subprocess.run([sys.executable, "-m", "deployments.serve", "--config", str(bad)],
                         capture_output=True, text=True, env=_env(tmp_path), timeout=120,
                         cwd=Path(__file__).resolve().parents[2])
    assert res.returncode != 0
    assert f"{bad}: jobs.nightly: budgt: unknown key (did you mean 'budget'?)" in res.stderr
