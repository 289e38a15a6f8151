"""The shared set-up of the redundant-corpus scripts (dup_threshold.py, adaptive_alpha.py):
their common options and each held-out prompt's K nearest chunks by exact inner product
over a corpus's embedding shards, as `select` would retrieve them (no index)."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def corpus_options(k: int = 200) -> argparse.ArgumentParser:
    """``--workspace``, ``--name`` (the corpus), ``--queries`` (held-out prompts) and
    ``--k`` (candidates per prompt); a script adds its own options."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--workspace", required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--queries", required=True)
    ap.add_argument("--k", type=int, default=k)
    return ap


@dataclass
class Candidates:
    table: pa.Table          # the corpus's shards, the columns asked for
    emb: np.ndarray          # [n_chunks, d] float32
    prompts: int             # held-out prompts read
    query_emb: np.ndarray    # [prompts, d], with the corpus's encoder
    top: np.ndarray          # [prompts, k] chunk rows, most similar first


def exact_candidates(workspace: str, name: str, queries: str, k: int,
                     columns: tuple[str, ...] = ("embedding",)) -> Candidates:
    """Read corpus ``name``'s shards (``columns``, which must hold ``embedding``), embed
    the prompts of ``queries`` with the corpus's encoder and take their exact top ``k``."""
    from sift_ops.embedding import TextEncoder
    from tasks.selection.select import load_queries

    corpus = Path(workspace) / "corpora" / name
    manifest = json.loads((corpus / "manifest.json").read_text())
    t = pq.read_table(sorted((corpus / "embeddings").glob("*.parquet")), columns=list(columns))
    emb = np.stack(t.column("embedding").to_numpy(zero_copy_only=False)).astype(np.float32)
    q = load_queries(queries)
    qe = TextEncoder(manifest["model"], max_tokens=manifest["max_tokens"]).encode(q.texts)
    top = np.argsort(-(qe @ emb.T), axis=1)[:, :k]
    return Candidates(t, emb, len(q.ids), qe, top)
