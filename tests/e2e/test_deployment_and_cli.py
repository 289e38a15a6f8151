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

from tasks import db
from tasks.sample import build_sample
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


def test_nightly_curation_deployment_through_a_real_prefect_server(tmp_path):
    """prefect server + `python -m deployments.serve` + `prefect deployment run
    'curation-run/nightly'`: embed -> index -> rank -> handoff, checked in DuckDB."""
    sample = build_sample(tmp_path / "sample", n_docs=60, n_queries=4, pool_size=40)
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
    params = {"corpus": sample["paths"]["pile_dir"], "name": "nightly-pile",
              "pool": sample["paths"]["pool"], "pool_name": "nightly-pool", "budget": 10,
              "strategies": ["random", "k_center"], "handoff_strategy": "k_center",
              "handoff_format": "jsonl", "batch_size": 5, "shard_docs": 30}
    try:
        _wait([sys.executable, "-c", f"import urllib.request;urllib.request.urlopen("
               f"'{api}/health').read()"], env, lambda _: True, 120)
        serve = subprocess.Popen(
            [sys.executable, "-m", "deployments.serve"], env=env,
            cwd=Path(__file__).resolve().parents[2], stdout=open(logs / "serve.log", "w"),
            stderr=subprocess.STDOUT, start_new_session=True)
        _wait([PREFECT, "deployment", "ls"], env, lambda out: "curation-run/nightly" in out,
              180)
        inspect = subprocess.run([PREFECT, "deployment", "inspect", "curation-run/nightly"],
                                 capture_output=True, text=True, env=env, timeout=60).stdout
        assert "0 3 * * *" in inspect  # the nightly cron schedule
        res = subprocess.run(
            [PREFECT, "deployment", "run", "curation-run/nightly", "--params",
             json.dumps(params), "--watch", "--watch-timeout", "900"],
            capture_output=True, text=True, env=env, timeout=960)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:] + (
            (logs / "serve.log").read_text()[-3000:])
        assert "Completed" in res.stdout + res.stderr
    finally:
        if serve is not None:
            stop(serve)
        stop(server)
    assert serve.poll() is not None and server.poll() is not None
    dbf = tmp_path / "ws" / "curation.duckdb"
    assert db.query(dbf, "SELECT flow, status FROM runs ORDER BY flow") == [
        ("embed", "completed"), ("index", "completed"), ("rank", "completed")]
    assert db.query(dbf, "SELECT strategy, count(*), max(batch) FROM selections "
                    "GROUP BY 1 ORDER BY 1") == [("k_center", 10, 2), ("random", 10, 2)]
    files = db.query(dbf, "SELECT path, n_items FROM handoffs ORDER BY path")
    assert [n for _, n in files] == [5, 5]
    for path, _ in files:
        lines = Path(path).read_text().splitlines()
        assert len(lines) == 5 and all("text" in json.loads(line) for line in lines)
