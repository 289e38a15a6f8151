"""Facility location and k-center greedy on a 50k x 384 pool: sift_ops vs apricot-select.

Each method runs in its own subprocess so that its peak resident memory (ru_maxrss) is its
own; the parent then scores every selection with the same objectives:

* ``f_dense(S) = sum_i max(0, max_{j in S} <x_i, x_j>)``: the exact facility-location
  objective with cosine similarity (unit vectors), computed with dense matmuls in chunks;
* ``f_knn(S)``: the same on the sparse kNN graph (what sift_ops and "apricot on the same
  graph" maximise).

Methods:

* ``sift_ops``: ``sift_ops.diversity.facility_location`` as the product calls it: kNN graph
  with ``--graph`` (default "auto": the cell-blocked IVF graph above 20k items, exact
  below) + lazy greedy in numpy.
* ``sift_ops_exact``: the same greedy on the exact faiss kNN graph (brute force, O(n^2 d));
  its graph is also the reference for the IVF graph's neighbour recall and for ``f_knn``.
* ``apricot_graph``: apricot-select's FacilityLocationSelection (optimizer="lazy", numba)
  on the very same kNN graph as a precomputed sparse similarity: the greedy optimiser alone.
* ``apricot_e2e``: apricot end to end from the features with its own kNN graph
  (``n_neighbors=knn``, metric="euclidean": sklearn KNeighborsTransformer, similarity =
  max distance - distance).  Two shims (not algorithm changes) make apricot 0.6.1 run with
  today's scipy/sklearn: the kNN graph's int64 indices are cast to the int32 its numba
  kernels are compiled for, and the dense feature matrix gets a ``toarray()`` method that
  its sparse code path calls on it.
* ``kcenter``: ``sift_ops.diversity.k_center_greedy``.
* ``random``: a uniform sample (objective context only).

apricot's dense mode (n_neighbors=None) needs the full 50k x 50k matrix (20 GB in float64)
and is skipped unless --apricot-dense.

    python benchmarks/bench_diversity.py            # n=50000 d=384 budget=5000 knn=64
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = ("sift_ops", "sift_ops_exact", "apricot_graph", "apricot_e2e", "kcenter", "random")


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=50_000)
    p.add_argument("--d", type=int, default=384)
    p.add_argument("--budget", type=int, default=5000)
    p.add_argument("--knn", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--graph", default="auto", choices=("auto", "exact", "ivf"),
                   help="kNN graph of the 'sift_ops' method (sift_ops_exact is always exact)")
    p.add_argument("--embeddings", help=".npy [n, d] float32 pool instead of synthetic data")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--apricot-dense", action="store_true", help="also apricot's dense mode")
    p.add_argument("--workdir", help="keep intermediate files here (default: a temp dir)")
    # internal: run one method in this process
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    return p.parse_args()


ARGS = parse()
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[var] = str(ARGS.threads)

import numpy as np  # noqa: E402

sys.path.insert(0, ROOT)
from benchmarks.synthetic import clustered_unit_vectors  # noqa: E402


def emit(**kw) -> None:
    print(json.dumps(kw), flush=True)


def status_mb(key: str) -> float:
    """VmRSS / VmHWM (peak RSS) of this process from /proc, in MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak_rss() -> bool:
    """Reset VmHWM (Linux >= 4.0) so the peak excludes import-time transients."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


# ----------------------------------------------------------------------------- workers


def worker(method: str, data: str, out: str) -> None:
    import torch

    torch.set_num_threads(ARGS.threads)
    x = np.load(data)
    n = x.shape[0]
    if method.startswith("apricot"):
        import apricot  # noqa: F401 - import numba/sklearn before the memory baseline
        import scipy.sparse  # noqa: F401
        import sklearn.neighbors  # noqa: F401
    else:
        import faiss  # noqa: F401

        import sift_ops.diversity  # noqa: F401
    base_rss = status_mb("VmRSS")
    peak_reset = reset_peak_rss()
    res: dict = {"method": method}
    t0 = time.perf_counter()
    if method in ("sift_ops", "sift_ops_exact"):
        import faiss

        from sift_ops.diversity import facility_location, knn_graph

        faiss.omp_set_num_threads(ARGS.threads)
        graph = knn_graph(x, ARGS.knn, method="exact" if method == "sift_ops_exact" else ARGS.graph)
        t1 = time.perf_counter()
        order, gains = facility_location(x, ARGS.budget, knn=ARGS.knn, graph=graph)
        t2 = time.perf_counter()
        res.update(graph_s=t1 - t0, greedy_s=t2 - t1, total_s=t2 - t0)
        sel = order.numpy()
        np.save(out + ".nbr.npy", graph[0])
        np.save(out + ".sim.npy", graph[1])
        res["gains_nonincreasing"] = bool(np.all(np.diff(gains.numpy()) <= 1e-9))
    elif method == "apricot_graph":
        import scipy.sparse as sp
        from apricot import FacilityLocationSelection

        # the same kNN graph sift_ops builds (saved by its worker); loading is not timed
        nbr = np.load(out.replace("apricot_graph", "sift_ops") + ".nbr.npy")
        sim = np.load(out.replace("apricot_graph", "sift_ops") + ".sim.npy")
        k = nbr.shape[1]
        t0 = time.perf_counter()
        # A[i, j] = max(0, sim(i, j)) for j in kNN(i).  apricot's gain of candidate j sums
        # over ROW j, so it gets A^T: row j = the items j can represent, i.e. the same f.
        a = sp.csr_matrix(
            (
                np.maximum(sim, 0).ravel().astype(np.float64),
                nbr.ravel(),
                np.arange(0, n * k + 1, k),
            ),
            shape=(n, n),
        )
        pre = a.T.tocsr()
        pre.indices = pre.indices.astype(np.int32)  # apricot's numba signature
        pre.indptr = pre.indptr.astype(np.int32)
        del a, nbr, sim
        # apricot jit-compiles its numba kernels inside every fit (cache=False); a fit on
        # a 3-node graph measures that fixed cost so it can be reported separately.
        tc = time.perf_counter()
        FacilityLocationSelection(1, metric="precomputed", optimizer="lazy").fit(
            sp.csr_matrix(
                (np.ones(3), np.arange(3, dtype=np.int32), np.arange(4, dtype=np.int32)),
                shape=(3, 3),
            )
        )
        compile_s = time.perf_counter() - tc
        t1 = time.perf_counter()
        fl = FacilityLocationSelection(ARGS.budget, metric="precomputed", optimizer="lazy")
        fl.fit(pre)
        t2 = time.perf_counter()
        res.update(
            convert_s=t1 - tc - compile_s,
            greedy_s=t2 - t1,
            jit_compile_s_estimate=compile_s,
            total_s=t2 - t1 + (tc - t0),
        )
        sel = np.asarray(fl.ranking, dtype=np.int64)
        g = np.asarray(fl.gains)
        res["gains_nonincreasing"] = bool(np.all(np.diff(g) <= 1e-9))
    elif method in ("apricot_e2e", "apricot_dense"):
        from apricot import FacilityLocationSelection
        from sklearn.neighbors import KNeighborsTransformer

        class KNN32(KNeighborsTransformer):
            """sklearn now returns int64 CSR indices; apricot's numba kernels take int32."""

            def fit_transform(self, X, y=None):  # noqa: N803 - sklearn signature
                g = super().fit_transform(X)
                g.indices = g.indices.astype(np.int32)
                g.indptr = g.indptr.astype(np.int32)
                return g

        class Dense(np.ndarray):
            """apricot's sparse path calls X[i:i+1].toarray() on the feature matrix."""

            def toarray(self) -> np.ndarray:
                return np.asarray(self)

        if method == "apricot_dense":
            fl = FacilityLocationSelection(ARGS.budget, metric="euclidean", optimizer="lazy")
            fl.fit(x)
        else:
            fl = FacilityLocationSelection(
                ARGS.budget,
                metric="euclidean",
                n_neighbors=KNN32(n_neighbors=ARGS.knn, n_jobs=1),
                optimizer="lazy",
            )
            fl.fit(x.view(Dense))
        t2 = time.perf_counter()
        res.update(total_s=t2 - t0)
        sel = np.asarray(fl.ranking, dtype=np.int64)
    elif method == "kcenter":
        from sift_ops.diversity import k_center_greedy

        order, radii = k_center_greedy(x, ARGS.budget, return_radii=True)
        t2 = time.perf_counter()
        res.update(total_s=t2 - t0, final_radius=float(radii[-1]), first_radius=float(radii[0]))
        res["radius_nonincreasing"] = bool(torch.all(radii[1:] <= radii[:-1] + 1e-6))
        sel = order.numpy()
    elif method == "random":
        sel = np.random.default_rng(ARGS.seed).choice(n, ARGS.budget, replace=False)
        res.update(total_s=time.perf_counter() - t0)
    else:
        raise SystemExit(f"unknown method {method}")
    np.save(out + ".sel.npy", np.asarray(sel, dtype=np.int64))
    res["selected"] = int(len(sel))
    res["distinct"] = int(len(np.unique(sel)))
    # baseline = interpreter + libraries + the pool itself (n * d * 4 bytes)
    res["baseline_rss_mb"] = round(base_rss, 1)
    peak = (
        status_mb("VmHWM")
        if peak_reset
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    res["peak_rss_mb"] = round(peak, 1)
    res["peak_over_baseline_mb"] = round(peak - base_rss, 1)
    res["process_max_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    with open(out + ".json", "w") as f:
        json.dump(res, f)


# ----------------------------------------------------------------------------- parent


def f_dense(x: np.ndarray, sel: np.ndarray) -> float:
    import torch

    xt = torch.from_numpy(x)
    s = xt[torch.from_numpy(sel)]
    best = torch.zeros(x.shape[0])
    for a in range(0, x.shape[0], 8192):
        best[a : a + 8192] = (xt[a : a + 8192] @ s.T).amax(dim=1).clamp_min(0)
    return float(best.double().sum())


def main() -> None:
    a = ARGS
    if a.worker:
        worker(a.worker, a.data, os.path.join(a.workdir, a.worker))
        return
    import torch

    from sift_ops.diversity import facility_location_objective

    torch.set_num_threads(a.threads)
    tmp_ctx = tempfile.TemporaryDirectory() if not a.workdir else None
    workdir = a.workdir or tmp_ctx.name
    os.makedirs(workdir, exist_ok=True)
    rng = np.random.default_rng(a.seed)
    if a.embeddings:
        x = np.ascontiguousarray(np.load(a.embeddings), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        data_desc = f"embeddings:{a.embeddings} (L2-normalised)"
    else:
        x = clustered_unit_vectors(a.n, a.d, rng)
        data_desc = "synthetic clustered unit vectors (100x10 Zipf subtopics, 15% near-dups)"
    data = os.path.join(workdir, "pool.npy")
    np.save(data, x)
    emit(
        bench="diversity",
        kind="setup",
        data=data_desc,
        n=int(x.shape[0]),
        d=int(x.shape[1]),
        budget=a.budget,
        knn=a.knn,
        threads=a.threads,
        numpy=np.__version__,
        torch=torch.__version__,
    )
    methods = [m for m in a.methods.split(",") if m]
    if a.apricot_dense:
        methods.append("apricot_dense")
    if "apricot_graph" in methods and "sift_ops" in methods:
        # apricot_graph reuses the graph that the sift_ops worker saves
        methods.remove("apricot_graph")
        methods.insert(methods.index("sift_ops") + 1, "apricot_graph")
    results: dict = {}
    for m in methods:
        cmd = [
            sys.executable,
            os.path.abspath(__file__),
            "--worker",
            m,
            "--data",
            data,
            "--workdir",
            workdir,
            "--budget",
            str(a.budget),
            "--knn",
            str(a.knn),
            "--threads",
            str(a.threads),
            "--seed",
            str(a.seed),
            "--graph",
            a.graph,
        ]
        t = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t
        if proc.returncode != 0:
            emit(bench="diversity", method=m, error=proc.stderr.strip().splitlines()[-5:])
            continue
        with open(os.path.join(workdir, m + ".json")) as f:
            r = json.load(f)
        r["process_wall_s"] = wall
        r["sel"] = np.load(os.path.join(workdir, m + ".sel.npy"))
        results[m] = r

    # f_knn on the exact graph where it was built (else on sift_ops's own graph)
    graph = recall = None
    for name in ("sift_ops_exact", "sift_ops"):
        gpath = os.path.join(workdir, name)
        if os.path.exists(gpath + ".nbr.npy"):
            graph = (np.load(gpath + ".nbr.npy"), np.load(gpath + ".sim.npy"))
            break
    own = os.path.join(workdir, "sift_ops.nbr.npy")
    if graph is not None and name == "sift_ops_exact" and os.path.exists(own):
        approx = np.load(own)
        # fraction of the exact top-k found, per item, averaged (row-wise set overlap)
        hits = [np.intersect1d(approx[i], graph[0][i]).size for i in range(len(approx))]
        recall = float(np.sum(hits) / graph[0].size)
    for r in results.values():
        sel = r.pop("sel")
        r["f_dense"] = f_dense(x, sel)
        if graph is not None:
            r["f_knn"] = facility_location_objective(graph, sel)
        emit(
            bench="diversity",
            **{k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()},
        )

    s: dict = {"bench": "diversity", "kind": "summary"}
    ours = results.get("sift_ops")
    if ours:
        for peer in ("apricot_graph", "apricot_e2e", "apricot_dense"):
            p = results.get(peer)
            if not p:
                continue
            s[f"f_dense_ratio_vs_{peer}"] = round(ours["f_dense"] / p["f_dense"], 5)
            if "f_knn" in ours:
                s[f"f_knn_ratio_vs_{peer}"] = round(ours["f_knn"] / p["f_knn"], 5)
            if peer == "apricot_graph":
                # same graph: optimiser against optimiser (apricot's time includes its jit)
                s["greedy_speedup_vs_apricot_graph"] = round(p["greedy_s"] / ours["greedy_s"], 1)
                s["greedy_speedup_vs_apricot_graph_excl_jit"] = round(
                    (p["greedy_s"] - p["jit_compile_s_estimate"]) / ours["greedy_s"], 1
                )
            else:
                # end to end: features in, selection out (each builds its own kNN graph)
                s[f"total_speedup_vs_{peer}"] = round(p["total_s"] / ours["total_s"], 1)
            s[f"peak_rss_mb_{peer}"] = p["peak_rss_mb"]
        s["peak_rss_mb_sift_ops"] = ours["peak_rss_mb"]
        s["graph_sift_ops"] = a.graph
        s["graph_s_sift_ops"] = round(ours["graph_s"], 2)
        s["greedy_s_sift_ops"] = round(ours["greedy_s"], 2)
        if recall is not None:
            s["graph_recall_vs_exact"] = round(recall, 4)
        ex = results.get("sift_ops_exact")
        if ex:
            s["f_dense_ratio_vs_sift_ops_exact"] = round(ours["f_dense"] / ex["f_dense"], 5)
            s["total_s_sift_ops_exact"] = round(ex["total_s"], 2)
            ape = results.get("apricot_e2e")
            if ape:
                s["total_speedup_exact_graph_vs_apricot_e2e"] = round(
                    ape["total_s"] / ex["total_s"], 1)
        s["total_s_sift_ops"] = round(ours["total_s"], 2)
        rnd = results.get("random")
        if rnd:
            s["f_dense_ratio_vs_random"] = round(ours["f_dense"] / rnd["f_dense"], 4)
    kc = results.get("kcenter")
    if kc:
        s["kcenter_s"] = round(kc["total_s"], 2)
        s["kcenter_peak_rss_mb"] = kc["peak_rss_mb"]
        s["kcenter_final_radius"] = round(kc["final_radius"], 4)
    emit(**s)
    if tmp_ctx is not None:
        tmp_ctx.cleanup()


if __name__ == "__main__":
    main()
