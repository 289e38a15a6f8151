"""`sift-curate sql` is a read-only DuckDB query: no Prefect server, Ray or torch behind it."""

from __future__ import annotations

import subprocess
import sys

from tasks.storage import db

_PROBE = """
import sys
sys.argv = ["sift-curate", "sql", "SELECT 40 + 2 AS answer", "--workspace", sys.argv[1]]
from flows import cli
try:
    cli.main()
except SystemExit as e:
    assert not e.code, e.code
print("heavy:", sorted(m for m in ("prefect", "ray", "torch") if m in sys.modules))
"""


def test_sql_opens_duckdb_directly(tmp_path):
    with db.connect(tmp_path / "curation.duckdb"):
        pass  # creates the schema
    res = subprocess.run([sys.executable, "-c", _PROBE, str(tmp_path)], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert [line.strip() for line in res.stdout.splitlines()[:3]] == ["answer", "------", "42"]
    assert res.stdout.splitlines()[-1] == "heavy: []"
