"""sift_ops.finetune on the tiny random Llama (char tokenizer): exact, fast cases."""

from __future__ import annotations

import math

import pytest
import torch

from sift_ops.causal_lm import load_causal_lm
from sift_ops.finetune import (
    IGNORE,
    bits_per_byte,
    collate_right,
    continuation_nll,
    encode_pair,
    pairs_nll,
    restore,
    same_weights,
    sft_train,
    snapshot,
    test_time_finetune,
)
from tests.tiny_lm import build_tiny_lm


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = build_tiny_lm(tmp_path_factory.mktemp("lm") / "tiny")
    torch.manual_seed(0)
    return load_causal_lm(str(folder), device="cpu")


def test_bits_per_byte_known_case():
    # 8 bytes at 1 bit each: NLL = 8 ln 2 nats
    assert bits_per_byte(8 * math.log(2), "abcdefgh") == pytest.approx(1.0)
    # multi-byte characters count in bytes, not characters: "é" is 2 bytes
    assert bits_per_byte(4 * math.log(2), "éé") == pytest.approx(1.0)
    with pytest.raises(ValueError):
        bits_per_byte(1.0, "")


def test_continuation_nll_of_uniform_model_is_log_vocab(tiny):
    model, tok = tiny
    state = snapshot(model)
    try:
        with torch.no_grad():  # zero logits: every next token has probability 1/V
            model.lm_head.weight.zero_()
        nll, n = continuation_nll(model, tok, "abc", "hello")
        V = model.config.vocab_size
        assert n == 5  # char tokenizer: one token per character
        assert nll == pytest.approx(5 * math.log(V), rel=1e-5)
        # 1 byte per char: bpb = log2(V)
        assert bits_per_byte(nll, "hello") == pytest.approx(math.log2(V), rel=1e-5)
    finally:
        restore(model, state)


def test_continuation_nll_only_scores_the_continuation(tiny):
    model, tok = tiny
    a, n_a = continuation_nll(model, tok, "The prompt", " and more")
    b, n_b = continuation_nll(model, tok, "A different prompt entirely", " and more")
    assert n_a == n_b == len(" and more")
    assert a != b  # conditioned on the prompt, so the prompt matters ...
    # ... but it is not scored: a longer prompt does not add its own tokens' loss
    assert 0 < a < 3 * n_a * math.log(model.config.vocab_size)


def test_restore_is_exact_after_finetuning(tiny):
    model, tok = tiny
    state = snapshot(model)
    before, _ = continuation_nll(model, tok, "def f(x):", " return x + 1")
    test_time_finetune(model, tok, ["def f(x): return x + 1"] * 3, lr=1e-2)
    assert not same_weights(model, state)  # training really changed the weights
    changed, _ = continuation_nll(model, tok, "def f(x):", " return x + 1")
    assert changed != before
    restore(model, state)
    assert same_weights(model, state)
    again, _ = continuation_nll(model, tok, "def f(x):", " return x + 1")
    assert again == before  # bit-identical, not approximately equal
    # tied embedding / LM head stay one tensor after the in-place restore
    if model.config.tie_word_embeddings:
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


def test_loss_decreases_on_repeated_steps(tiny):
    model, tok = tiny
    state = snapshot(model)
    try:
        text = "the quick brown fox jumps over the lazy dog"
        losses = test_time_finetune(model, tok, [text] * 12, lr=3e-3)
        assert losses[-1] < losses[0] - 0.5  # nats per token
        assert all(b <= a + 1e-3 for a, b in zip(losses[4:], losses[5:], strict=False))
    finally:
        restore(model, state)


def test_encode_pair_masks_prompt_and_sft_lowers_response_loss(tiny):
    model, tok = tiny
    state = snapshot(model)
    try:
        ex = encode_pair(tok, "Name the category.", "sport", max_prompt_tokens=64)
        n_labelled = sum(1 for x in ex.labels if x != IGNORE)
        assert n_labelled == len("sport") + 1  # response chars + <|im_end|>
        assert ex.labels[-n_labelled:] == ex.input_ids[-n_labelled:]
        cut = encode_pair(tok, "instruction: " + "x" * 500, "ok", max_prompt_tokens=16)
        # the first 16 prompt tokens (one per character) survive: the instruction + 3 x's
        assert cut.input_ids.count(tok.convert_tokens_to_ids("x")) == 16 - len("instruction: ")
        assert tok.convert_tokens_to_ids(":") in cut.input_ids
        assert sum(1 for x in cut.labels if x != IGNORE) == 3
        batch = collate_right([ex, cut], tok.pad_token_id)
        assert batch["input_ids"].shape == (2, max(len(ex.input_ids), len(cut.input_ids)))
        assert int(batch["attention_mask"][1].sum()) == len(cut.input_ids)
        examples = [encode_pair(tok, f"Question {i}?", "answer") for i in range(6)]
        nll0, n0 = pairs_nll(model, examples, tok.pad_token_id, batch_size=4)
        assert n0 == 6 * (len("answer") + 1)
        sft_train(model, examples, tok.pad_token_id, lr=3e-3, epochs=8, batch_size=3,
                  generator=torch.Generator().manual_seed(0))
        nll1, n1 = pairs_nll(model, examples, tok.pad_token_id, batch_size=4)
        assert n1 == n0 and nll1 < 0.7 * nll0
    finally:
        restore(model, state)


def test_prefix_strategies_are_scored_part_way_with_identical_numbers(tiny):
    """Adaptive SIFT's picks are a prefix of SIFT's: scoring it part-way through SIFT's run
    gives exactly the numbers of a run of its own (and equal compute is scored too)."""
    from tasks.evaluation.evaluate import HeldOutDoc, ttt_rows_for_doc

    model, tok = tiny
    base = snapshot(model)
    doc = HeldOutDoc("code:x", "code", "def add(a, b):", " return a + b")
    texts = ["def add(a, b): return a + b", "x = add(1, 2)", "def sub(a, b): return a - b"]
    shared = ttt_rows_for_doc(model, tok, base, doc, {"long": texts, "short": texts[:2]},
                              lr=1e-2, max_train_tokens=32, equal_compute_steps=1)
    alone = ttt_rows_for_doc(model, tok, base, doc, {"short": texts[:2]}, lr=1e-2,
                             max_train_tokens=32)
    one = ttt_rows_for_doc(model, tok, base, doc, {"one": texts[:1]}, lr=1e-2,
                           max_train_tokens=32)
    assert same_weights(model, base)
    by = {r["strategy"]: r for r in shared}
    assert [r["strategy"] for r in shared] == ["base", "long", "short"]
    assert by["short"]["trained_with"] == "long" and by["short"]["steps"] == 2
    assert by["short"]["bpb"] == alone[1]["bpb"]  # bit-identical
    assert by["long"]["bpb"] != by["short"]["bpb"]
    assert by["long"]["bpb_equal_compute"] == by["short"]["bpb_equal_compute"] == one[1]["bpb"]
