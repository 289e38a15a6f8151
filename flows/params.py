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
