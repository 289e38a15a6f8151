"""Curation jobs as configuration: one typed model shared by the ``curation-run`` flow, the
``sift-curate curation-run`` verb and the deployments.

A jobs file is YAML::

    defaults:                 # optional: merged into every job (a job's own keys win)
      budget: 200
      strategies: [random, facility_location]
    jobs:
      pile-nightly:           # the deployment is named after the job: curation-run/pile-nightly
        corpus: /data/pile/*.jsonl.zst
        corpus_name: pile
        pool: /data/pools/instructions/
        pool_name: instructions
        handoff_strategy: facility_location
        schedule: {cron: "0 3 * * *", timezone: UTC}   # or a cron string, or null

Every key of :class:`CurationJob` may appear; an unknown key, a wrong type or a value out
of range is an error that names the file, the job and the key. With no file there is one
job, ``nightly``, with every default: it curates the bundled sample, built into the
workspace on its first run, so a scheduled run with no parameters works out of the box.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic import model_validator as _model_validator

# the choices are the flows' own (one definition each, in flows/params.py)
from flows.params import (
    NAME_PATTERN,
    Allocation,
    HandoffFormat,
    HandoffTo,
    Unit,
    explain,
)
from flows.params import PoolStrategy as Strategy

NIGHTLY = "nightly"
NIGHTLY_CRON = "0 3 * * *"
#: the corpus the demo and the default job embed the bundled sample into
SAMPLE_CORPUS = "mini-pile"
SAMPLE_POOL = "sample-pool"
#: input lines per shard of the bundled sample (~400 chunks: progress every shard); a
#: corpus keeps its shard size for life, so the demo and the default job must agree
SAMPLE_SHARD_DOCS = 250
DEFAULT_SHARD_DOCS = 2000


class ConfigError(ValueError):
    """A jobs file or job parameters that do not validate; the message names where."""


class CurationJob(BaseModel):
    """The parameters of one curation run (embed -> index -> rank -> handoff).

    ``corpus`` / ``pool`` left out mean the bundled sample in ``<workspace>/sample``;
    a corpus or pool of your own needs its name (``corpus_name`` / ``pool_name``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    corpus: str | None = Field(None, description="Pile-format input: a .jsonl[.gz|.zst] or "
                               ".parquet file, a folder or a glob; default: the bundled "
                               "sample (built into <workspace>/sample on first run)")
    corpus_name: str = Field(SAMPLE_CORPUS, pattern=NAME_PATTERN,
                             description="corpus name under <workspace>/corpora")
    pool: str | None = Field(None, description="unlabeled instruction pool (.jsonl/.parquet/"
                             ".csv, folder or glob); default: the bundled sample's pool")
    pool_name: str = Field(SAMPLE_POOL, pattern=NAME_PATTERN,
                           description="name of the pool in pool_items")
    budget: float = Field(100.0, gt=0, allow_inf_nan=False,
                          description="annotation budget, in `unit`")
    unit: Unit = Field("items", description="items (each costs 1) or tokens")
    strategies: list[Strategy] = Field(  # type: ignore[valid-type]
        default_factory=lambda: ["random", "facility_location"], min_length=1,
        description="pool strategies ranked in the run")
    handoff_strategy: Strategy = Field(  # type: ignore[valid-type]
        "facility_location", description="whose selection goes to the annotators")
    handoff_format: HandoffFormat = Field("labelstudio", description="handoff file format")
    allocation: Allocation = Field(  # type: ignore[valid-type]
        "proportional", description="budget split across sources")
    batch_size: int | None = Field(None, gt=0, description="items per annotation batch "
                                   "(one handoff file each); default: one batch")
    targets: str | None = Field(None, description="target prompts for the sift strategy")
    lm: str | None = Field(None, description="causal LM: HF folder or .gguf file; default: "
                           "the bundled SmolLM2-135M-Instruct")
    factory: str = Field("auto", description="faiss index: auto or an index_factory string")
    memory_budget: str = Field("4GB", description="RAM one index partition may take")
    target_recall: float = Field(0.95, gt=0, le=1, description="recall@200 the index's "
                                 "search settings must reach")
    shard_docs: int | None = Field(None, gt=0, description="input lines per embedding "
                                   f"shard; default {SAMPLE_SHARD_DOCS} for the sample, "
                                   f"{DEFAULT_SHARD_DOCS} otherwise (fixed for a corpus)")
    ray_address: str | None = Field(None, description="Ray cluster; default: $RAY_ADDRESS "
                                    "or a local Ray")
    handoff_to: HandoffTo = Field("files", description="files (handoff_format, under "
                                  "<workspace>/handoff) or label-studio (a project there; "
                                  "token from $LABEL_STUDIO_API_KEY)")
    label_studio_url: str | None = Field(None, description="Label Studio server; default: "
                                         "$LABEL_STUDIO_URL")
    label_studio_project: str | None = Field(None, min_length=3, max_length=50,
                                             description="Label Studio project title; "
                                             "default: 'sift-curate <pool_name>'")
    collect_first: bool = Field(False, description="before ranking, collect the annotations "
                                "of every Label Studio project this pool was handed off to, "
                                "so the ranking treats annotated items as labelled")

    @field_validator("strategies")
    @classmethod
    def _distinct(cls, v: list[str]) -> list[str]:
        return list(dict.fromkeys(v))

    @_model_validator(mode="after")
    def _consistent(self) -> CurationJob:
        if self.handoff_strategy not in self.strategies:
            raise ValueError(f"handoff_strategy {self.handoff_strategy!r} is not among the "
                             f"strategies ranked ({', '.join(self.strategies)})")
        for data, name, default in (("corpus", "corpus_name", SAMPLE_CORPUS),
                                    ("pool", "pool_name", SAMPLE_POOL)):
            if getattr(self, data) is not None and getattr(self, name) == default:
                raise ValueError(f"{data} is given, so {name} is needed too (the default "
                                 f"{default!r} holds the bundled sample)")
        return self

    @property
    def uses_sample(self) -> bool:
        return self.corpus is None or self.pool is None

    def effective_shard_docs(self) -> int:
        if self.shard_docs:
            return self.shard_docs
        return SAMPLE_SHARD_DOCS if self.corpus is None else DEFAULT_SHARD_DOCS

    def parameters(self) -> dict[str, Any]:
        """The keys that differ from the defaults: a deployment's parameters."""
        return self.model_dump(exclude_defaults=True, mode="json")


class Schedule(BaseModel):
    """When a job's deployment runs: a cron expression and its IANA time zone."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cron: str
    timezone: str = "UTC"

    @_model_validator(mode="after")
    def _valid(self) -> Schedule:
        from prefect.client.schemas.schedules import CronSchedule

        try:
            CronSchedule(cron=self.cron, timezone=self.timezone)
        except ValidationError as err:
            raise ValueError("; ".join(e["msg"].removeprefix("Value error, ")
                                       for e in err.errors())) from None
        return self


class JobSpec(BaseModel):
    """One job of a jobs file: its name, parameters and schedule (None: run on demand)."""

    model_config = ConfigDict(frozen=True)

    name: str
    job: CurationJob
    schedule: Schedule | None = None


def default_jobs(cron: str | None = NIGHTLY_CRON) -> list[JobSpec]:
    """What serving with no jobs file deploys: ``nightly`` with every default."""
    return [JobSpec(name=NIGHTLY, job=CurationJob(),
                    schedule=Schedule(cron=cron) if cron else None)]


def validate_job(params: dict[str, Any], where: str = "parameters") -> CurationJob:
    """``params`` as a :class:`CurationJob`, or :class:`ConfigError` naming each bad key."""
    try:
        return CurationJob.model_validate(params)
    except ValidationError as err:
        known = list(CurationJob.model_fields)
        raise ConfigError("invalid curation job:\n  " + "\n  ".join(
            explain(err, f"{where}: ", known))) from None


def _schedule(raw: Any, where: str) -> Schedule | None:
    if raw is None:
        return None
    try:
        return Schedule.model_validate({"cron": raw} if isinstance(raw, str) else raw)
    except ValidationError as err:
        raise ConfigError("\n  ".join(explain(err, f"{where}.schedule: ",
                                             list(Schedule.model_fields)))) from None


def parse_jobs(data: Any, source: str = "<jobs>") -> list[JobSpec]:
    """Validate a loaded jobs document (see the module docstring)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping with a 'jobs' key, got "
                          f"{type(data).__name__}")
    extra = set(data) - {"defaults", "jobs"}
    if extra:
        raise ConfigError(f"{source}: unknown top-level key(s) {', '.join(sorted(extra))} "
                          "(expected 'defaults' and 'jobs')")
    defaults = data.get("defaults") or {}
    jobs = data.get("jobs")
    if not isinstance(defaults, dict):
        raise ConfigError(f"{source}: defaults: expected a mapping of job keys")
    if not isinstance(jobs, dict) or not jobs:
        raise ConfigError(f"{source}: jobs: expected a mapping of job name -> job keys, "
                          "with at least one job")
    out, errors = [], []
    for name, body in jobs.items():
        where = f"{source}: jobs.{name}"
        if not isinstance(name, str) or not re.match(NAME_PATTERN, name):
            errors.append(f"{where}: invalid job name (letters, digits, '.', '_', '-')")
            continue
        if body is not None and not isinstance(body, dict):
            errors.append(f"{where}: expected a mapping of job keys, got "
                          f"{type(body).__name__}")
            continue
        merged = {**defaults, **(body or {})}
        raw_schedule = merged.pop("schedule", None)
        job = schedule = None
        try:
            job = validate_job(merged, where)
        except ConfigError as err:
            errors.append(str(err).replace("invalid curation job:\n  ", ""))
        try:
            schedule = _schedule(raw_schedule, where)
        except ConfigError as err:
            errors.append(str(err))
        if job is not None and not errors:
            out.append(JobSpec(name=name, job=job, schedule=schedule))
    if errors:
        raise ConfigError("invalid jobs file:\n  " + "\n  ".join(errors))
    return out


def load_jobs(path: str | Path) -> list[JobSpec]:
    """Read and validate a YAML jobs file; :class:`ConfigError` names the file and key."""
    import yaml

    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"jobs file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text ({err})") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    return parse_jobs(data, str(path))


def find_job(jobs: list[JobSpec], name: str | None, source: str) -> JobSpec:
    """The job called ``name`` (or the only one when ``name`` is None)."""
    if name is None:
        if len(jobs) == 1:
            return jobs[0]
        raise ConfigError(f"{source} has {len(jobs)} jobs "
                          f"({', '.join(j.name for j in jobs)}); choose one with --job")
    for j in jobs:
        if j.name == name:
            return j
    raise ConfigError(f"{source} has no job {name!r}; it has "
                      f"{', '.join(j.name for j in jobs)}")
