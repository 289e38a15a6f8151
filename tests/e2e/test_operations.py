"""Operations, end to end through the installed CLI in separate processes:

* a Ray cluster started with `ray start --head` on loopback runs the embed flow;
* an embed run killed with SIGKILL midway resumes to exactly the uninterrupted contents,
  and `run_attempts` records the crashed attempt;
* two runs at once on one workspace: the same corpus -> the second fails fast with
  "workspace busy"; two selections -> both complete (DuckDB writes are serialised).

Every process a test starts is stopped by its process group id.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from tasks.sample.bundled import build_sample
from tasks.storage import db
from tests.e2e.procs import CLI, RAY, clean_env, free_port, stop

pytestmark = pytest.mark.e2e


def _env(ws: Path, **extra: str) -> dict:
    return clean_env(ws, ws / ".prefect", **extra)


def _start(cmd: list[str], env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def _run(cmd: list[str], env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def pile(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("ops-sample")
    return build_sample(root, n_docs=160, n_queries=6, pool_size=30)["paths"]["pile_dir"]


def _rows(ws: Path, name: str):
    files = sorted((ws / "corpora" / name / "embeddings").glob("part-*.parquet"))
    return pq.read_table([str(f) for f in files]).sort_by("doc_id")


def test_embed_runs_on_a_ray_cluster_started_with_ray_start(tmp_path, pile):
    port = free_port()
    # 127.0.0.2: Ray replaces 127.0.0.1 by the machine's network address; another
    # loopback address keeps every connection on this machine's loopback device
    address = f"127.0.0.2:{port}"
    env = _env(tmp_path / "ws")
    head = _start([RAY, "start", "--head", "--block", f"--port={port}", "--num-cpus=2",
                   "--node-ip-address=127.0.0.2", "--include-dashboard=false",
                   "--disable-usage-stats"], env, tmp_path / "ray-head.log")
    try:
        deadline = time.monotonic() + 180
        # `ray status` sends the cluster's token only when told to; the CLI does it itself
        status_env = {**env, "RAY_AUTH_MODE": "token"}
        while _run([RAY, "status", f"--address={address}"], status_env, 60).returncode != 0:
            assert head.poll() is None, (tmp_path / "ray-head.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "ray head did not come up"
            time.sleep(2)
        res = _run([CLI, "embed", "--corpus", pile, "--name", "clu", "--shard-docs", "40",
                    "--ray-address", address], env)
        assert res.returncode == 0, res.stderr[-3000:]
    finally:
        stop(head)
    assert head.poll() is not None
    summary = db.query(tmp_path / "ws" / "curation.duckdb",
                       "SELECT summary FROM runs WHERE flow = 'embed'")[0][0]
    ray = json.loads(summary)["ray"]
    # the job ran on that cluster (its GCS port), not on a local Ray of its own
    assert ray["gcs_address"].endswith(f":{port}") and ray["address_env"] == address
    assert _rows(tmp_path / "ws", "clu").num_rows == json.loads(summary)["chunks_total"] > 0


def _embed_cmd(pile: str, name: str = "c") -> list[str]:
    return [CLI, "embed", "--corpus", pile, "--name", name, "--shard-docs", "8"]


def test_sigkilled_embed_resumes_to_the_uninterrupted_contents(tmp_path, pile):
    ref_ws, ws = tmp_path / "ref", tmp_path / "crash"
    ref = _run(_embed_cmd(pile), _env(ref_ws))
    assert ref.returncode == 0, ref.stderr[-3000:]
    expected = _rows(ref_ws, "c")
    n_shards = len(list((ref_ws / "corpora/c/embeddings").glob("part-*.parquet")))

    victim = _start(_embed_cmd(pile), _env(ws), tmp_path / "victim.log")
    shards = ws / "corpora" / "c" / "embeddings"
    deadline = time.monotonic() + 600
    while not list(shards.glob("part-*.parquet")):
        assert victim.poll() is None, (tmp_path / "victim.log").read_text()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.1)
    stop(victim, signal.SIGKILL)
    written = len(list(shards.glob("part-*.parquet")))
    assert 0 < written < n_shards, "the run was not interrupted midway"

    again = _run(_embed_cmd(pile), _env(ws))
    assert again.returncode == 0, again.stderr[-3000:]
    got = _rows(ws, "c")
    assert got["doc_id"].to_pylist() == expected["doc_id"].to_pylist()  # none lost or doubled
    assert got["text"].equals(expected["text"])
    np.testing.assert_allclose(np.stack(got["embedding"].to_numpy(zero_copy_only=False)),
                               np.stack(expected["embedding"].to_numpy(zero_copy_only=False)),
                               atol=1e-5)
    assert not list(shards.glob(".*.tmp"))
    attempts = db.query(ws / "curation.duckdb",
                        "SELECT a.attempt, a.status FROM run_attempts a JOIN runs r "
                        "USING (run_id) WHERE r.flow = 'embed' ORDER BY a.attempt")
    assert attempts == [(1, "crashed"), (2, "completed")]


def test_concurrent_runs_on_one_workspace(tmp_path, pile):
    ws = tmp_path / "ws"
    env = _env(ws)
    first = _start(_embed_cmd(pile, "busy"), env, tmp_path / "first.log")
    lock = ws / ".locks" / "corpus-busy.lock"
    deadline = time.monotonic() + 300
    while not (lock.is_file() and lock.stat().st_size > 0):
        assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.1)
    t0 = time.monotonic()
    second = _run(_embed_cmd(pile, "busy") + ["--batch-size", "32"], env)
    assert second.returncode != 0
    assert "workspace busy: corpus 'busy' is in use by pid" in second.stderr
    assert time.monotonic() - t0 < 120  # fails fast: it does not wait for the first
    assert first.wait(600) == 0, (tmp_path / "first.log").read_text()[-3000:]

    assert _run([CLI, "index", "--name", "busy"], env).returncode == 0
    queries = str(Path(pile).parent / "queries.jsonl")
    runs = [_start([CLI, "select", "--name", "busy", "--queries", queries, "--k", "30",
                    "--n", "5", "--strategy", s], env, tmp_path / f"select-{s}.log")
            for s in ("sift", "nn")]
    for proc, s in zip(runs, ("sift", "nn"), strict=True):
        assert proc.wait(600) == 0, (tmp_path / f"select-{s}.log").read_text()[-3000:]
    rows = db.query(ws / "curation.duckdb",
                    "SELECT strategy, count(DISTINCT query_id), count(*) FROM "
                    "test_time_selections GROUP BY 1 ORDER BY 1")
    assert rows == [("nn", 6, 30), ("sift", 6, 30)]
    statuses = db.query(ws / "curation.duckdb",
                        "SELECT flow, status, count(*) FROM runs GROUP BY ALL ORDER BY ALL")
    assert statuses == [("embed", "completed", 1), ("index", "completed", 1),
                        ("select", "completed", 2)]


def _rank_tables(dbf: Path) -> dict:
    q = {
        "pool_items": "SELECT item_id, instruction, input, source FROM pool_items ORDER BY ALL",
        "item_scores": "SELECT item_id, metric, round(value, 5) FROM item_scores ORDER BY ALL",
        "selections": "SELECT strategy, rank, item_id, batch FROM selections ORDER BY ALL",
        "budgets": "SELECT strategy, grp, allocated, spent FROM budgets ORDER BY ALL",
    }
    return {name: db.query(dbf, sql) for name, sql in q.items()}


def test_sigkilled_rank_reruns_to_the_uninterrupted_contents(tmp_path):
    from tests.tiny_lm import build_tiny_lm

    lm = build_tiny_lm(tmp_path / "lm")
    pool = build_sample(tmp_path / "s", n_docs=40, n_queries=4, pool_size=60)["paths"]["pool"]
    cmd = [CLI, "rank", "--pool", pool, "--pool-name", "p", "--budget", "12", "--batch-size",
           "4", "--strategy", "random", "--strategy", "mean_entropy", "--lm", str(lm),
           "--max-new-tokens", "6"]
    ref_ws, ws = tmp_path / "ref", tmp_path / "crash"
    ref = _run(cmd, _env(ref_ws))
    assert ref.returncode == 0, ref.stderr[-3000:]
    expected = _rank_tables(ref_ws / "curation.duckdb")
    assert len(expected["selections"]) == 24 and len(expected["item_scores"]) > 0

    log = tmp_path / "victim.log"
    victim = _start(cmd, _env(ws), log)
    deadline = time.monotonic() + 600
    # killed while the LM scores the pool: ingest has written pool_items, nothing else yet
    while "LM uncertainty" not in log.read_text(errors="replace"):
        assert victim.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.1)
    stop(victim, signal.SIGKILL)
    dbf = ws / "curation.duckdb"
    assert db.query(dbf, "SELECT count(*) FROM selections") == [(0,)]

    again = _run(cmd, _env(ws))
    assert again.returncode == 0, again.stderr[-3000:]
    assert _rank_tables(dbf) == expected  # nothing lost, nothing doubled
    assert db.query(dbf, "SELECT attempt, status FROM run_attempts ORDER BY attempt") == [
        (1, "crashed"), (2, "completed")]
