"""One typed parameter model per flow: the flow's signature takes its defaults from it, the
flow validates its arguments with it (choices are ``Literal`` types, ranges are ``Field``
bounds, so a bad value is refused before any work, naming the parameter), the CLI verb
passes its options through it, and the run id is a hash of its :meth:`FlowParams.run_key`.

``tests/unit/flows/test_params.py`` holds the three together: every field is a parameter
of the flow with the same default, and an option of the CLI verb with the same default.

The curation job's model is :class:`flows.jobs.CurationJob` (it also reads jobs files).
"""

from __future__ import annotations

import difflib
import math
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic import model_validator as _model_validator
from typing_extensions import Self

from sift_ops.budget import ALLOCATIONS
from sift_ops.pool_strategies import STRATEGIES as POOL_STRATEGIES
from sift_ops.pool_strategies import needs_lm
from sift_ops.sift import DEFAULT_ADAPTIVE_ALPHA, DEFAULT_DUP_THRESHOLD
from sift_ops.uncertainty import UNCERTAINTY_KEYS


class ParameterError(ValueError):
    """Flow parameters that do not validate; the message names each bad parameter."""


def explain(err: ValidationError, prefix: str, known: list[str],
            name_choices: bool = False) -> list[str]:
    """One line per error of ``err``: ``<prefix><field>: <why> (got <value>)``, with a
    close match suggested for an unknown name; ``name_choices`` words a value outside a
    ``Literal`` as the CLI always has: ``unknown strategy 'x'; choose from ...``."""
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if not e["loc"]:  # a rule across fields: the message names them
            lines.append(f"{prefix.rstrip(': ')}: {msg}")  # noqa: B005 (a set of chars)
            continue
        if e["type"] == "extra_forbidden":
            key = str(e["loc"][-1])
            close = difflib.get_close_matches(key, known, n=1)
            msg = "unknown key" + (f" (did you mean {close[0]!r}?)" if close else
                                   f"; known keys: {', '.join(known)}")
        elif e["type"] == "literal_error" and name_choices:
            field = str(e["loc"][0])
            label = (field[:-3] + "y" if field.endswith("ies") else field[:-1]
                     if field.endswith("s") and len(e["loc"]) > 1 else field)
            expected = e.get("ctx", {}).get("expected", "")
            msg = f"unknown {label} {e['input']!r}; choose from {expected}"
        elif "input" in e and e["type"] not in ("missing", "value_error"):
            msg += f" (got {e['input']!r})"
        lines.append(f"{prefix}{loc}: {msg}")
    return lines


class FlowParams(BaseModel):
    """Base of the per-flow parameter models.

    ``CONTROL`` names the flow arguments that are not job parameters (where to run, what to
    call the run): they are arguments of the flow and options of the CLI but not fields.
    ``NOT_IN_RUN_ID`` names fields that do not change what a run computes (parallelism, the
    Ray address), so two runs differing only in them share a run id and replace each other.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    FLOW: ClassVar[str] = ""
    CONTROL: ClassVar[frozenset[str]] = frozenset({"workspace", "run_id"})
    NOT_IN_RUN_ID: ClassVar[frozenset[str]] = frozenset({"ray_address"})

    @classmethod
    def of(cls, arguments: dict[str, Any]):
        """The model of a flow call's ``locals()`` (control arguments and anything else that
        is not a field are left out), or :class:`ParameterError` naming each bad one."""
        fields = cls.model_fields
        # None for a field whose default is not None means "the default" (a flow's
        # list-valued parameters default to None because Prefect's defaults are shared)
        values = {k: v for k, v in arguments.items() if k in fields
                  and not (v is None and not fields[k].is_required()
                           and fields[k].get_default(call_default_factory=True) is not None)}
        try:
            return cls.model_validate(values)
        except ValidationError as err:
            raise ParameterError(f"invalid {cls.FLOW} parameters:\n  " + "\n  ".join(
                explain(err, "", list(cls.model_fields), name_choices=True))) from None

    @classmethod
    def default(cls, name: str) -> Any:
        """The default of field ``name`` (for flow signatures)."""
        return cls.model_fields[name].get_default(call_default_factory=True)

    def run_key(self) -> dict[str, Any]:
        """What the run id is a hash of: every field that changes the result."""
        return self.model_dump(mode="json", exclude=set(self.NOT_IN_RUN_ID))

    def flow_kwargs(self) -> dict[str, Any]:
        """The fields as keyword arguments of the flow (Python values, not JSON)."""
        return {k: getattr(self, k) for k in type(self).model_fields}


# -- corpus, index and selection flows ---------------------------------------------------

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"  # as tasks.runtime.workspace.check_name
SelectStrategy = Literal["sift", "nn", "nn-f", "random", "adaptive-sift"]
StoreDtype = Literal["auto", "float16", "float32"]


class SampleParams(FlowParams):
    """``sample``: the bundled mini-Pile, prompts and pool written to ``out``."""

    FLOW: ClassVar[str] = "sample"
    CONTROL: ClassVar[frozenset[str]] = frozenset()

    out: str
    n_docs: int | None = Field(None, gt=0)
    n_queries: int = Field(64, gt=0)
    pool_size: int = Field(1200, gt=0)
    seed: int = 0
    redundancy: float = Field(0.0, ge=0, le=1)


class EmbedParams(FlowParams):
    """``embed``: a Pile-format corpus into ``<workspace>/corpora/<name>`` shards."""

    FLOW: ClassVar[str] = "embed"
    NOT_IN_RUN_ID: ClassVar[frozenset[str]] = frozenset({
        "batch_size", "token_budget", "dtype", "actors", "gpus_per_actor", "ray_address",
        "trust_remote_code"})

    corpus: str
    name: str
    model: str | None = None
    batch_size: int | None = Field(None, gt=0)
    max_tokens: int | None = Field(None, gt=0)
    shard_docs: int = 2000
    actors: int = Field(1, gt=0)
    gpus_per_actor: float = Field(0.0, ge=0)
    ray_address: str | None = None
    trust_remote_code: bool = False
    token_budget: int | None = Field(None, gt=0)
    dtype: Literal["auto", "float32", "fp32", "bfloat16", "bf16", "float16", "fp16"] | None = None

    _resolve = field_validator("corpus")(lambda v: resolve_if_exists(v))


class IndexParams(FlowParams):
    """``index``: the corpus index of ``<workspace>/corpora/<name>``."""

    FLOW: ClassVar[str] = "index"
    NOT_IN_RUN_ID: ClassVar[frozenset[str]] = frozenset({
        "train_size", "block_vectors", "rebuild", "ray_address"})

    name: str
    factory: str = "auto"
    memory_budget: str = "4GB"
    target_recall: float = Field(0.95, gt=0, le=1)
    recall_k: int = Field(200, gt=0)
    train_size: int | None = Field(None, gt=0)
    block_vectors: int = Field(1 << 18, gt=0)
    store_dtype: StoreDtype = "auto"
    rebuild: bool = False
    ray_address: str | None = None

    @field_validator("memory_budget", mode="before")
    @classmethod
    def _as_text(cls, v: Any) -> str:
        return str(v)


class ImportEmbeddingsParams(FlowParams):
    """``import-embeddings``: precomputed vectors registered as corpus ``name``."""

    FLOW: ClassVar[str] = "import-embeddings"

    name: str
    source: str
    id_column: str = "doc_id"
    embedding_column: str = "embedding"
    text_column: str | None = "text"
    source_column: str | None = "source"
    model: str | None = None
    shard_rows: int = Field(100_000, gt=0)

    _resolve = field_validator("source")(lambda v: resolve_if_exists(v))


class SelectParams(FlowParams):
    """``select``: N chunks per prompt from K candidates of corpus ``name``'s index."""

    FLOW: ClassVar[str] = "select"

    name: str
    queries: str | None = None
    query_embeddings: str | None = None
    k: int = Field(200, gt=0)
    n: int = Field(50, gt=0)
    lam: float = Field(0.01, gt=0, allow_inf_nan=False)
    strategy: SelectStrategy = "sift"
    seed: int = 0
    min_gain: float | None = None
    nprobe: int | None = Field(None, gt=0)
    rerank_factor: int | None = Field(None, gt=0)
    block: int = Field(256, gt=0)
    ray_address: str | None = None
    dup_threshold: float = Field(DEFAULT_DUP_THRESHOLD, ge=-1, le=2)
    alpha: float = Field(DEFAULT_ADAPTIVE_ALPHA, gt=0, allow_inf_nan=False)

    @_model_validator(mode="after")
    def _one_prompt_file(self) -> SelectParams:
        if (self.queries is None) == (self.query_embeddings is None):
            raise ValueError("give exactly one of queries (a prompt file) and "
                             "query_embeddings (.npy or Parquet of prompt vectors)")
        if not Path(self.source).is_file():
            raise ValueError(f"{'queries' if self.queries else 'query embeddings'} file "
                             f"{self.source} does not exist")
        return self

    @property
    def source(self) -> str:
        """The prompt file (queries or query embeddings), absolute."""
        return str(Path(self.queries or self.query_embeddings or "").expanduser().resolve())

    def run_key(self) -> dict[str, Any]:
        # the strategy-specific knobs join the key only for their strategy, so sift, nn and
        # random runs keep the ids they had before NN-F and Adaptive SIFT existed
        key = {"name": self.name, "queries": self.source, "k": self.k, "n": self.n,
               "lam": self.lam, "strategy": self.strategy, "seed": self.seed,
               "min_gain": self.min_gain, "nprobe": self.nprobe,
               "rerank_factor": self.rerank_factor}
        if self.strategy == "nn-f":
            key["dup_threshold"] = self.dup_threshold
        if self.strategy == "adaptive-sift":
            key["alpha"] = self.alpha
        if self.query_embeddings:
            key["query_embeddings"] = True
        return key


class DemoParams(FlowParams):
    """``demo``: sample -> embed -> index -> select (sift, nn) on the bundled sample."""

    FLOW: ClassVar[str] = "demo"
    CONTROL: ClassVar[frozenset[str]] = frozenset({"workspace"})

    k: int = Field(200, gt=0)
    n: int = Field(50, gt=0)
    lam: float = Field(0.01, gt=0, allow_inf_nan=False)
    n_docs: int | None = Field(None, gt=0)
    n_queries: int = Field(64, gt=0)


# -- pool and annotation flows -----------------------------------------------------------

PoolStrategy = Literal[POOL_STRATEGIES]  # type: ignore[valid-type]
Allocation = Literal[ALLOCATIONS]  # type: ignore[valid-type]
UncertaintyMetric = Literal[UNCERTAINTY_KEYS]  # type: ignore[valid-type]
Unit = Literal["items", "tokens"]
HandoffFormat = Literal["labelstudio", "jsonl", "csv"]
HandoffTo = Literal["files", "label-studio"]
RANK_DEFAULT_STRATEGIES = ("random", "mean_entropy", "k_center", "facility_location")


class RankParams(FlowParams):
    """``rank``: an unlabeled pool ranked for annotation by each strategy under a budget."""

    FLOW: ClassVar[str] = "rank"
    NOT_IN_RUN_ID: ClassVar[frozenset[str]] = frozenset({
        "strict", "gen_batch_size", "actors", "trust_remote_code", "ray_address"})

    pool: str
    pool_name: str
    budget: float
    unit: Unit = "items"
    strategies: list[PoolStrategy] = Field(  # type: ignore[valid-type]
        default_factory=lambda: list(RANK_DEFAULT_STRATEGIES), min_length=1)
    targets: str | None = None
    allocation: Allocation = "proportional"  # type: ignore[valid-type]
    batch_size: int | None = Field(None, gt=0)
    lm: str | None = None
    max_new_tokens: int = Field(64, gt=0)
    uncertainty_metric: UncertaintyMetric = "mean_entropy"  # type: ignore[valid-type]
    corpus: str | None = None
    encoder: str | None = None
    strict: bool = False
    seed: int = 0
    knn: int = Field(64, gt=0)
    lam: float = Field(0.1, gt=0, allow_inf_nan=False)
    gen_batch_size: int = Field(16, gt=0)
    actors: int = Field(1, gt=0)
    trust_remote_code: bool = False
    ray_address: str | None = None

    _resolve_pool = field_validator("pool")(lambda v: resolve_if_exists(v))
    _distinct = field_validator("strategies")(lambda v: list(dict.fromkeys(v)))

    @field_validator("budget")
    @classmethod
    def _positive(cls, v: float) -> float:
        if not v > 0 or math.isinf(v):  # also NaN
            raise ValueError(f"--budget must be > 0, got {v:g}: nothing would be selected")
        return v

    @field_validator("targets")
    @classmethod
    def _absolute(cls, v: str | None) -> str | None:
        return str(Path(v).expanduser().resolve()) if v else None


class HandoffParams(FlowParams):
    """``handoff``: a rank run's selection as files, or into a Label Studio project."""

    FLOW: ClassVar[str] = "handoff"
    CONTROL: ClassVar[frozenset[str]] = frozenset({"workspace"})

    run: str
    format: HandoffFormat = "labelstudio"
    out: str | None = None
    strategy: PoolStrategy | None = None  # type: ignore[valid-type]
    force: bool = False
    to: HandoffTo = "files"
    url: str | None = None
    project: str | None = None


class CollectParams(FlowParams):
    """``collect``: the annotations of Label Studio projects into ``annotations``."""

    FLOW: ClassVar[str] = "collect"
    CONTROL: ClassVar[frozenset[str]] = frozenset({"workspace"})

    run: str | None = None
    project: str | None = None
    pool_name: str | None = None
    url: str | None = None
    missing_ok: bool = False


# -- evaluation flows (eval-ttt, eval-budget) --------------------------------------------

#: what eval-ttt runs when no strategies are named (the CLI and the flow alike)
TTT_DEFAULT_STRATEGIES = ("sift", "nn", "random")
#: what eval-budget runs when no strategies are named: random and the diversity strategies;
#: the uncertainty ones are opt-in (see EvalBudgetParams)
BUDGET_DEFAULT_STRATEGIES = ("random", "k_center", "facility_location", "sift")
Budget = Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)]


class _OnSample(FlowParams):
    """Parameters of a flow that reads a folder `sift-curate sample` wrote."""

    sample: str | None = Field(None, description="folder `sift-curate sample` wrote; "
                               "default: <workspace>/sample")

    def in_workspace(self, workspace: str | Path) -> Self:
        """A copy whose ``sample`` is the absolute folder (default ``<workspace>/sample``),
        the form the run id hashes (so a relative path and its absolute form agree)."""
        folder = Path(self.sample or Path(workspace) / "sample").expanduser().resolve()
        return self.model_copy(update={"sample": str(folder)})

    def run_key(self) -> dict[str, Any]:
        if self.sample is None or not Path(self.sample).is_absolute():
            raise ValueError("run_key() needs the sample folder resolved: in_workspace()")
        return super().run_key()


class EvalTTTParams(_OnSample):
    """Parameters of `eval-ttt` (flows/eval_ttt.py): test-time fine-tuning on each
    strategy's picks for held-out documents.

    The defaults take about 30 minutes with SmolLM2-135M on two CPU threads: 8 documents x
    3 seeds x 3 strategies x 8 steps = 576 Adam steps of ~2.7 s (256 tokens; forward 0.7 +
    backward 1.5 + Adam 0.5 s). Named strategies add: nn-f up to 192 steps (none where its
    picks equal nn's), adaptive-sift none (scored part-way through sift's run). Where other
    jobs share the cores use ``threads=1``: two OpenMP threads waiting at barriers were
    3-4x slower than one (docs/results.md).
    """

    FLOW: ClassVar[str] = "eval-ttt"
    NOT_IN_RUN_ID: ClassVar[frozenset[str]] = frozenset({"threads"})

    name: str = Field("mini-pile", pattern=NAME_PATTERN,
                      description="embedded and indexed corpus to select from")
    n_docs: int = Field(8, ge=1, description="held-out documents per seed")
    n: int = Field(8, ge=1, description="chunks selected per prompt (= Adam steps)")
    k: int = Field(200, ge=1, description="candidates retrieved per prompt (>= n)")
    lam: float = Field(0.01, gt=0, allow_inf_nan=False, description="SIFT lambda")
    lr: float = Field(1e-4, gt=0, allow_inf_nan=False, description="Adam learning rate")
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    strategies: list[SelectStrategy] = Field(
        default_factory=lambda: list(TTT_DEFAULT_STRATEGIES), min_length=1)
    split: Literal["test", "dev"] = Field("test", description="held-out split: test for "
                                          "results, dev for tuning the learning rate")
    lm: str | None = Field(None, description="causal LM (HF folder or .gguf); default: "
                           "the bundled SmolLM2-135M-Instruct")
    max_train_tokens: int = Field(256, ge=1, description="tokens of each chunk trained on")
    prompt_chars: int = Field(800, ge=1, description="prompt (prefix) length, characters")
    continuation_chars: int = Field(600, ge=1, description="scored continuation, characters")
    threads: int | None = Field(None, ge=1, description="torch CPU threads")
    dup_threshold: float = Field(DEFAULT_DUP_THRESHOLD, ge=-1, le=2, allow_inf_nan=False,
                                 description="nn-f: cosine similarity to an earlier pick "
                                 "at which a candidate is skipped (above 1: no filter)")
    alpha: float = Field(DEFAULT_ADAPTIVE_ALPHA, gt=0, allow_inf_nan=False,
                         description="adaptive-sift: compute-performance ratio")

    @field_validator("strategies", mode="before")
    @classmethod
    def _empty_is_default(cls, v: Any) -> Any:
        """No strategies named (an empty list, as from an empty CLI option): the default."""
        return v if v or v is None else cls.default("strategies")

    @_model_validator(mode="after")
    def _k_covers_n(self) -> EvalTTTParams:
        if self.k < self.n:
            raise ValueError(f"k ({self.k}) must be at least n ({self.n}): n chunks are "
                             "chosen among k candidates")
        return self

    def run_key(self) -> dict[str, Any]:
        # nn-f's and adaptive-sift's knobs join the key only when they run, so runs of
        # sift, nn and random keep the ids they had before those strategies existed
        key = super().run_key()
        if "nn-f" not in self.strategies:
            del key["dup_threshold"]
        if "adaptive-sift" not in self.strategies:
            del key["alpha"]
        return key


class EvalBudgetParams(_OnSample):
    """Parameters of `eval-budget` (flows/eval_budget.py): test loss after fine-tuning on
    each strategy's picks at each budget (a fraction of the selection pool).

    ``budgets`` are sorted and always end at 1.0 (random at 100 % is the reference);
    ``strategies`` always hold random (first when it was not named). The uncertainty
    strategies (:data:`sift_ops.pool_strategies.LM_STRATEGIES`) are opt-in: each adds as much
    fine-tuning as a diversity strategy (~40 % more per strategy at the defaults) and the
    first adds LM scoring of every selection-pool prompt; all ten at the defaults take hours
    on a 2-core CPU (docs/results.md).
    """

    FLOW: ClassVar[str] = "eval-budget"
    NOT_IN_RUN_ID: ClassVar[frozenset[str]] = frozenset({"threads"})
    #: in the run key only when a strategy needs the LM's uncertainty (older run ids stay)
    LM_KNOBS: ClassVar[tuple[str, ...]] = ("max_new_tokens", "gen_batch_size")

    n_select: int = Field(120, ge=2, description="items in the selection pool per seed")
    n_test: int = Field(40, ge=1, description="held-out test items per seed")
    budgets: list[Budget] = Field(default_factory=lambda: [0.05, 0.1, 0.25, 0.5, 1.0],
                                  min_length=1, description="fractions of the pool, (0, 1]")
    strategies: list[PoolStrategy] = Field(  # type: ignore[valid-type]
        default_factory=lambda: list(BUDGET_DEFAULT_STRATEGIES), min_length=1)
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    lr: float = Field(1e-4, gt=0, allow_inf_nan=False, description="Adam learning rate")
    epochs: int = Field(1, ge=1, description="passes over the selected items")
    batch_size: int = Field(8, ge=1, description="items per Adam step")
    lam: float = Field(0.1, gt=0, allow_inf_nan=False, description="SIFT lambda (sift)")
    lm: str | None = Field(None, description="causal LM (HF folder or .gguf); default: "
                           "the bundled SmolLM2-135M-Instruct")
    encoder: str | None = Field(None, description="prompt encoder; default: the bundled "
                                "all-MiniLM-L6-v2")
    max_prompt_tokens: int = Field(128, ge=1, description="prompt tokens kept (the first)")
    max_response_tokens: int = Field(64, ge=1, description="response tokens kept")
    max_new_tokens: int = Field(64, ge=1, description="uncertainty strategies: length cap "
                                "of the base LM's greedy answer, tokens")
    gen_batch_size: int = Field(16, ge=1, description="uncertainty strategies: prompts per "
                                "generate call")
    threads: int | None = Field(None, ge=1, description="torch CPU threads")

    @field_validator("budgets", "strategies", mode="before")
    @classmethod
    def _empty_is_default(cls, v: Any, info: ValidationInfo) -> Any:
        """None named (an empty list, as from an empty CLI option): the default."""
        return v if v or v is None else cls.default(info.field_name)

    @field_validator("budgets")
    @classmethod
    def _sorted_to_full_pool(cls, v: list[float]) -> list[float]:
        v = sorted(v)
        return v if v[-1] == 1.0 else [*v, 1.0]  # the reference, random at 100 %

    @field_validator("strategies")
    @classmethod
    def _with_random(cls, v: list[str]) -> list[str]:
        v = list(dict.fromkeys(v))
        return v if "random" in v else ["random", *v]

    @property
    def uses_lm(self) -> bool:
        """Whether a strategy ranks by the base LM's uncertainty (the pool is scored)."""
        return needs_lm(self.strategies)

    def run_key(self) -> dict[str, Any]:
        key = super().run_key()
        if not self.uses_lm:
            key = {k: v for k, v in key.items() if k not in self.LM_KNOBS}
        return key


def resolve_if_exists(value: str | None) -> str | None:
    """An input path made absolute when it exists (so a run id does not depend on the
    working directory); a glob or a missing path stays as given, to fail where it is read."""
    if value is None:
        return None
    return str(Path(value).expanduser().resolve()) if Path(value).exists() else value
