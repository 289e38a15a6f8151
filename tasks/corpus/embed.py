"""Embedding a Pile-format corpus into Parquet shards with Ray Data.

Pipeline (streaming; memory is bounded by a few shards, never by the corpus):

    read + tokenise (CPU: one Ray read task per input file, yields one Arrow *row* per
          shard: the shard's ``shard_docs`` consecutive lines, or ``shard_chars`` characters
          of text, decompressed, parsed and cut into windows of token ids by the encoder's
          tokenizer (:class:`sift_ops.embedding.Chunker`), as list columns)
      -> ShardEmbedder actors (CPU threads or a GPU), one shard per call: embed the ids as
         they are (no second tokenisation) in length-sorted, token-budget batches, write
         ``part-FFFFF-BBBBB.parquet`` + quarantine atomically, return stats
      -> the driver collects one stats row per shard (progress bar, logs)

The read tasks run ahead of the encoder (Ray Data streams their blocks into the actors'
queue), so an encoder does not wait on decompression or the tokenizer.

A shard's name is derived from (input file number, block number), so a rerun sees which
shards exist and the read tasks skip them before any embedding work: a crash resumes, a
rerun never duplicates rows. Workers write shard files themselves; on a cluster the
workspace must be on a filesystem every node can reach.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache, partial
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.corpus.lookup import MAX_CHUNKS, pack_doc_ids
from tasks.corpus.pile_reader import BadLine, is_pile_file, iter_pile_file, list_pile_files
from tasks.runtime.atomic import atomic_path, write_json_atomic
from tasks.runtime.workspace import CorpusPaths

log = logging.getLogger(__name__)

SHARD_META_KEY = b"sift_curation"

# One row per shard: the shard's input lines travel as list columns, so the encoder actor
# (batch_size=1) always receives exactly one whole shard, however Ray merges blocks.
# Per line: line number, source, and for quarantined lines the reason and the raw text. Per
# chunk: the position of its document's line in the shard, the window number, its text and
# its token ids (specials included).
READ_SCHEMA = pa.schema([
    ("shard", pa.string()), ("file_id", pa.int32()), ("file", pa.string()),
    ("line", pa.large_list(pa.int64())), ("source", pa.large_list(pa.string())),
    ("error", pa.large_list(pa.string())), ("raw", pa.large_list(pa.large_string())),
    ("chunk_pos", pa.large_list(pa.int32())), ("chunk_index", pa.large_list(pa.int32())),
    ("chunk_text", pa.large_list(pa.large_string())),
    ("chunk_ids", pa.large_list(pa.large_list(pa.int32()))),
    ("n_truncated", pa.int32()),
])


def shard_schema(dim: int) -> pa.Schema:
    """The embeddings contract: one row per chunk (docs/architecture.md, "Shard schema")."""
    return pa.schema([
        ("doc_id", pa.int64()), ("source", pa.string()), ("text", pa.string()),
        ("n_tokens", pa.int32()), ("embedding", pa.list_(pa.float32(), dim)),
    ])


@dataclass
class EmbedConfig:
    """Options of one embedding run (all serialisable; recorded in the manifest)."""

    model: str | None = None
    batch_size: int | None = None  # at most this many chunks per forward pass (None: any)
    token_budget: int | None = None  # padded tokens per pass (None: from the device)
    dtype: str | None = None  # None/"auto": float32 on CPU, bf16/fp16 on CUDA (checked)
    max_tokens: int | None = None
    shard_docs: int = 2000
    shard_chars: int = 32_000_000
    actors: int = 1
    gpus_per_actor: float = 0.0
    threads_per_actor: int | None = None
    ray_address: str | None = None  # None: $RAY_ADDRESS, else a local Ray
    trust_remote_code: bool = False  # an encoder folder with custom code is refused unless set
    extra: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------- inputs


def discover_inputs(corpus: str | Path) -> list[Path]:
    """Input files from a file, a folder (searched recursively) or a glob pattern."""
    corpus = str(corpus)
    path = Path(corpus).expanduser()
    if path.exists():
        files = list_pile_files(path)
    else:
        files = [Path(p) for p in glob.glob(corpus, recursive=True)
                 if Path(p).is_file() and is_pile_file(p)]
        if not files:
            raise FileNotFoundError(f"corpus {corpus!r}: no such file, folder or glob match")
    if not files:
        raise FileNotFoundError(
            f"corpus {corpus!r}: no input files (.jsonl, .json, .gz, .zst, .parquet) found"
        )
    return sorted({p.resolve() for p in files})


def assign_file_ids(files: list[Path], previous: list[dict] | None) -> list[dict]:
    """Stable file numbers: files seen before keep theirs, new files get the next ones."""
    known = {f["path"]: int(f["file_id"]) for f in previous or []}
    next_id = max(known.values(), default=-1) + 1
    out = []
    for path in files:
        key = str(path)
        if key not in known:
            known[key] = next_id
            next_id += 1
        out.append({"file_id": known[key], "path": key})
    return out


# ---------------------------------------------------------------------------- read side


def shard_name(file_id: int, block: int) -> str:
    return f"part-{file_id:05d}-{block:05d}"


@lru_cache(maxsize=4)
def _chunker(model: str | None, max_tokens: int | None, trust_remote_code: bool):
    """One tokenizer per worker process and model (Ray reuses worker processes)."""
    from sift_ops.embedding import Chunker

    return Chunker(model, max_tokens=max_tokens, trust_remote_code=trust_remote_code)


def _list_of_lists(ids, offsets) -> pa.Array:
    """A one-element ``large_list<large_list<int32>>`` from flat ids + offsets (no copy
    through Python lists)."""
    inner = pa.LargeListArray.from_arrays(pa.array(offsets, pa.int64()),
                                          pa.array(ids, pa.int32()))
    return pa.LargeListArray.from_arrays(pa.array([0, len(offsets) - 1], pa.int64()), inner)


def shard_row(name: str, file_id: int, path: str, rows: dict[str, list], chunker,
              max_chunks: int = MAX_CHUNKS) -> pa.Table:
    """One READ_SCHEMA row: the shard's lines (``rows``: line/text/source/error/raw lists)
    with the good documents cut into token windows by ``chunker``."""
    good = [i for i, e in enumerate(rows["error"]) if e is None]
    arr = chunker.chunk([rows["text"][i] for i in good], max_chunks=max_chunks)
    pos = np.asarray(good, dtype=np.int32)[arr.doc_index] if len(arr) else \
        np.zeros(0, dtype=np.int32)
    cols = {"shard": [name], "file_id": [file_id], "file": [path],
            **{k: [rows[k]] for k in ("line", "source", "error", "raw")},
            "chunk_pos": [pos], "chunk_index": [arr.chunk_index], "chunk_text": [arr.texts],
            "n_truncated": [arr.n_truncated]}
    arrays = [pa.array(cols[f.name], f.type) if f.name != "chunk_ids"
              else _list_of_lists(arr.ids, arr.offsets) for f in READ_SCHEMA]
    return pa.Table.from_arrays(arrays, schema=READ_SCHEMA)


def read_file_shards(
    file_id: int, path: str, shard_docs: int, shard_chars: int, done: dict[str, int],
    chunker_args: tuple = (None, None, False),
) -> Iterator[pa.Table]:
    """Stream one input file as one-row Arrow tables, one per shard not yet written, each
    already cut into token windows (``chunker_args``: model, max_tokens,
    trust_remote_code of the encoder's :class:`sift_ops.embedding.Chunker`).

    Shard boundaries depend only on the file's content (line count and text length), so
    they are identical on every run. ``done`` maps finished shards to the number of input
    lines they hold; such shards are parsed but not emitted (nor tokenised), unless the
    count differs (a shard from an interrupted or different run), in which case the shard
    is redone.
    """
    rows: dict[str, list] = {k: [] for k in ("line", "text", "source", "error", "raw")}
    block, n_chars = 0, 0

    def flush() -> pa.Table | None:
        nonlocal block, n_chars, rows
        name = shard_name(file_id, block)
        n = len(rows["line"])
        table = None
        if n and done.get(name) != n:
            table = shard_row(name, file_id, path, rows, _chunker(*chunker_args))
        block, n_chars = block + 1, 0
        rows = {k: [] for k in rows}
        return table

    for rec in iter_pile_file(path):
        rows["line"].append(rec.line)
        if isinstance(rec, BadLine):
            rows["text"].append(None)
            rows["source"].append(None)
            rows["error"].append(rec.reason)
            rows["raw"].append(rec.raw)
        else:
            rows["text"].append(rec.text)
            rows["source"].append(rec.source)
            rows["error"].append(None)
            rows["raw"].append(None)
            n_chars += len(rec.text)
        if len(rows["line"]) >= shard_docs or n_chars >= shard_chars:
            table = flush()
            if table is not None:
                yield table
    table = flush()
    if table is not None:
        yield table


def make_datasource(files: list[dict], cfg: EmbedConfig, done: dict[str, int]):
    """A Ray Data datasource with one read task per input file."""
    from ray.data.block import BlockMetadata
    from ray.data.datasource import Datasource, ReadTask

    class PileShardDatasource(Datasource):
        def get_name(self) -> str:
            return "PileShards"

        def estimate_inmemory_data_size(self) -> int | None:
            return sum(os.path.getsize(f["path"]) for f in files)

        def get_read_tasks(self, parallelism, per_task_row_limit=None, data_context=None):
            return [
                ReadTask(
                    partial(read_file_shards, f["file_id"], f["path"], cfg.shard_docs,
                            cfg.shard_chars, done,
                            (cfg.model, cfg.max_tokens, cfg.trust_remote_code)),
                    BlockMetadata(num_rows=None, size_bytes=os.path.getsize(f["path"]),
                                  exec_stats=None, input_files=(f["path"],)),
                    schema=READ_SCHEMA,
                )
                for f in files
            ]

    return PileShardDatasource()


# ---------------------------------------------------------------------------- embed side


class ShardEmbedder:
    """Ray Data actor: holds the encoder; turns each tokenised shard row into one Parquet
    file."""

    def __init__(self, out_dir: str, quarantine_dir: str, model: str | None,
                 batch_size: int | None, max_tokens: int | None, threads: int | None,
                 trust_remote_code: bool = False, token_budget: int | None = None,
                 dtype: str | None = None) -> None:
        from sift_ops.embedding import TextEncoder

        self.out_dir = Path(out_dir)
        self.quarantine_dir = Path(quarantine_dir)
        self.encoder = TextEncoder(model, batch_size=batch_size, max_tokens=max_tokens,
                                   threads=threads, trust_remote_code=trust_remote_code,
                                   token_budget=token_budget, dtype=dtype)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return pa.Table.from_pylist([self._embed_shard(batch.slice(i, 1))
                                     for i in range(batch.num_rows)])

    def _embed_shard(self, row: pa.Table) -> dict:
        """Embed and write one shard (a one-row READ_SCHEMA table); return its stats."""
        t0 = time.perf_counter()
        shard, file_id, src_file = (row.column(k)[0].as_py() for k in ("shard", "file_id",
                                                                        "file"))
        errors = row.column("error")[0].as_py()
        sources = row.column("source")[0].as_py()
        lines = np.asarray(row.column("line")[0].values, dtype=np.int64)
        good = np.array([e is None for e in errors], dtype=bool)
        pos = np.asarray(row.column("chunk_pos")[0].values, dtype=np.int64)
        chunk_idx = np.asarray(row.column("chunk_index")[0].values, dtype=np.int64)
        texts = row.column("chunk_text")[0].values
        # the token ids as numpy views of the Arrow buffers: no Python ints per token
        inner = row.column("chunk_ids")[0].values
        offsets = np.asarray(inner.offsets, dtype=np.int64)
        # .flatten() honours a slice of the child array, .values would not
        flat = np.asarray(inner.flatten(), dtype=np.int32)
        offsets = offsets - offsets[0]
        seqs = [flat[a:b] for a, b in zip(offsets[:-1], offsets[1:], strict=True)]
        n_truncated = int(row.column("n_truncated")[0].as_py())
        t_embed = time.perf_counter()
        emb = self.encoder.encode_ids(seqs)
        embed_s = time.perf_counter() - t_embed
        doc_ids = pack_doc_ids(file_id, lines[pos], chunk_idx)
        dim = self.encoder.dim
        table = pa.table({
            "doc_id": pa.array(doc_ids, pa.int64()),
            "source": pa.array([sources[i] for i in pos], pa.string()),
            "text": texts.cast(pa.string()),
            "n_tokens": pa.array(np.diff(offsets).astype(np.int32), pa.int32()),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), dim),
        }, schema=shard_schema(dim))
        stats = {
            "shard": shard, "file": src_file, "file_id": file_id,
            "line_start": int(lines.min()), "line_end": int(lines.max()),
            "n_lines": len(lines), "n_docs": int(good.sum()), "n_bad": int((~good).sum()),
            "n_chunks": len(seqs), "n_truncated": n_truncated, "n_rows": len(seqs),
            "n_tokens": int(offsets[-1]) if len(offsets) else 0,
            # -1 marks an empty shard (every line quarantined); readers skip n_rows == 0
            "doc_id_min": int(doc_ids.min()) if len(doc_ids) else -1,
            "doc_id_max": int(doc_ids.max()) if len(doc_ids) else -1,
            "model": self.encoder.name, "dim": dim,
        }
        # Quarantine first, shard last: the shard's existence marks the block as done.
        self._write_quarantine(shard, src_file, row, good)
        table = table.replace_schema_metadata({SHARD_META_KEY: json.dumps(stats).encode()})
        with atomic_path(self.out_dir / f"{shard}.parquet") as tmp:
            pq.write_table(table, tmp, compression="zstd", row_group_size=8192)
        stats["seconds"] = time.perf_counter() - t0
        stats["embed_seconds"] = embed_s
        stats["dtype"] = self.encoder.precision["dtype"]
        return stats

    def _write_quarantine(self, shard: str, src_file: str, row: pa.Table,
                          good: np.ndarray) -> None:
        target = self.quarantine_dir / f"{shard}.jsonl"
        if good.all():
            target.unlink(missing_ok=True)
            return
        line, error, raw = (row.column(k)[0].values for k in ("line", "error", "raw"))
        with atomic_path(target) as tmp, open(tmp, "w", encoding="utf-8") as fh:
            for i in np.flatnonzero(~good):
                fh.write(json.dumps({"file": src_file, "line": line[i].as_py(),
                                     "reason": error[i].as_py(),
                                     "raw": raw[i].as_py()}) + "\n")


# ---------------------------------------------------------------------------- driver


def read_shard_stats(path: Path) -> dict:
    """The stats a ShardEmbedder stored in a shard's Parquet metadata."""
    meta = pq.read_schema(path).metadata or {}
    if SHARD_META_KEY not in meta:
        raise ValueError(f"{path}: not a sift-curation shard (no {SHARD_META_KEY!r} metadata)")
    return json.loads(meta[SHARD_META_KEY])


def finished_shards(paths: CorpusPaths) -> dict[str, int]:
    """Shards on disk -> input lines they cover (unreadable shards are dropped: redone)."""
    done = {}
    for path in paths.shard_files():
        try:
            done[path.stem] = int(read_shard_stats(path)["n_lines"])
        except Exception as err:  # a foreign or damaged file: log and redo that shard
            log.warning("ignoring unreadable shard %s (%s); it will be re-embedded", path, err)
    return done


def clean_partial_files(paths: CorpusPaths) -> int:
    """Remove temp files a crashed run left behind; return how many."""
    n = 0
    for folder in (paths.embeddings, paths.quarantine):
        for tmp in folder.glob(".*.tmp"):
            tmp.unlink()
            n += 1
    return n


def prepare_corpus(paths: CorpusPaths, corpus: str | Path, cfg: EmbedConfig,
                   model_name: str, dim: int, max_tokens: int) -> dict:
    """Create or reopen the corpus folder; refuse to mix models in one corpus."""
    paths.embeddings.mkdir(parents=True, exist_ok=True)
    paths.quarantine.mkdir(parents=True, exist_ok=True)
    previous = json.loads(paths.manifest.read_text()) if paths.manifest.is_file() else None
    if previous is not None:
        for key, value in (("model", model_name), ("dim", dim), ("max_tokens", max_tokens)):
            if previous.get(key) != value:
                raise ValueError(
                    f"corpus {paths.name!r} at {paths.root} was embedded with {key}="
                    f"{previous.get(key)!r}, this run has {key}={value!r}; use another --name "
                    "or delete the corpus folder"
                )
        for key in ("shard_docs", "shard_chars"):
            if previous.get(key) != getattr(cfg, key):
                raise ValueError(
                    f"corpus {paths.name!r} was sharded with {key}={previous.get(key)}; this "
                    f"run has {getattr(cfg, key)}. Shard boundaries must not change on resume."
                )
    files = assign_file_ids(discover_inputs(corpus), previous and previous.get("files"))
    now = datetime.now(timezone.utc).isoformat()
    manifest = {
        "name": paths.name, "corpus": str(corpus), "model": model_name, "dim": dim,
        "pooling": "mean", "normalized": True, "max_tokens": max_tokens,
        "shard_docs": cfg.shard_docs, "shard_chars": cfg.shard_chars,
        "doc_id_layout": "file_id << 40 | line << 12 | chunk",
        "files": files, "shards": (previous or {}).get("shards", []),
        "status": "embedding", "created_at": (previous or {}).get("created_at", now),
        "updated_at": now,
    }
    write_json_atomic(paths.manifest, manifest)
    return manifest


def finalize_manifest(paths: CorpusPaths, manifest: dict) -> dict:
    """Rebuild the shard list from the shard files on disk (the source of truth)."""
    shards = []
    for path in paths.shard_files():
        stats = read_shard_stats(path)
        for key in ("seconds", "embed_seconds", "dtype"):
            stats.pop(key, None)
        stats["file"] = path.name
        shards.append(stats)
    manifest = dict(manifest)
    manifest["shards"] = shards
    for key in ("n_chunks", "n_docs", "n_bad", "n_truncated"):
        manifest[key] = int(sum(s.get(key, 0) for s in shards))
    manifest["status"] = "complete"
    manifest["updated_at"] = datetime.now(timezone.utc).isoformat()
    write_json_atomic(paths.manifest, manifest)
    return manifest


def run_embedding(corpus: str | Path, paths: CorpusPaths, cfg: EmbedConfig,
                  progress=None) -> dict:
    """Embed ``corpus`` into ``paths`` with Ray Data; return a run summary.

    ``progress(stats_row)`` is called on the driver for each finished shard.
    """
    import ray

    from sift_ops.embedding import TextEncoder
    from tasks.runtime.ray_runtime import actor_resources, data_context, ensure_ray, ray_info

    resources = ensure_ray(address=cfg.ray_address)
    # Load the encoder once on the driver to resolve the model's name, dim and window size
    # (and fail here, not inside an actor, when the model folder is wrong).
    probe = TextEncoder(cfg.model, max_tokens=cfg.max_tokens, device="cpu",
                        trust_remote_code=cfg.trust_remote_code)
    manifest = prepare_corpus(paths, corpus, cfg, probe.name, probe.dim, probe.max_tokens)
    del probe
    n_tmp = clean_partial_files(paths)
    done = finished_shards(paths)
    log.info("embedding %d input files into %s (%d shards already done, %d temp files removed)",
             len(manifest["files"]), paths.embeddings, len(done), n_tmp)

    # Whole CPUs per actor would leave none for the read tasks (actor_resources).
    actor_cpus, actor_gpus, threads = actor_resources(
        resources, cfg.actors, cfg.gpus_per_actor, cfg.threads_per_actor or None)
    # A shard is one row, and rows are never split; a tiny target block size makes every
    # shard its own block (spread over actors) and streams each stats row back at once
    # (otherwise a whole file's shards ride in one block and report only at the end).
    with data_context(target_max_block_size=1, enable_progress_bars=False):
        # one block per read task: no need for Ray to split read outputs further
        ds = ray.data.read_datasource(make_datasource(manifest["files"], cfg, done),
                                      num_cpus=0.5, override_num_blocks=len(manifest["files"]))
        ds = ds.map_batches(
            ShardEmbedder,
            fn_constructor_kwargs={
                "out_dir": str(paths.embeddings), "quarantine_dir": str(paths.quarantine),
                "model": cfg.model, "batch_size": cfg.batch_size, "max_tokens": cfg.max_tokens,
                "threads": threads, "trust_remote_code": cfg.trust_remote_code,
                "token_budget": cfg.token_budget, "dtype": cfg.dtype,
            },
            batch_size=1, batch_format="pyarrow", zero_copy_batch=True,
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=max(cfg.actors, 1)),
            num_cpus=actor_cpus, num_gpus=actor_gpus,
        )
        t0 = time.perf_counter()
        new_shards: list[dict] = []
        for row in ds.iter_rows():
            new_shards.append(row)
            if progress is not None:
                progress(row)
    seconds = time.perf_counter() - t0
    manifest = finalize_manifest(paths, manifest)
    new_chunks = sum(s["n_chunks"] for s in new_shards)
    return {
        "corpus": paths.name, "manifest": str(paths.manifest), "files": len(manifest["files"]),
        "shards_total": len(manifest["shards"]), "shards_written": len(new_shards),
        "shards_skipped": len(manifest["shards"]) - len(new_shards),
        "chunks_total": manifest["n_chunks"],
        "chunks_written": new_chunks, "docs_total": manifest["n_docs"],
        "bad_lines_total": manifest["n_bad"], "bad_lines_this_run":
            sum(s["n_bad"] for s in new_shards),
        "seconds": seconds, "chunks_per_s": new_chunks / seconds if seconds > 0 else 0.0,
        "quarantine": str(paths.quarantine), "new_shards": new_shards, "ray": ray_info(),
    }
