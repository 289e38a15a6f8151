"""faiss building blocks: the auto rule, trained blocks merged on disk, exact re-rank and
the merge over partitions against brute force."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from sift_ops import index as fx


def _unit(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_auto_rule_is_flat_while_cheap_then_ivf_pq_sized_to_the_corpus():
    small = fx.choose_index(5_000, 384, 4 << 30)
    assert (small.factory, small.kind, small.partitions) == ("Flat", "flat", 1)
    big = fx.choose_index(10_000_000, 384, 300 << 20)
    assert big.factory == "IVF4096,PQ48x8" and big.kind == "ivf" and big.nlist == 4096
    assert big.bytes_per_vector == 56  # 48 code bytes + the int64 row id: <= 64 B/vector
    assert big.partitions == 2  # 560 MB of codes in 300 MB partitions
    huge = fx.choose_index(1_000_000_000, 384, 32 << 30)
    assert huge.factory.startswith("IVF32768,") and huge.partitions == 2
    assert fx.choose_index(10**10, 384, 1 << 40).factory.startswith("IVF131072_HNSW32,")
    assert fx.pq_subquantizers(768) == 96 and fx.pq_subquantizers(100) == 10
    given = fx.choose_index(1000, 16, 1 << 20, "IVF8,Flat")
    assert given.factory == "IVF8,Flat" and given.reason == "given"
    with pytest.raises(ValueError, match="invalid faiss index factory"):
        fx.choose_index(1000, 16, 1 << 20, "NoSuchIndex")


def test_parse_size():
    assert fx.parse_size("4GB") == 4 << 30 and fx.parse_size("512 MiB") == 512 << 20
    assert fx.parse_size(1000) == 1000 and fx.parse_size("2e9") == 2_000_000_000
    for bad in ("lots", "-1GB", "0", "4XB"):
        with pytest.raises(ValueError):
            fx.parse_size(bad)


def test_blocks_merged_on_disk_search_like_one_index(tmp_path):
    """Two block indices from one trained template, merged into an on-disk partition,
    return the same results as one index holding every vector."""
    rng = np.random.default_rng(0)
    x = _unit(rng, 4000, 32)
    template = fx.new_index(32, "IVF16,Flat")
    fx.train_index(template, x[:2000])
    blob = fx.serialize(template)
    rows = np.arange(4000, dtype=np.int64)
    for i, (lo, hi) in enumerate(((0, 2500), (2500, 4000))):
        blk = fx.encode_block(blob, [(x[lo:hi], rows[lo:hi])], 32)
        faiss.write_index(blk, str(tmp_path / f"b{i}.faiss"))
    merged = fx.merge_ivf_ondisk(blob, [tmp_path / "b0.faiss", tmp_path / "b1.faiss"],
                                 tmp_path / "p.ivfdata")
    faiss.write_index(merged, str(tmp_path / "p.faiss"))
    part = fx.read_index(tmp_path / "p.faiss", mmap=True)
    whole = fx.encode_block(blob, [(x, rows)], 32)
    q = _unit(rng, 20, 32)
    quant = fx.coarse_quantizer(template)
    assign = fx.coarse_assign(quant, q, 4)
    got = fx.search_partition(part, q, 10, assign=assign)
    fx.set_efsearch(None, 10)  # no-op
    faiss_ivf = __import__("faiss").extract_index_ivf(whole)
    faiss_ivf.nprobe = 4
    want = whole.search(q, 10)
    np.testing.assert_array_equal(got[1], want[1])
    assert part.ntotal == 4000 and not list(tmp_path.glob("*.tmp"))


def test_rerank_and_merge_over_partitions_equal_brute_force():
    rng = np.random.default_rng(1)
    x = _unit(rng, 900, 24)
    q = _unit(rng, 7, 24)
    sims = q @ x.T
    want = np.argsort(-sims, axis=1)[:, :25]
    # three "partitions" of 300 rows each; approximate candidates: a shuffled superset
    parts = []
    for lo in (0, 300, 600):
        local = np.argsort(-sims[:, lo:lo + 300], axis=1)[:, :60] + lo
        shuffled = rng.permuted(local, axis=1)
        shuffled = np.hstack([shuffled, np.full((len(q), 3), -1)])  # "no result" slots
        parts.append(fx.rerank_exact(q, shuffled, lambda r: x[r], 25))
    scores, rows = fx.merge_results(parts, len(q), 25)
    np.testing.assert_array_equal(rows, want)
    np.testing.assert_allclose(scores, np.take_along_axis(sims, want, 1), rtol=1e-5,
                               atol=1e-6)


def test_exact_topk_streams_chunks_and_recall_counts_hits():
    rng = np.random.default_rng(2)
    x = _unit(rng, 1000, 16)
    q = _unit(rng, 5, 16)
    chunks = [(x[s:s + 128], s) for s in range(0, 1000, 128)]
    scores, rows = fx.exact_topk(q, chunks, 30)
    want = np.argsort(-(q @ x.T), axis=1)[:, :30]
    np.testing.assert_array_equal(rows, want)
    assert fx.recall_at(rows, want, 30) == 1.0
    half = np.where(np.arange(30) < 15, rows, -1)
    assert fx.recall_at(half, want, 30) == pytest.approx(0.5)
    assert fx.recall_at(rows[:, ::-1], want, 10) == pytest.approx(0.0)


def test_fewer_vectors_than_k_pads_with_minus_one():
    rng = np.random.default_rng(3)
    idx = fx.new_id_index(8, "Flat")
    idx.add_with_ids(_unit(rng, 3, 8), np.arange(3, dtype=np.int64))
    scores, rows = fx.search_partition(idx, _unit(rng, 2, 8), 5)
    assert rows.shape == (2, 3)
    s, r = fx.merge_results([(scores, rows)], 2, 5)
    assert (r[:, 3:] == -1).all() and sorted(r[0, :3].tolist()) == [0, 1, 2]


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="invalid faiss index factory"):
        fx.new_index(8, "NoSuchIndex")
    idx = fx.new_id_index(4, "Flat")
    idx.add_with_ids(np.eye(4, dtype=np.float32), np.arange(4, dtype=np.int64))
    with pytest.raises(ValueError, match="dimension 5 != index dimension 4"):
        fx.search_partition(idx, np.ones((1, 5), np.float32), 1)
    with pytest.raises(ValueError, match="needs training"):
        fx.new_id_index(4, "IVF2,Flat")
    blob = fx.serialize(fx.train_index(fx.new_index(4, "IVF2,Flat"),
                                       _unit(np.random.default_rng(4), 100, 4)))
    with pytest.raises(ValueError, match="embedding dimension 3 != index dimension 4"):
        fx.encode_block(blob, [(np.ones((2, 3), np.float32), np.arange(2))], 4)
