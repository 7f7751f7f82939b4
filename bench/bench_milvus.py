#!/usr/bin/env python
"""Milvus Lite against HammingIndex and faiss on the same codes, in the same run:
insert rate, index build time, queries/s (a batch of queries) and single-query
latency, and whether the three return the same results.

    python bench/bench_milvus.py [--n 1000000] [--bits 64] [--queries 1000] [--k 100]
        [--single 50] [--out results/milvus]

Codes: clustered random codes (64 centres, 5 % of the bits flipped), so that many
distances tie, as trained codes do. "Same results" compares (distance, id) lists
exactly: HammingIndex and MilvusIndex order ties by insertion; faiss orders them as
its heap leaves them, so for faiss the distances are compared. Writes
<out>/bench_milvus.json and bench_milvus.md.
"""
import argparse
import os
import tempfile

import faiss
import numpy as np
import torch

from ssdh_port import ops
from ssdh_port.fileio import atomic_write, write_json
from ssdh_port.hashing import HammingIndex
from ssdh_port.hashing.milvus import MilvusIndex
from timer import per_call, time_calls

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def clustered_codes(n, bits, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.integers(0, 2, (64, bits), dtype=np.uint8)
    codes = centres[rng.integers(0, 64, n)] ^ (rng.random((n, bits)) < 0.05).astype(np.uint8)
    return ops.pack_bits(torch.from_numpy(codes)).numpy()


def measure(name, add, search, queries, k, single):
    build = time_calls(add).best
    batch, (distances, ids) = time_calls(lambda: search(queries, k)).best_result
    _, latencies = per_call(lambda q: search(queries[q:q + 1], k), single)
    row = {"engine": name, "build_s": round(build, 2), "queries_per_s": round(len(queries) / batch, 1),
           "single_query_ms_p50": round(1000 * float(np.median(latencies)), 2)}
    print(row, flush=True)
    return row, np.asarray(distances), np.asarray(ids)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--bits", type=int, default=64)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--single", type=int, default=50, help="single queries timed one by one")
    parser.add_argument("--out", default=os.path.join(ROOT, "results", "milvus"))
    args = parser.parse_args()
    db = clustered_codes(args.n, args.bits)
    queries = clustered_codes(args.queries, args.bits, seed=1)
    rows = []

    hamming = HammingIndex(args.bits)
    row, hd, hi = measure("HammingIndex", lambda: hamming.add(db), hamming.search, queries, args.k, args.single)
    rows.append(row)

    flat = faiss.IndexBinaryFlat(args.bits)
    row, fd, fi = measure("faiss IndexBinaryFlat", lambda: flat.add(db), flat.search, queries, args.k, args.single)
    rows.append(row)

    with tempfile.TemporaryDirectory() as folder:
        milvus = MilvusIndex(args.bits, os.path.join(folder, "bench.db"), "bench")
        row, md, mi = measure("Milvus Lite (BIN_FLAT, exact ties)", lambda: milvus.add(db, progress=True),
                              milvus.search, queries, args.k, args.single)
        row["insert_codes_per_s"] = round(args.n / row["build_s"], 1)
        rows.append(row)
        raw = lambda q, k: milvus._search(milvus._queries(q), k)  # noqa: E731  Milvus' own answer, ties as it returns them
        seconds = time_calls(lambda: raw(queries, args.k)).best
        rows.append({"engine": "Milvus Lite (BIN_FLAT, its own tie order)", "build_s": None,
                     "queries_per_s": round(len(queries) / seconds, 1), "single_query_ms_p50": None})
    same = {"milvus_equals_hamming": bool(np.array_equal(hd, md) and np.array_equal(hi, mi)),
            "faiss_distances_equal_hamming": bool(np.array_equal(hd, fd)),
            "faiss_ids_equal_hamming": bool(np.array_equal(hi, fi))}
    record = {"n": args.n, "bits": args.bits, "queries": args.queries, "k": args.k, "cpus": os.cpu_count(),
              "rows": rows, "same_results": same}
    os.makedirs(args.out, exist_ok=True)
    write_json(os.path.join(args.out, "bench_milvus.json"), record)
    base = rows[0]["queries_per_s"]
    lines = [f"{args.n} {args.bits}-bit codes, {args.queries} queries, k = {args.k}, {os.cpu_count()} CPUs",
             "", "| engine | build / insert s | queries/s | vs HammingIndex | single query ms (p50) |",
             "|---|---:|---:|---:|---:|"]
    for row in rows:
        lines.append(f"| {row['engine']} | {row['build_s']} | {row['queries_per_s']} | "
                     f"{row['queries_per_s'] / base:.3f}x | {row['single_query_ms_p50']} |")
    lines += ["", f"same results: {same}"]
    with atomic_write(os.path.join(args.out, "bench_milvus.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
