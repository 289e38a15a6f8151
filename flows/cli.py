"""`sift-curate`: the command line. Each verb runs one Prefect flow.

Without PREFECT_API_URL each flow runs against a temporary local Prefect server whose
state lives in <workspace>/.prefect; with it, runs show up in that server's UI.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Data curation for LLM fine-tuning: embed a corpus with Ray, index it with faiss, "
    "select data with SIFT, write results to DuckDB. Each command runs a Prefect flow.",
)

Workspace = Annotated[
    str | None,
    typer.Option("--workspace", "-w", envvar="SIFT_WORKSPACE",
                 help="Workspace folder (corpora, indices, curation.duckdb). "
                 "Default: $SIFT_WORKSPACE or ./workspace."),
]
RayAddress = Annotated[
    str | None,
    typer.Option(envvar="RAY_ADDRESS",
                 help="Ray cluster to run on (e.g. 10.0.0.5:6379 or 'auto'); default: "
                 "$RAY_ADDRESS, else a local Ray started for this run."),
]
RunId = Annotated[
    str | None,
    typer.Option(help="Run id for the runs table; default: derived from the parameters, so "
                 "rerunning the same job replaces its rows."),
]


def _setup(workspace: str | None) -> str:
    from flows.settings import configure

    configure(workspace)
    import os

    return os.environ["SIFT_WORKSPACE"]


def _run(flow: str, model: str, options: dict, **renamed) -> dict:
    """Run the flow of module ``flows.<flow>`` with the verb's options (its ``locals()``,
    with ``renamed`` ones under the flow's names) passed through the flow's parameter model
    ``flows.params.<model>``: validated before any work, with an error naming the option.
    The flow's control arguments (``model.CONTROL``: ``workspace``, ``run_id``) come from
    the options too, the workspace as configured."""
    import importlib

    ws = _setup(options.get("workspace"))  # before Prefect (or anything else) is imported
    run = getattr(importlib.import_module(f"flows.{flow}"), f"{flow}_flow")
    from flows import params

    p = getattr(params, model).of({**options, **renamed})
    control = {k: ws if k == "workspace" else options.get(k) for k in p.CONTROL}
    return run(**p.flow_kwargs(), **control)


def _show(result: dict) -> None:
    from rich.console import Console

    slim = {k: v for k, v in result.items() if k not in ("report", "new_shards")}
    Console(stderr=True).print_json(json.dumps(slim, default=str))


@app.command()
def sample(
    out: Annotated[Path | None, typer.Option(help="Output folder. Default: <workspace>/sample")]
    = None,
    n_docs: Annotated[int | None, typer.Option(help="Corpus documents (default: the full "
                                               "~3,400-document sample)")] = None,
    n_queries: Annotated[int, typer.Option(help="Held-out prompts to write")] = 64,
    pool_size: Annotated[int, typer.Option(help="Instruction pool items")] = 1200,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same bytes)")] = 0,
    redundancy: Annotated[float, typer.Option(
        help="Share R of corpus documents that recur as exact and lightly edited copies "
        "(heavy-tailed copy counts; 0.3 gives the Pile's ~31 % duplicates). 0: none")] = 0.0,
    workspace: Workspace = None,
) -> None:
    """Build the bundled mini-Pile (.jsonl.zst), held-out prompts and an instruction pool."""
    from tasks.runtime.workspace import workspace_root

    _show(_run("sample", "SampleParams", locals(),
               out=str(out or workspace_root(workspace) / "sample")))


@app.command()
def embed(
    corpus: Annotated[str, typer.Option(help="Pile-format input: a .jsonl[.gz|.zst] or .parquet "
                                        "file, a folder of them, or a glob")],
    name: Annotated[str, typer.Option(help="Corpus name (folder under <workspace>/corpora)")],
    model: Annotated[str | None, typer.Option(help="Local Hugging Face encoder folder. "
                                              "Default: bundled all-MiniLM-L6-v2")] = None,
    batch_size: Annotated[int | None, typer.Option(
        help="At most this many chunks per encoder forward pass (default: the token budget "
        "alone decides)")] = None,
    token_budget: Annotated[int | None, typer.Option(
        help="Padded tokens per encoder forward pass (default: from free GPU memory; "
        "8192 on CPU)")] = None,
    dtype: Annotated[str | None, typer.Option(
        help="Encoder dtype: auto (float32 on CPU; bf16, else fp16, on CUDA, checked "
        "against float32 at cosine >= 0.999), float32 (fp32), bfloat16 (bf16) or "
        "float16 (fp16)")] = None,
    max_tokens: Annotated[int | None, typer.Option(help="Chunk length in tokens (default and "
                                                   "maximum: the encoder's)")] = None,
    shard_docs: Annotated[int, typer.Option(help="Input lines per Parquet shard (fixed for a "
                                            "corpus: resuming relies on it)")] = 2000,
    actors: Annotated[int, typer.Option(help="Max encoder actors (Ray autoscales 1..N)")] = 1,
    gpus_per_actor: Annotated[float, typer.Option(help="GPUs per encoder actor (0: CPU)")] = 0.0,
    ray_address: RayAddress = None,
    trust_remote_code: Annotated[bool, typer.Option(
        help="Allow an encoder folder whose config asks for custom Python code "
        "(refused by default: it runs code from that folder)")] = False,
    run_id: RunId = None,
    workspace: Workspace = None,
) -> None:
    """Chunk and embed a corpus into Parquet shards with Ray Data (resumable)."""
    _show(_run("embed", "EmbedParams", locals()))


@app.command()
def index(
    name: Annotated[str, typer.Option(help="Corpus name")],
    factory: Annotated[str, typer.Option(
        help="auto: exact Flat up to 65,536 vectors, else IVF with ~sqrt(n) lists and "
        "8-bit PQ codes (d/8 bytes per vector) and an exact re-rank; or any faiss "
        "index_factory string, inner product (e.g. Flat, IVF4096,PQ48x8, HNSW32)")]
    = "auto",
    memory_budget: Annotated[str, typer.Option(
        help="RAM one partition may take at search time (e.g. 4GB, 512MB): the index "
        "is split into as many partitions as needed, one Ray actor each")] = "4GB",
    target_recall: Annotated[float, typer.Option(
        help="recall@K against exact search (K = --recall-k) that the recorded nprobe "
        "and re-rank factor must reach on held-out corpus vectors")] = 0.95,
    recall_k: Annotated[int, typer.Option(help="K of the recall target (select's --k)")]
    = 200,
    train_size: Annotated[int | None, typer.Option(
        help="Vectors sampled uniformly across all shards to train IVF/PQ once (default: "
        "64 per IVF list, at most 2**20)")] = None,
    block_vectors: Annotated[int, typer.Option(
        help="Vectors per block: one Ray task turns that many rows of embedding shards "
        "into one block of the index and the vector store")] = 1 << 18,
    store_dtype: Annotated[str, typer.Option(
        help="Vector store precision for the exact re-rank: auto (float32 with a Flat "
        "index, float16 otherwise), float16 or float32")] = "auto",
    rebuild: Annotated[bool, typer.Option(
        help="Drop the existing index and train anew (default: add shards embedded since "
        "the last build to the trained index, keeping finished blocks)")] = False,
    ray_address: RayAddress = None,
    run_id: RunId = None,
    workspace: Workspace = None,
) -> None:
    """Build or extend the corpus index: one trained faiss model in partitions, recall
    measured against exact search (GPU faiss when available)."""
    _show(_run("index", "IndexParams", locals()))


@app.command("import-embeddings")
def import_embeddings(
    name: Annotated[str, typer.Option(help="Corpus name to register (folder under "
                                      "<workspace>/corpora)")],
    from_: Annotated[str, typer.Option("--from", help="Parquet input: a file, a folder "
                                       "(searched recursively) or a glob")],
    id_column: Annotated[str, typer.Option(help="int64 id column; becomes doc_id")]
    = "doc_id",
    embedding_column: Annotated[str, typer.Option(help="list or fixed-size list of floats")]
    = "embedding",
    text_column: Annotated[str | None, typer.Option(help="Optional text column (texts of "
                                                    "the picks are fetched from it)")]
    = "text",
    source_column: Annotated[str | None, typer.Option(help="Optional source column")]
    = "source",
    model: Annotated[str | None, typer.Option(
        help="Encoder folder that made these vectors, so `select --queries` can embed "
        "text prompts; without it use `select --query-embeddings`")] = None,
    shard_rows: Annotated[int, typer.Option(help="Rows per written shard")] = 100_000,
    run_id: RunId = None,
    workspace: Workspace = None,
) -> None:
    """Register a corpus from embeddings you already have (Parquet), for index and select."""
    _show(_run("import_embeddings", "ImportEmbeddingsParams", locals(), source=from_))


@app.command()
def select(
    name: Annotated[str, typer.Option(help="Corpus name")],
    queries: Annotated[str | None, typer.Option(help="Prompts: JSONL with text (+query_id) "
                                                "or a text file, one prompt per line")]
    = None,
    query_embeddings: Annotated[str | None, typer.Option(
        help="Prompts already embedded instead of --queries: .npy [B, d] (query ids 0..B-1) "
        "or Parquet with query_id and embedding; no encoder is loaded")] = None,
    k: Annotated[int, typer.Option(help="Candidates retrieved per prompt")] = 200,
    n: Annotated[int, typer.Option(help="Chunks selected per prompt")] = 50,
    lam: Annotated[float, typer.Option(help="SIFT regulariser lambda > 0 (larger allows "
                                       "more repeats)")] = 0.01,
    strategy: Annotated[str, typer.Option(help="sift | nn | nn-f (near-duplicates "
                                          "filtered) | random | adaptive-sift (SIFT that "
                                          "stops per prompt: fewer than N rows)")] = "sift",
    seed: Annotated[int, typer.Option(help="Seed for the random strategy")] = 0,
    dup_threshold: Annotated[float, typer.Option(
        help="nn-f: skip a candidate whose cosine similarity to an already picked chunk is "
        "at least this")] = 0.9,
    alpha: Annotated[float, typer.Option(
        help="adaptive-sift: compute-performance ratio; a prompt keeps taking picks while "
        "alpha * n * sigma_n <= 1 (larger stops sooner)")] = 0.15,
    min_gain: Annotated[float | None, typer.Option(help="Stop a prompt's selection when the "
                                                   "variance reduction falls below this")]
    = None,
    nprobe: Annotated[int | None, typer.Option(help="IVF lists probed per query (default: "
                                               "the one measured at build time)")] = None,
    rerank_factor: Annotated[int | None, typer.Option(
        help="Approximate candidates per exact one: K x this are re-ranked exactly from the "
        "vector store (default: measured at build time)")] = None,
    block: Annotated[int, typer.Option(help="Prompts per search block (memory is bounded "
                                       "by the block)")] = 256,
    ray_address: RayAddress = None,
    run_id: RunId = None,
    workspace: Workspace = None,
) -> None:
    """Select data for each prompt (SIFT, nearest neighbours or random) into DuckDB."""
    _show(_run("select", "SelectParams", locals()))


@app.command()
def demo(
    workspace: Workspace = None,
    k: Annotated[int, typer.Option(help="Candidates per prompt")] = 200,
    n: Annotated[int, typer.Option(help="Chunks selected per prompt")] = 50,
    lam: Annotated[float, typer.Option(help="SIFT lambda")] = 0.01,
    n_docs: Annotated[int | None, typer.Option(help="Smaller sample for a quick look")] = None,
    n_queries: Annotated[int, typer.Option(help="Held-out prompts")] = 64,
) -> None:
    """The whole path on the bundled sample: sample, embed, index, select (sift and nn)."""
    _run("demo", "DemoParams", locals())  # the flow prints its report


def _floats(text: str | None) -> list[float] | None:
    return [float(x) for x in text.split(",") if x.strip()] if text else None


def _ints(text: str | None) -> list[int] | None:
    return [int(x) for x in text.split(",") if x.strip()] if text else None


def _names(text: str | None) -> list[str] | None:
    return [x.strip() for x in text.split(",") if x.strip()] if text else None


def _repeated(values: list[str] | None) -> list[str] | None:
    """A repeatable option whose values may also be comma-separated, flattened (None for
    none given: the model's default)."""
    return [n for v in (values or []) for n in _names(v) or []] or None


@app.command("eval-ttt")
def eval_ttt(
    name: Annotated[str, typer.Option(help="Embedded and indexed corpus to select from")]
    = "mini-pile",
    sample: Annotated[str | None, typer.Option(
        help="Folder `sift-curate sample` wrote for this corpus; held-out documents are "
        "taken from the same sources and checked against its pile/ (default: "
        "<workspace>/sample)")] = None,
    n_docs: Annotated[int, typer.Option(help="Held-out documents per seed (half news, "
                                        "half code)")] = 8,
    n: Annotated[int, typer.Option(help="Chunks selected per prompt = Adam steps")] = 8,
    k: Annotated[int, typer.Option(help="Candidates retrieved per prompt")] = 200,
    lam: Annotated[float, typer.Option(help="SIFT regulariser lambda > 0")] = 0.01,
    lr: Annotated[float, typer.Option(help="Adam learning rate of the test-time steps")]
    = 1e-4,
    seeds: Annotated[str, typer.Option(help="Comma-separated seeds; each draws its own "
                                       "documents (and random picks)")] = "0,1,2",
    strategies: Annotated[str, typer.Option(help="Comma-separated subset of sift,nn,nn-f,"
                                            "random,adaptive-sift")]
    = "sift,nn,random",
    split: Annotated[str, typer.Option(help="Held-out split: 'test' for results, 'dev' for "
                                       "tuning the learning rate (disjoint documents)")]
    = "test",
    lm: Annotated[str | None, typer.Option(help="Causal LM: a local HF folder or a .gguf "
                                           "file (converted once into <workspace>/models); "
                                           "default: the bundled SmolLM2-135M-Instruct")]
    = None,
    max_train_tokens: Annotated[int, typer.Option(help="Tokens of each chunk used for its "
                                                  "step")] = 256,
    prompt_chars: Annotated[int, typer.Option(help="Prompt (prefix) length in characters, "
                                              "cut at a space")] = 800,
    continuation_chars: Annotated[int, typer.Option(help="Scored continuation length in "
                                                    "characters")] = 600,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads (default: "
                                                "torch's; use 1 on a machine shared with "
                                                "other jobs)")] = None,
    dup_threshold: Annotated[float, typer.Option(
        help="nn-f: cosine similarity to an earlier pick at which a candidate is skipped")]
    = 0.9,
    alpha: Annotated[float, typer.Option(
        help="adaptive-sift: compute-performance ratio (steps while alpha*n*sigma_n <= 1)")]
    = 0.15,
    run_id: RunId = None,
    workspace: Workspace = None,
) -> None:
    """Test-time fine-tuning: bits per byte after training on each strategy's picks.

    Larger run (e.g. on a GPU machine): --n-docs 64 --n 50 --seeds 0,1,2,3,4.
    """
    _show(_run("eval_ttt", "EvalTTTParams", locals(), seeds=_ints(seeds),
               strategies=_names(strategies)))


@app.command("eval-budget")
def eval_budget(
    sample: Annotated[str | None, typer.Option(
        help="Folder `sift-curate sample` wrote: pool.jsonl and pool_references.jsonl "
        "(default: <workspace>/sample)")] = None,
    n_select: Annotated[int, typer.Option(help="Items in the selection pool per seed")] = 120,
    n_test: Annotated[int, typer.Option(help="Held-out test items per seed")] = 40,
    budgets: Annotated[str, typer.Option(help="Comma-separated fractions of the selection "
                                         "pool (1.0 is always added)")]
    = "0.05,0.1,0.25,0.5,1.0",
    strategies: Annotated[str, typer.Option(
        help="Comma-separated pool strategies (random is always added). Default: random, "
        "k_center, facility_location, sift (toward the test prompts). Opt-in, because "
        "each one costs as much fine-tuning as the others and the first one adds LM "
        "scoring of every selection-pool prompt (all ten at the defaults take hours on 2 "
        "CPU cores): mean_entropy, max_entropy, least_confidence, mean_margin, "
        "min_margin (most uncertain greedy answer of the base LM first) and "
        "uncertainty_facility_location (facility location weighted by mean_entropy); "
        "also nn-f (nearest neighbours of the test prompts, near-duplicates skipped)")]
    = "random,k_center,facility_location,sift",
    seeds: Annotated[str, typer.Option(help="Comma-separated seeds; each draws its own "
                                       "pool/test split and random order")] = "0,1,2",
    lr: Annotated[float, typer.Option(help="Adam learning rate")] = 1e-4,
    epochs: Annotated[int, typer.Option(help="Passes over the selected items")] = 1,
    batch_size: Annotated[int, typer.Option(help="Items per Adam step")] = 8,
    lam: Annotated[float, typer.Option(help="SIFT lambda for the sift strategy")] = 0.1,
    lm: Annotated[str | None, typer.Option(help="Causal LM: a local HF folder or a .gguf "
                                           "file (converted once into <workspace>/models); "
                                           "default: the bundled SmolLM2-135M-Instruct")]
    = None,
    encoder: Annotated[str | None, typer.Option(help="Encoder for prompt embeddings "
                                                "(default: bundled all-MiniLM-L6-v2)")]
    = None,
    max_prompt_tokens: Annotated[int, typer.Option(help="Prompt tokens kept (the first "
                                                   "ones: the instruction comes first)")]
    = 128,
    max_response_tokens: Annotated[int, typer.Option(help="Response tokens kept")] = 64,
    max_new_tokens: Annotated[int, typer.Option(
        help="Uncertainty strategies only: length cap in tokens of the base LM's greedy "
        "answer that is scored (as in `rank`)")] = 64,
    gen_batch_size: Annotated[int, typer.Option(
        help="Uncertainty strategies only: prompts per generate call")] = 16,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads (use 1 on a "
                                                "machine shared with other jobs)")] = None,
    run_id: RunId = None,
    workspace: Workspace = None,
) -> None:
    """Label efficiency: test loss vs annotation budget per selection strategy.

    Larger run: --n-select 800 --n-test 200 --epochs 2. With the uncertainty strategies:
    --strategies random,k_center,facility_location,sift,mean_entropy,max_entropy,\
least_confidence,mean_margin,min_margin,uncertainty_facility_location
    """
    _show(_run("eval_budget", "EvalBudgetParams", locals(), budgets=_floats(budgets),
               strategies=_names(strategies), seeds=_ints(seeds)))


@app.command()
def rank(
    pool: Annotated[str, typer.Option(help="Unlabeled instruction pool: a .jsonl, .parquet or "
                                      ".csv file (or a folder / glob of them) with "
                                      "'instruction' and optional 'input', 'source' (or "
                                      "'task'), 'item_id', 'output' (already labelled: never "
                                      "selected) and 'cost'")],
    pool_name: Annotated[str, typer.Option(help="Name of the pool in pool_items (its rows "
                                           "are replaced on every rank of the same name)")],
    budget: Annotated[float, typer.Option(help="Annotation budget in --unit; never "
                                          "exceeded, overall or per source")],
    unit: Annotated[str, typer.Option(help="items: every item costs 1. tokens: prompt tokens "
                                      "+ the tokens of the LM's greedy answer (or the "
                                      "pool's 'cost' column where given)")] = "items",
    strategy: Annotated[list[str] | None, typer.Option(
        help="Repeat or comma-separate for several (compared in one run): random, "
        "mean_entropy, max_entropy, least_confidence, mean_margin, min_margin, k_center, "
        "facility_location, uncertainty_facility_location, sift, nn-f (nearest "
        "neighbours of the targets, near-duplicates skipped). Default: random, "
        "mean_entropy, k_center, facility_location")] = None,
    targets: Annotated[str | None, typer.Option(help="Target prompts for sift (JSONL with "
                                                "text/prompt/query/instruction, or one "
                                                "prompt per line); default: the pool "
                                                "itself")] = None,
    allocation: Annotated[str, typer.Option(help="Budget split across sources: "
                                            "proportional (to source size), equal, or "
                                            "uncertainty (more where the LM is less sure)")]
    = "proportional",
    batch_size: Annotated[int | None, typer.Option(help="Items per annotation batch (one "
                                                   "handoff file each); default: one "
                                                   "batch")] = None,
    lm: Annotated[str | None, typer.Option(help="Causal LM for uncertainty: a local HF "
                                           "folder or a .gguf file (converted once into "
                                           "<workspace>/models, keyed by its SHA-256); "
                                           "default: the bundled SmolLM2-135M-Instruct")]
    = None,
    max_new_tokens: Annotated[int, typer.Option(help="Greedy answer length cap (tokens)")]
    = 64,
    uncertainty_metric: Annotated[str, typer.Option(
        help="Metric behind uncertainty_facility_location and --allocation uncertainty: "
        "mean_entropy, max_entropy, least_confidence, mean_margin or min_margin")]
    = "mean_entropy",
    corpus: Annotated[str | None, typer.Option(help="Embed prompts with this embedded "
                                               "corpus's encoder (same space as the "
                                               "corpus)")] = None,
    encoder: Annotated[str | None, typer.Option(help="Local HF encoder folder when no "
                                                "--corpus (default: bundled "
                                                "all-MiniLM-L6-v2)")] = None,
    strict: Annotated[bool, typer.Option(help="Fail on the first bad row (file:line) "
                                         "instead of quarantining it")] = False,
    seed: Annotated[int, typer.Option(help="Seed of the random strategy")] = 0,
    knn: Annotated[int, typer.Option(help="Neighbours per item in the facility-location "
                                     "kNN graph")] = 64,
    lam: Annotated[float, typer.Option(help="SIFT noise parameter lambda > 0")] = 0.1,
    gen_batch_size: Annotated[int, typer.Option(help="Prompts per generate call")] = 16,
    actors: Annotated[int, typer.Option(help="Max LM / encoder actors in the Ray stages")]
    = 1,
    trust_remote_code: Annotated[bool, typer.Option(help="Allow an --lm folder with custom "
                                                    "code (only for models you trust)")]
    = False,
    ray_address: RayAddress = None,
    run_id: RunId = None,
    workspace: Workspace = None,
) -> None:
    """Rank an unlabeled instruction pool for annotation under a budget (DuckDB + plots)."""
    _show(_run("rank", "RankParams", locals(), strategies=_repeated(strategy)))


@app.command()
def handoff(
    run: Annotated[str, typer.Option(help="Run id of a `sift-curate rank` run")],
    format: Annotated[str, typer.Option(help="labelstudio (import JSON with a prediction "
                                        "score), jsonl (text + meta), or csv")]
    = "labelstudio",
    out: Annotated[str | None, typer.Option(help="Output folder; files go to "
                                            "OUT/RUN/STRATEGY/ (default: "
                                            "<workspace>/handoff)")] = None,
    strategy: Annotated[str | None, typer.Option(help="Which strategy's selection (needed "
                                                 "when the run compared several)")] = None,
    force: Annotated[bool, typer.Option(
        help="Files: replace an existing handoff folder. Label Studio: delete this run's "
        "tasks nobody annotated yet and import them anew (annotated tasks are kept)")]
    = False,
    to: Annotated[str, typer.Option(
        help="files (default), or label-studio: import the batches into a Label Studio "
        "project (token from $LABEL_STUDIO_API_KEY, a personal access token)")] = "files",
    url: Annotated[str | None, typer.Option(
        envvar="LABEL_STUDIO_URL", help="Label Studio server, e.g. http://127.0.0.1:8080 "
        "(default: $LABEL_STUDIO_URL)")] = None,
    project: Annotated[str | None, typer.Option(
        help="Label Studio project title, created with the instruction -> response config "
        "when missing (default: 'sift-curate <pool>')")] = None,
    workspace: Workspace = None,
) -> None:
    """Hand a rank run's selection to annotators: files (one per batch, plus a manifest) or
    a Label Studio project (one import per batch; reruns import nothing twice)."""
    _show(_run("handoff", "HandoffParams", locals()))


@app.command()
def collect(
    run: Annotated[str | None, typer.Option(help="Rank run whose Label Studio handoff to "
                                            "collect")] = None,
    project: Annotated[str | None, typer.Option(help="Or: a Label Studio project title "
                                                "handed off to before")] = None,
    url: Annotated[str | None, typer.Option(
        help="Label Studio server (default: the one recorded at handoff)")] = None,
    workspace: Workspace = None,
) -> None:
    """Pull completed Label Studio annotations into DuckDB `annotations` (edited ones
    replace, deleted ones are marked); budgets and the next rank count them."""
    if not (run or project):
        raise typer.BadParameter("give --run or --project")
    _show(_run("collect", "CollectParams", locals()))


@app.command("curation-run")
def curation_run(
    config: Annotated[Path | None, typer.Option(
        help="YAML jobs file (the same one `python -m deployments.serve --config` deploys); "
        "its job's keys are the defaults of every option below")] = None,
    job: Annotated[str | None, typer.Option(help="Job of --config to run (needed when the "
                                            "file holds several)")] = None,
    corpus: Annotated[str | None, typer.Option(help="Pile-format corpus (file, folder or "
                                               "glob); default: the bundled sample, built "
                                               "into <workspace>/sample on first run")]
    = None,
    corpus_name: Annotated[str | None, typer.Option(help="Corpus name (required with "
                                                    "--corpus; default mini-pile)")] = None,
    pool: Annotated[str | None, typer.Option(help="Unlabeled instruction pool; default: the "
                                             "bundled sample's pool")] = None,
    pool_name: Annotated[str | None, typer.Option(help="Pool name (required with --pool; "
                                                  "default sample-pool)")] = None,
    budget: Annotated[float | None, typer.Option(help="Annotation budget in --unit "
                                                 "(default 100)")] = None,
    unit: Annotated[str | None, typer.Option(help="items (default) or tokens")] = None,
    strategy: Annotated[list[str] | None, typer.Option(
        help="Pool strategies to rank with (repeat or comma-separate; default: random, "
        "facility_location)")] = None,
    handoff_strategy: Annotated[str | None, typer.Option(
        help="Strategy whose selection is handed off (default facility_location)")] = None,
    handoff_format: Annotated[str | None, typer.Option(
        help="labelstudio (default), jsonl or csv")] = None,
    allocation: Annotated[str | None, typer.Option(
        help="Budget split across sources: proportional (default), equal, uncertainty")]
    = None,
    batch_size: Annotated[int | None, typer.Option(help="Items per annotation batch")]
    = None,
    targets: Annotated[str | None, typer.Option(help="Target prompts for sift")] = None,
    lm: Annotated[str | None, typer.Option(help="Causal LM: HF folder or .gguf file "
                                           "(default: the bundled SmolLM2-135M-Instruct)")]
    = None,
    factory: Annotated[str | None, typer.Option(help="faiss index (default auto)")] = None,
    memory_budget: Annotated[str | None, typer.Option(
        help="RAM one index partition may take (default 4GB)")] = None,
    target_recall: Annotated[float | None, typer.Option(
        help="recall@200 target of the index's search settings (default 0.95)")] = None,
    shard_docs: Annotated[int | None, typer.Option(
        help="Input lines per embedding shard (default 250 for the sample, 2000 "
        "otherwise; fixed for a corpus)")] = None,
    ray_address: RayAddress = None,
    handoff_to: Annotated[str | None, typer.Option(
        help="files (default) or label-studio (token from $LABEL_STUDIO_API_KEY)")] = None,
    label_studio_url: Annotated[str | None, typer.Option(
        help="Label Studio server (default: $LABEL_STUDIO_URL)")] = None,
    label_studio_project: Annotated[str | None, typer.Option(
        help="Label Studio project title (default: 'sift-curate <pool name>')")] = None,
    collect_first: Annotated[bool | None, typer.Option(
        "--collect-first/--no-collect-first",
        help="Collect Label Studio annotations of this pool before ranking (default: no)")]
    = None,
    workspace: Workspace = None,
) -> None:
    """The scheduled curation job once: embed new shards, index new vectors, rank the pool
    under the budget, hand off. With no options it curates the bundled sample."""
    # every option but --config / --job is a field of CurationJob (a test holds them
    # together); one given overrides the jobs file's value, one left out keeps it
    given = {**locals(), "strategies": _repeated(strategy)}
    ws = _setup(workspace)
    from flows.curation_run import curation_run_flow
    from flows.jobs import CurationJob, find_job, load_jobs, validate_job

    if job and not config:
        raise typer.BadParameter("--job needs --config")
    base = find_job(load_jobs(config), job, str(config)).job.parameters() if config else {}
    given = {k: v for k, v in given.items() if k in CurationJob.model_fields and v is not None}
    params = validate_job({**base, **given}, "options").model_dump()
    _show(curation_run_flow(**params, workspace=ws))


@app.command()
def sql(
    statement: Annotated[str, typer.Argument(help="SQL to run read-only on curation.duckdb")],
    workspace: Workspace = None,
) -> None:
    """Run a read-only SQL query on the workspace's curation.duckdb and print the rows."""
    # DuckDB only: no Prefect server, no Ray, no torch for a read-only query
    from tasks.runtime.workspace import db_path, workspace_root
    from tasks.storage import db

    with db.connect(db_path(workspace_root(workspace)), read_only=True) as con:
        cur = con.execute(statement)
        cols = [d[0] for d in cur.description]
        print(db.format_rows(cols, cur.fetchall()))


def main() -> None:
    """Console entry point: a failing run ends with one clear line (set SIFT_DEBUG=1 for
    the traceback); Prefect has already logged the details of a failed flow run."""
    import os

    try:
        app()  # usage errors are typer's (exit 2); anything else comes here
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as err:
        if os.environ.get("SIFT_DEBUG"):
            raise
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
