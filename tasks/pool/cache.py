"""Per-pool cache of what ranking computes item by item (LM scores, prompt embeddings), so
a rerun on a grown pool computes only the new items.

    <workspace>/pools/<pool_name>/cache/<kind>-<key>.parquet

``key`` is a hash of what the values depend on (the model folder and its weight files'
sizes and times, the generation settings); each row holds ``item_id``, ``content`` (a
hash of the item's instruction and input, so an explicit item id whose text changed is
computed anew) and the values. All joins run in an in-memory DuckDB over the Parquet
files: the pool's texts never pass through Python, whatever its size. The cache is
rewritten (temporary file, then rename) to hold exactly the current pool's items, so it
never outgrows the pool and a crash leaves the previous cache whole.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.runtime.atomic import replace_durably

#: the hash of an item's content, as DuckDB computes it from the items.parquet columns
_CONTENT = "md5(i.instruction || chr(0) || coalesce(i.input, ''))"


def model_fingerprint(folder: str | Path | None) -> dict[str, Any]:
    """What identifies a model folder's weights without reading them: its path and the
    size and modification time of each weight and config file (None: the default)."""
    if folder is None:
        return {"model": None}
    folder = Path(folder)
    files = sorted(p for p in folder.glob("*") if p.suffix in (".safetensors", ".bin", ".json")
                   and p.is_file())
    return {"model": str(folder.resolve()),
            "files": [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]}


def cache_path(pool_folder: str | Path, kind: str, key: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()
    return Path(pool_folder) / "cache" / f"{kind}-{digest[:16]}.parquet"


def cached_compute(items_parquet: str | Path, cache_file: str | Path,
                   compute: Callable[[str, int], pa.Table], *,
                   unlabeled_only: bool) -> tuple[pa.Table, int]:
    """Values for the pool's items: cached rows for the items seen before, ``compute`` for
    the others.

    ``compute(todo_parquet, n)`` gets a Parquet file with the items.parquet columns of the
    ``n`` items to compute (only unlabelled ones with ``unlabeled_only``) and returns an
    Arrow table with ``item_id`` and the value columns; it is not called when ``n`` is 0.
    Returns (``item_id`` + value columns for every current item that has values, ``n``).
    """
    cache_file = Path(cache_file)
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    items = str(items_parquet)
    where = "WHERE i.output IS NULL" if unlabeled_only else ""
    con = duckdb.connect()
    try:
        have_cache = cache_file.is_file()
        with tempfile.TemporaryDirectory(dir=cache_file.parent, prefix=".todo-") as tmp:
            todo = os.path.join(tmp, "todo.parquet")
            if have_cache:
                con.execute(f"""COPY (SELECT i.*, {_CONTENT} AS content
                                FROM read_parquet(?) i {where} {'AND' if where else 'WHERE'}
                                NOT EXISTS (SELECT 1 FROM read_parquet(?) c
                                            WHERE c.item_id = i.item_id
                                              AND c.content = {_CONTENT}))
                                TO '{todo}' (FORMAT parquet)""", [items, str(cache_file)])
            else:
                con.execute(f"""COPY (SELECT i.*, {_CONTENT} AS content FROM read_parquet(?) i
                                {where}) TO '{todo}' (FORMAT parquet)""", [items])
            n_todo = pq.ParquetFile(todo).metadata.num_rows
            new = compute(todo, n_todo) if n_todo else None
            parts = []
            if have_cache:
                # cached rows of items still in the pool (with the same content)
                parts.append(f"""SELECT c.* FROM read_parquet('{cache_file}') c
                                 WHERE EXISTS (SELECT 1 FROM read_parquet('{items}') i
                                               WHERE i.item_id = c.item_id
                                                 AND c.content = {_CONTENT})""")
            if new is not None and new.num_rows:
                con.register("new_rows", new)
                cols = ", ".join(f'n."{c}"' for c in new.column_names if c != "item_id")
                parts.append(f"""SELECT n.item_id, t.content{', ' + cols if cols else ''}
                                 FROM new_rows n JOIN read_parquet('{todo}') t
                                 USING (item_id)""")
            if not parts:
                return pa.table({"item_id": pa.array([], pa.string())}), n_todo
            fresh = os.path.join(tmp, "cache.parquet")
            con.execute(f"COPY ({' UNION ALL BY NAME '.join(parts)}) TO '{fresh}' "
                        "(FORMAT parquet)")
            table = pq.read_table(fresh)
            replace_durably(fresh, cache_file)
        return table.drop_columns(["content"]), n_todo
    finally:
        con.close()
