"""A two-node Ray cluster on loopback (a head and a worker started with `ray start`): the
index partitions are served by actors on both nodes, and `select` gives exactly the rows a
local search gives. Through the CLI: import-embeddings -> index -> select."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.storage import db
from tests.e2e.procs import CLI, RAY, clean_env, free_port, stop

pytestmark = pytest.mark.e2e

DIM = 32


def _run(cmd: list[str], env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def _start(cmd: list[str], env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def _wait_for_nodes(address: str, env: dict, n: int, procs: list, logs: list) -> None:
    deadline = time.monotonic() + 180
    probe = "import ray; ray.init(); print(sum(x['Alive'] for x in ray.nodes()))"
    py = str(Path(RAY).parent / "python")
    while True:
        for p, log in zip(procs, logs, strict=True):
            assert p.poll() is None, log.read_text()[-3000:]
        res = _run([py, "-c", probe], {**env, "RAY_ADDRESS": address}, 60)
        if res.returncode == 0 and res.stdout.strip().splitlines()[-1] == str(n):
            return
        assert time.monotonic() < deadline, f"{n} Ray nodes did not come up: {res.stderr[-2000:]}"
        time.sleep(2)


def test_partitions_on_two_nodes_give_the_local_results(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3000, DIM)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    pq.write_table(pa.table({
        "doc_id": np.arange(3000, dtype=np.int64) * 7 + 11,
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), DIM),
        "text": [f"chunk {i}" for i in range(3000)],
    }), tmp_path / "vectors.parquet")
    np.save(tmp_path / "q.npy", x[:12] + 0.01 * rng.standard_normal((12, DIM)))
    ws = tmp_path / "ws"
    # the token file `ray start` writes lives in HOME: keep it inside the test
    env = clean_env(ws, ws / ".prefect", HOME=str(tmp_path), RAY_AUTH_MODE="token")
    steps = [
        [CLI, "import-embeddings", "--name", "vec", "--from", str(tmp_path / "vectors.parquet"),
         "--shard-rows", "500"],
        [CLI, "index", "--name", "vec", "--factory", "IVF16,PQ8x8", "--memory-budget", "20KB",
         "--recall-k", "20", "--block-vectors", "500"],
        [CLI, "select", "--name", "vec", "--query-embeddings", str(tmp_path / "q.npy"),
         "--strategy", "sift", "--k", "20", "--n", "5", "--run-id", "local"],
    ]
    for cmd in steps:
        res = _run(cmd, env)
        assert res.returncode == 0, res.stderr[-3000:]
    meta = json.loads((ws / "corpora/vec/index/index.json").read_text())
    assert len(meta["partitions"]) >= 3

    port = free_port()
    # 127.0.0.2/3: Ray replaces 127.0.0.1 by the machine's network address; other
    # loopback addresses keep every connection on the loopback device
    address = f"127.0.0.2:{port}"
    logs = [tmp_path / "head.log", tmp_path / "worker.log"]
    head = _start([RAY, "start", "--head", "--block", f"--port={port}", "--num-cpus=1",
                   "--node-ip-address=127.0.0.2", "--include-dashboard=false",
                   "--disable-usage-stats"], env, logs[0])
    procs = [head]
    try:
        _wait_for_nodes(address, env, 1, procs, logs[:1])
        procs.append(_start([RAY, "start", f"--address={address}", "--block",
                             "--num-cpus=1", "--node-ip-address=127.0.0.3",
                             "--disable-usage-stats"], env, logs[1]))
        _wait_for_nodes(address, env, 2, procs, logs)
        res = _run([CLI, "select", "--name", "vec", "--query-embeddings",
                    str(tmp_path / "q.npy"), "--strategy", "sift", "--k", "20", "--n", "5",
                    "--run-id", "cluster", "--ray-address", address], env)
        assert res.returncode == 0, res.stderr[-3000:]
    finally:
        for p in reversed(procs):
            stop(p)
    dbf = ws / "curation.duckdb"
    summary = json.loads(db.query(dbf, "SELECT summary FROM runs WHERE run_id = 'cluster'")
                         [0][0])
    assert summary["search_nodes"] == 2  # partitions were served on both nodes
    rows = {rid: db.query(dbf, "SELECT query_id, rank, doc_id, posterior_variance, "
                          "similarity FROM test_time_selections WHERE run_id = ? "
                          "ORDER BY query_id, rank", [rid]) for rid in ("local", "cluster")}
    assert len(rows["local"]) == 12 * 5
    assert [r[:3] for r in rows["cluster"]] == [r[:3] for r in rows["local"]]
    np.testing.assert_allclose([r[3:] for r in rows["cluster"]],
                               [r[3:] for r in rows["local"]], atol=1e-6)
