"""GPU checks of issue 16, each against the CPU figure measured in the same run; JSON lines.

Run through ``benchmarks/gpu_check.sh`` (which prepares faiss and the environment). Parts:

* ``embed``: ``TextEncoder.encode_ids`` chunks/s on the sample corpus's real windows in
  float32, bfloat16 and float16 on CUDA (token budget from the free memory), with the min
  cosine of each reduced-precision embedding to the float32 one (target >= 0.999), and
  float32 on CPU on a subset.
* ``lm``: ``greedy_scores`` items/s with the bundled SmolLM2 in bf16 on CUDA (memory-based
  token budget) vs float32 on CPU (subset), and the scores' max |delta| on the common items.
* ``sift``: ``sift_select`` ms/prompt at blocks of 2048-16384 prompts (K=200, N=50, d=384) on
  CUDA vs CPU (block 128), with the share of identical picks and the ratio to the Gram
  matmul of the same blocks (its FLOP floor) on the device.
* ``faiss``: IndexFlatIP and IVF,PQ build + search on GPU vs CPU (faiss-gpu when present).

    python benchmarks/gpu_check.py [--parts embed,lm,sift,faiss] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def emit(**row) -> None:
    print(json.dumps(row, default=float), flush=True)


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, repeats: int = 1) -> tuple[float, object]:
    """Best of ``repeats`` wall seconds (CUDA synchronised) and the last result."""
    best, out = float("inf"), None
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        out = fn()
        sync()
        best = min(best, time.perf_counter() - t0)
    return best, out


def sample_dir(args) -> Path:
    from tasks.sample.bundled import build_sample

    out = Path(args.work) / "sample"
    if not (out / "sample.json").is_file():
        build_sample(out, n_docs=args.n_docs, n_queries=4, pool_size=args.items)
    return out


def part_embed(args) -> None:
    import numpy as np
    import torch

    from sift_ops.embedding import TextEncoder
    from tasks.corpus.embed import discover_inputs, read_file_shards

    pile = sample_dir(args) / "pile"
    seqs = []
    for i, f in enumerate(discover_inputs(pile)):
        for row in read_file_shards(i, str(f), 2000, 32_000_000, {}):
            inner = row.column("chunk_ids")[0].values
            off = np.asarray(inner.offsets) - inner.offsets[0].as_py()
            flat = np.asarray(inner.flatten())
            seqs.extend(flat[a:b] for a, b in zip(off[:-1], off[1:], strict=True))
    n_tok = int(sum(len(s) for s in seqs))
    cpu_n = min(len(seqs), args.cpu_chunks)
    cpu = TextEncoder(device="cpu", dtype="float32", threads=os.cpu_count())
    secs, ref_cpu = timed(lambda: cpu.encode_ids(seqs[:cpu_n]))
    cpu_rate = cpu_n / secs
    emit(check="embed", device="cpu", dtype="float32", chunks=cpu_n, seconds=secs,
         chunks_per_s=cpu_rate, threads=torch.get_num_threads(),
         chunks_per_s_per_core=cpu_rate / torch.get_num_threads())
    ref = None
    for dtype in ("float32", "bfloat16", "float16"):
        enc = TextEncoder(device=args.device, dtype=dtype)
        enc.encode_ids(seqs[:256])  # warm-up: kernels, allocator
        secs, got = timed(lambda enc=enc: enc.encode_ids(seqs), repeats=2)
        row = {"check": "embed", "device": args.device, "dtype": enc.precision["dtype"],
               "requested": dtype, "chunks": len(seqs), "tokens": n_tok, "seconds": secs,
               "chunks_per_s": len(seqs) / secs, "tokens_per_s": n_tok / secs,
               "token_budget": enc.token_budget, "vs_cpu_fp32": (len(seqs) / secs) / cpu_rate,
               "probe_min_cosine": enc.precision["min_cosine"],
               "fallback": enc.precision["fallback"],
               "attn": enc.model.config._attn_implementation}
        if ref is None:
            ref = got
            row["cpu_vs_cuda_fp32_min_cosine"] = float((got[:cpu_n] * ref_cpu).sum(1).min())
        else:
            cos = (got * ref).sum(1)
            row.update(min_cosine_vs_fp32=float(cos.min()), mean_cosine_vs_fp32=float(cos.mean()),
                       passes_0999=bool(cos.min() >= 0.999))
        emit(**row)
        del enc
        empty_cache()


def part_lm(args) -> None:
    import numpy as np
    import pyarrow.parquet as pq

    from sift_ops.causal_lm import load_causal_lm
    from sift_ops.generation import SCORE_KEYS, greedy_scores, prompt_text
    from tasks.pool.items import ingest_pool_files, pool_dir
    from tasks.runtime.models import resolve_lm_path

    sample = sample_dir(args)
    parquet = ingest_pool_files(sample / "pool.jsonl",
                                pool_dir(Path(args.work) / "ws", "gpu")).items_path
    items = pq.read_table(parquet, columns=["instruction", "input"])
    texts = [prompt_text(a, b) for a, b in zip(items.column("instruction").to_pylist(),
                                               items.column("input").to_pylist(), strict=True)]
    lm_path = resolve_lm_path(None, Path(args.work) / "models")
    cpu_n = min(len(texts), args.cpu_items)
    cpu_model, tok = load_causal_lm(lm_path, device="cpu", dtype="float32")
    secs, cpu_scores = timed(lambda m=cpu_model: greedy_scores(
        m, tok, texts[:cpu_n], max_new_tokens=args.max_new_tokens))
    cpu_rate = cpu_n / secs
    emit(check="lm", device="cpu", dtype="float32", items=cpu_n, seconds=secs,
         items_per_s=cpu_rate, batch_size=16)
    del cpu_model
    for dtype in ("float32", None):
        model, tok = load_causal_lm(lm_path, device=args.device, dtype=dtype)
        greedy_scores(model, tok, texts[:32], max_new_tokens=4, batch_size=None)  # warm-up
        secs, s = timed(lambda model=model, tok=tok: greedy_scores(
            model, tok, texts, max_new_tokens=args.max_new_tokens, batch_size=None))
        same = s["gen_tokens"][:cpu_n] == cpu_scores["gen_tokens"]
        emit(check="lm", device=args.device,
             dtype=str(next(model.parameters()).dtype).removeprefix("torch."),
             items=len(texts), seconds=secs, items_per_s=len(texts) / secs,
             vs_cpu_fp32=(len(texts) / secs) / cpu_rate,
             attn=model.config._attn_implementation,
             same_gen_tokens_vs_cpu=float(same.mean()),
             **{f"max_abs_delta_{k}_vs_cpu": float(np.nanmax(np.abs(
                 s[k][:cpu_n][same] - cpu_scores[k][same]))) if same.any() else None
                for k in SCORE_KEYS[:5]})
        del model
    empty_cache()


def empty_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def part_sift(args) -> None:
    import torch

    from sift_ops.sift import sift_select

    K, N, d, lam = 200, 50, 384, 0.01
    g = torch.Generator().manual_seed(0)
    B = args.sift_prompts
    q = torch.nn.functional.normalize(torch.randn(B, d, generator=g), dim=-1)
    c = torch.nn.functional.normalize(q[:, None, :] + 0.7 * torch.randn(B, K, d, generator=g),
                                      dim=-1)
    cpu_b = min(B, args.cpu_prompts)
    torch.set_num_threads(os.cpu_count())
    sift_select(q[:8], c[:8], N, lam)  # warm-up: loads (or compiles) the CPU's kernel
    secs, ref = timed(lambda: sift_select(q[:cpu_b], c[:cpu_b], N, lam, block_size=128))
    cpu_ms = 1e3 * secs / cpu_b
    emit(check="sift", device="cpu", prompts=cpu_b, block=128, ms_per_prompt=cpu_ms,
         threads=torch.get_num_threads())
    qg, cg = q.to(args.device), c.to(args.device)
    for block in args.sift_blocks:
        if block > B:
            break
        sift_select(qg[:block], cg[:block], N, lam, block_size=block)  # warm-up
        secs, got = timed(lambda block=block: sift_select(qg, cg, N, lam, block_size=block),
                          repeats=3)
        same = (got.indices[:cpu_b].cpu() == ref.indices).all(dim=1).float().mean()

        def gram(block=block) -> None:  # the Gram floor: the same blocks' batched matmul only
            for s in range(0, B, block):
                cb = cg[s : s + block]
                torch.bmm(cb, cb.transpose(1, 2))

        gram_secs, _ = timed(gram, repeats=3)
        emit(check="sift", device=args.device, prompts=B, block=block,
             ms_per_prompt=1e3 * secs / B, vs_cpu=cpu_ms / (1e3 * secs / B),
             gram_bmm_ms_per_prompt=1e3 * gram_secs / B, ratio_to_gram=secs / gram_secs,
             identical_picks_vs_cpu=float(same),
             peak_mem_gb=torch.cuda.max_memory_allocated() / 2**30
             if torch.cuda.is_available() else None)


def part_faiss(args) -> None:
    import faiss
    import numpy as np

    ngpu = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    rng = np.random.default_rng(0)
    n, d, nq, k = args.faiss_n, 384, 2000, 200
    centres = rng.standard_normal((1024, d)).astype(np.float32)
    x = centres[rng.integers(0, 1024, n)] + 0.5 * rng.standard_normal((n, d), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    qv = x[rng.integers(0, n, nq)] + 0.1 * rng.standard_normal((nq, d), dtype=np.float32)
    qv /= np.linalg.norm(qv, axis=1, keepdims=True)
    nlist = 4096 if n >= 1_000_000 else (1024 if n >= 100_000 else 64)
    # "np": no polysemous training (inner-product search never uses it; it is slow)
    for factory in ("Flat", f"IVF{nlist},PQ48x8np"):
        results = {}
        for where in ("cpu", "gpu"):
            if where == "gpu" and ngpu == 0:
                emit(check="faiss", factory=factory, device="gpu", skipped=True,
                     reason="this faiss build has no GPU support (faiss-gpu not installed)")
                continue
            index = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
            if where == "gpu":
                res = faiss.StandardGpuResources()
                co = faiss.GpuClonerOptions()
                co.useFloat16 = True  # PQ48 lookup tables need fp16 to fit shared memory
                index = faiss.index_cpu_to_gpu(res, 0, index, co)
            t0 = time.perf_counter()
            if not index.is_trained:
                index.train(x[rng.permutation(n)[: min(64 * nlist, 131_072)]])
            train_s = time.perf_counter() - t0
            index.add(x)
            build_s = time.perf_counter() - t0
            if factory != "Flat":
                (faiss.extract_index_ivf(index) if where == "cpu" else index).nprobe = 16
            t0 = time.perf_counter()
            _, ids = index.search(qv, k)
            search_s = time.perf_counter() - t0
            results[where] = ids
            row = {"check": "faiss", "factory": factory, "device": where, "n": n, "queries": nq,
                   "k": k, "train_s": train_s, "build_s": build_s, "search_s": search_s,
                   "queries_per_s": nq / search_s}
            if where == "gpu" and "cpu" in results:
                a, b = results["cpu"], ids
                row["overlap_at_k_vs_cpu"] = float(np.mean(
                    [len(set(a[i]) & set(b[i])) / k for i in range(nq)]))
            emit(**row)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default="embed,lm,sift,faiss")
    ap.add_argument("--work", default=None, help="scratch folder (default: a temp dir)")
    ap.add_argument("--quick", action="store_true", help="small sizes (a few minutes)")
    ap.add_argument("--device", default="cuda",
                    help="cuda; 'cpu' only to smoke-test this script on a machine without GPU")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args.work = args.work or tempfile.mkdtemp(prefix="gpu-check-")
    q = args.quick
    args.n_docs, args.items = (600, 256) if q else (3000, 1024)
    args.cpu_chunks, args.cpu_items = (128, 16) if q else (512, 48)
    args.max_new_tokens = 32
    args.sift_prompts, args.cpu_prompts = (4096, 256) if q else (16384, 512)
    args.sift_blocks = (2048, 4096, 8192, 16384)
    args.faiss_n = 200_000 if q else 1_000_000
    if args.device == "cpu":  # smoke test of the code paths, tiny sizes
        args.n_docs, args.items, args.cpu_chunks, args.cpu_items = 12, 12, 8, 4
        args.max_new_tokens, args.sift_prompts, args.cpu_prompts = 4, 64, 16
        args.sift_blocks, args.faiss_n = (32, 64), 20_000
    import torch

    emit(check="env", torch=torch.__version__, cuda=torch.version.cuda,
         gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
         bf16=bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported()),
         cpus=os.cpu_count(), load=os.getloadavg(), quick=q)
    if args.device != "cpu" and not torch.cuda.is_available():
        emit(check="env", error="torch sees no CUDA device; nothing to measure")
        sys.exit(2)
    failed = 0
    for part in args.parts.split(","):
        fn = {"embed": part_embed, "lm": part_lm, "sift": part_sift, "faiss": part_faiss}[part]
        try:
            fn(args)
        except Exception as err:  # one broken part must not hide the others' figures
            failed += 1
            emit(check=part, error=f"{type(err).__name__}: {err}",
                 traceback=traceback.format_exc()[-2000:])
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
