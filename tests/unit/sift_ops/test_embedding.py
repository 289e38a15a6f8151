"""The encoder: chunk windows and embeddings equal to sentence-transformers'."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sift_ops.embedding import TextEncoder, resolve_encoder_path


@pytest.fixture(scope="module")
def encoder():
    return TextEncoder(batch_size=8, threads=2)


def test_defaults_come_from_the_bundled_model(encoder):
    assert encoder.dim == 384 and encoder.max_tokens == 256
    assert encoder.name == "all-MiniLM-L6-v2"


def test_unknown_model_names_the_problem():
    with pytest.raises(FileNotFoundError, match="not a local Hugging Face model folder"):
        resolve_encoder_path("/nonexistent/model")


def test_chunks_cover_the_document_within_the_token_limit(encoder):
    long = " ".join(f"word{i} in a sentence about data curation." for i in range(400))
    docs = ["short text", long, "another short one"]
    chunks = encoder.chunk_texts(docs)
    by_doc = {}
    for c in chunks:
        by_doc.setdefault(c.doc_index, []).append(c)
    assert [len(by_doc[i]) for i in range(3)][0] == 1 and len(by_doc[1]) > 5
    assert [c.chunk_index for c in by_doc[1]] == list(range(len(by_doc[1])))
    assert "".join(c.text for c in by_doc[1]).strip() == long.strip()
    for c in chunks:
        n = len(encoder.tokenizer(c.text, truncation=False)["input_ids"])
        assert c.n_tokens <= encoder.max_tokens
        assert n <= encoder.max_tokens + 2  # re-tokenising a slice may differ at the edge


def test_embeddings_match_sentence_transformers(encoder):
    st = pytest.importorskip("sentence_transformers")
    texts = ["The cat sat on the mat.", "def f(x):\n    return x * 2",
             "Prefect flows drive Ray jobs " * 30, "short"]
    ours = encoder.encode(texts)
    ref = st.SentenceTransformer(encoder.path, device="cpu").encode(
        texts, normalize_embeddings=True)
    np.testing.assert_allclose(ours, ref, atol=2e-5)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_length_sorting_does_not_change_the_order(encoder):
    texts = ["a much longer text than the others " * 10, "tiny", "medium sized text here"]
    np.testing.assert_allclose(encoder.encode(texts), encoder.encode(texts, sort_by_length=False),
                               atol=1e-5)
    assert encoder.encode([]).shape == (0, 384)


@pytest.mark.parametrize("role", ["encoder", "causal LM"])
def test_model_folders_that_ask_for_custom_code_are_refused(tmp_path, role):
    import json

    from sift_ops.causal_lm import lm_folder
    from sift_ops.embedding import resolve_encoder_path

    resolve = resolve_encoder_path if role == "encoder" else lm_folder
    (tmp_path / "config.json").write_text(json.dumps(
        {"model_type": "evil", "auto_map": {"AutoModel": "modeling_evil.EvilModel"}}))
    with pytest.raises(PermissionError, match=f"{role} folder .* asks for custom code"):
        resolve(str(tmp_path))
    assert resolve(str(tmp_path), trust_remote_code=True) == str(tmp_path)
    (tmp_path / "config.json").write_bytes(b"\xff not json")
    with pytest.raises(ValueError, match="not a valid JSON config"):
        resolve(str(tmp_path))


# ---------------------------------------------------------------- tokenise once, budgets


def test_encoder_takes_the_chunkers_ids_without_retokenising(encoder):
    """Chunk ids are one tokenisation of the whole document, framed by [CLS] ... [SEP], and
    embedding them equals embedding the same ids through the text path."""
    long = "Ray Data streams blocks from read tasks into actors. " * 60
    chunks = encoder.chunk_texts(["short doc", long])
    cls, sep = encoder.chunker.prefix, encoder.chunker.suffix
    whole = encoder.tokenizer(long, add_special_tokens=False)["input_ids"]
    window = encoder.max_tokens - encoder.n_special
    inner = [c for c in chunks if c.doc_index == 1]
    assert len(inner) == -(-len(whole) // window)
    for c in inner:
        ids = c.input_ids.tolist()
        assert ids[: len(cls)] == cls and ids[len(ids) - len(sep):] == sep
        assert ids[len(cls): len(ids) - len(sep)] == \
            whole[c.chunk_index * window:(c.chunk_index + 1) * window]
        assert c.n_tokens == len(ids) <= encoder.max_tokens
    texts = ["The cat sat on the mat.", "short", "def f(x):\n    return x * 2"]
    by_ids = encoder.encode_ids(encoder.chunker.tokenize(texts))
    np.testing.assert_allclose(by_ids, encoder.encode(texts), atol=1e-6)
    with pytest.raises(ValueError, match="exceeds the encoder's max_tokens=256"):
        encoder.encode_ids([np.ones(300, dtype=np.int32)])


def test_chunk_arrays_truncate_long_documents_and_count_them(encoder):
    arr = encoder.chunker.chunk(["word " * 2000, "tiny", "word " * 600], max_chunks=2)
    assert arr.n_truncated == 2
    assert arr.doc_index.tolist() == [0, 0, 1, 2, 2]
    assert arr.chunk_index.tolist() == [0, 1, 0, 0, 1]
    assert len(arr.offsets) == len(arr) + 1 and arr.offsets[-1] == len(arr.ids)
    assert (arr.n_tokens <= encoder.max_tokens).all()


@pytest.mark.parametrize("budget,max_rows", [(1000, None), (600, 3), (1, None), (10**9, 4)])
def test_budget_batches_cover_every_row_once_within_the_budget(budget, max_rows):
    from sift_ops.embedding import budget_batches

    rng = np.random.default_rng(budget)
    lengths = rng.integers(3, 257, size=97)
    batches = budget_batches(lengths, budget, max_rows)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(97))
    assert (np.diff(lengths[flat]) >= 0).all(), "rows are not length-sorted"
    for b in batches:
        assert len(b) == 1 or len(b) * lengths[b].max() <= budget
        assert max_rows is None or len(b) <= max_rows
    if budget == 1000:  # greedy: adding the next row would have broken the budget
        for b, nxt in zip(batches[:-1], batches[1:], strict=True):
            assert (len(b) + 1) * lengths[nxt[0]] > budget


def test_token_budget_and_row_cap_do_not_change_embeddings(encoder):
    from sift_ops.embedding import TextEncoder

    texts = [("tokens " * n).strip() for n in (1, 3, 40, 7, 250, 90, 2, 120)]
    tight = TextEncoder(token_budget=300, batch_size=2, threads=2)
    assert tight.token_budget == 300
    np.testing.assert_allclose(tight.encode(texts), encoder.encode(texts), atol=2e-5)


def test_bf16_passes_the_cosine_check_and_a_too_strict_check_falls_back():
    """The reduced-precision path of CUDA, exercised on CPU (torch runs bf16 on CPU)."""
    from sift_ops.embedding import TextEncoder

    texts = ["Sharded faiss indices answer query blocks.", "print('hello')" * 5]
    ref = TextEncoder(dtype="float32", threads=2)
    half = TextEncoder(dtype="bfloat16", threads=2)
    assert half.precision["dtype"] == "bfloat16" and not half.precision["fallback"]
    assert 0.999 <= half.precision["min_cosine"] < 1.0
    assert next(half.model.parameters()).dtype == torch.bfloat16
    cos = (half.encode(texts) * ref.encode(texts)).sum(1)
    assert cos.min() >= 0.999
    strict = TextEncoder(dtype="bfloat16", threads=2, min_cosine=1.0 + 1e-9)
    assert strict.precision["fallback"] and strict.precision["dtype"] == "float32"
    assert next(strict.model.parameters()).dtype == torch.float32
    np.testing.assert_allclose(strict.encode(texts), ref.encode(texts), atol=1e-6)
