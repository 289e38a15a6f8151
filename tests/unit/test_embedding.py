"""The encoder: chunk windows and embeddings equal to sentence-transformers'."""

from __future__ import annotations

import numpy as np
import pytest

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

    from sift_ops.causal_lm import resolve_lm_path
    from sift_ops.embedding import resolve_encoder_path

    resolve = resolve_encoder_path if role == "encoder" else resolve_lm_path
    (tmp_path / "config.json").write_text(json.dumps(
        {"model_type": "evil", "auto_map": {"AutoModel": "modeling_evil.EvilModel"}}))
    with pytest.raises(PermissionError, match=f"{role} folder .* asks for custom code"):
        resolve(str(tmp_path))
    assert resolve(str(tmp_path), trust_remote_code=True) == str(tmp_path)
    (tmp_path / "config.json").write_bytes(b"\xff not json")
    with pytest.raises(ValueError, match="not a valid JSON config"):
        resolve(str(tmp_path))
