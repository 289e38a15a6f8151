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
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError


class ParameterError(ValueError):
    """Flow parameters that do not validate; the message names each bad parameter."""


def explain(err: ValidationError, prefix: str, known: list[str]) -> list[str]:
    """One line per error of ``err``: ``<prefix><field>: <why> (got <value>)``, with a
    close match suggested for an unknown name."""
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
        elif "input" in e and e["type"] not in ("missing",):
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
        values = {k: v for k, v in arguments.items() if k in cls.model_fields}
        try:
            return cls.model_validate(values)
        except ValidationError as err:
            raise ParameterError(f"invalid {cls.FLOW} parameters:\n  " + "\n  ".join(
                explain(err, "", list(cls.model_fields)))) from None

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


# -- pool and annotation flows -----------------------------------------------------------


# -- evaluation flows (eval-ttt, eval-budget) --------------------------------------------
# Imported here, not at the top, so this section stays one block to merge.
from pathlib import Path  # noqa: E402
from typing import Annotated, Literal  # noqa: E402

from pydantic import Field, ValidationInfo, field_validator, model_validator  # noqa: E402
from typing_extensions import Self  # noqa: E402

from sift_ops.pool_strategies import STRATEGIES, needs_lm  # noqa: E402
from tasks.evaluation.evaluate import (  # noqa: E402
    BUDGET_DEFAULT_STRATEGIES,
    TTT_DEFAULT_STRATEGIES,
    TTT_STRATEGIES,
)
from tasks.selection.select import (  # noqa: E402
    DEFAULT_ALPHA,
    DEFAULT_DUP_THRESHOLD,
    strategy_params,
)

TTTStrategy = Literal[TTT_STRATEGIES]  # type: ignore[valid-type]
PoolStrategy = Literal[STRATEGIES]  # type: ignore[valid-type]
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
    #: in the run key only where a strategy that uses them runs (older run ids stay)
    STRATEGY_KNOBS: ClassVar[tuple[str, ...]] = ("dup_threshold", "alpha")

    name: str = Field("mini-pile", description="embedded and indexed corpus to select from")
    n_docs: int = Field(8, ge=1, description="held-out documents per seed")
    n: int = Field(8, ge=1, description="chunks selected per prompt (= Adam steps)")
    k: int = Field(200, ge=1, description="candidates retrieved per prompt (>= n)")
    lam: float = Field(0.01, gt=0, allow_inf_nan=False, description="SIFT lambda")
    lr: float = Field(1e-4, gt=0, allow_inf_nan=False, description="Adam learning rate")
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    strategies: list[TTTStrategy] = Field(  # type: ignore[valid-type]
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
    alpha: float = Field(DEFAULT_ALPHA, gt=0, allow_inf_nan=False,
                         description="adaptive-sift: compute-performance ratio")

    @field_validator("seeds", "strategies", mode="before")
    @classmethod
    def _empty_is_default(cls, v: Any, info: ValidationInfo) -> Any:
        """None is the default (the CLI parses an empty option to None), and so is an empty
        strategy list; an empty seed list stays an error."""
        if v is None or (info.field_name == "strategies" and not v):
            return cls.default(info.field_name)
        return v

    @model_validator(mode="after")
    def _k_covers_n(self) -> EvalTTTParams:
        if self.k < self.n:
            raise ValueError(f"k ({self.k}) must be at least n ({self.n}): n chunks are "
                             "chosen among k candidates")
        return self

    def run_key(self) -> dict[str, Any]:
        key = {k: v for k, v in super().run_key().items() if k not in self.STRATEGY_KNOBS}
        for s in self.strategies:
            key.update(strategy_params(s, self.dup_threshold, self.alpha))
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

    @field_validator("budgets", "strategies", "seeds", mode="before")
    @classmethod
    def _empty_is_default(cls, v: Any, info: ValidationInfo) -> Any:
        """None is the default (the CLI parses an empty option to None), and so is an empty
        budget or strategy list; an empty seed list stays an error."""
        if v is None or (info.field_name != "seeds" and not v):
            return cls.default(info.field_name)
        return v

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
