"""Sharded faiss: merged top-k equals brute force; ids are doc_ids; trained templates."""

from __future__ import annotations

import numpy as np
import pytest

from sift_ops import index as fx


def _unit(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_merged_search_over_shards_equals_brute_force():
    rng = np.random.default_rng(0)
    emb = _unit(rng, 900, 32)
    ids = rng.choice(10**12, size=900, replace=False).astype(np.int64)
    shards = [fx.build_shard_index(emb[s:s + 300], ids[s:s + 300]) for s in (0, 300, 600)]
    q = _unit(rng, 7, 32)
    scores, got = fx.search_shards(shards, q, k=25)
    sims = q @ emb.T
    want = np.argsort(-sims, axis=1)[:, :25]
    np.testing.assert_array_equal(got, ids[want])
    np.testing.assert_allclose(scores, np.take_along_axis(sims, want, 1), rtol=1e-5, atol=1e-6)


def test_fewer_vectors_than_k_pads_with_minus_one():
    rng = np.random.default_rng(1)
    shard = fx.build_shard_index(_unit(rng, 3, 8), np.arange(3, dtype=np.int64))
    scores, ids = fx.search_shards([shard], _unit(rng, 2, 8), k=5)
    assert (ids[:, 3:] == -1).all() and sorted(ids[0, :3].tolist()) == [0, 1, 2]


def test_trained_template_is_shared_and_roundtrips(tmp_path):
    rng = np.random.default_rng(2)
    emb = _unit(rng, 2000, 16)
    template = fx.new_index(16, "IVF8,Flat")
    assert fx.needs_training(template)
    fx.train_index(template, emb[:1000])
    blob = fx.serialize(template)
    a = fx.build_shard_index(emb[:1000], np.arange(1000), blob)
    b = fx.build_shard_index(emb[1000:], np.arange(1000, 2000), blob)
    fx.write_index(a, tmp_path / "a.faiss")
    a2 = fx.read_index(tmp_path / "a.faiss")
    assert a2.ntotal == 1000 and not list(tmp_path.glob("*.tmp"))
    _, ids = fx.search_shards([a2, b], emb[[5, 1500]], k=1, nprobe=8)
    assert ids[:, 0].tolist() == [5, 1500]


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="invalid faiss index factory"):
        fx.new_index(8, "NoSuchIndex")
    shard = fx.build_shard_index(np.eye(4, dtype=np.float32), np.arange(4))
    with pytest.raises(ValueError, match="dimension 5 != index dimension 4"):
        fx.search_shards([shard], np.ones((1, 5), np.float32), k=1)
    with pytest.raises(ValueError, match="needs training"):
        fx.build_shard_index(np.eye(4, dtype=np.float32), np.arange(4), factory="IVF2,Flat")
    with pytest.raises(ValueError, match="embedding dimension 3 != index dimension 4"):
        fx.build_shard_index(np.ones((2, 3), np.float32), np.arange(2),
                             fx.serialize(fx.new_index(4)))
