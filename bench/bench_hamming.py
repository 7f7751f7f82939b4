#!/usr/bin/env python
"""Exact Hamming k-NN: ssdh_port.ops.hamming_topk vs faiss IndexBinaryFlat (and a
plain PyTorch xor + popcount-table version), same data, same run; and the
CIFAR-10 evaluation protocol (10,000 x 50,000, 48 bits, whole-ranking mAP + P@k):
ssdh_port.hashing.evaluate vs a plain NumPy version with a stable argsort per query.

    python bench/bench_hamming.py [--database 1000000] [--queries 1000] [--k 100] [--json out.json]
"""
import argparse
import json
import time

import numpy as np
import torch

from ssdh_port import ops
from ssdh_port.hashing import evaluate


def best_time(fn, repeats=3):
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def torch_topk(queries, database, k):
    """Plain PyTorch: xor, byte popcount by table lookup, stable sort."""
    table = torch.tensor([bin(i).count("1") for i in range(256)], dtype=torch.int16)
    out = []
    for q in queries:
        dist = table[(database ^ q).long()].sum(dim=1)
        out.append(torch.sort(dist, stable=True).indices[:k])
    return torch.stack(out)


def numpy_protocol(q_codes, d_codes, q_labels, d_labels):
    """mAP over the whole ranking and P@k, a stable argsort per query."""
    q_bits = np.unpackbits(q_codes, axis=1)
    d_bits = np.unpackbits(d_codes, axis=1).astype(np.int16)
    aps, hits_at = [], np.zeros(len(d_codes))
    for i in range(len(q_codes)):
        dist = (d_bits != q_bits[i]).sum(axis=1)
        hits = d_labels[np.argsort(dist, kind="stable")] == q_labels[i]
        cum = np.cumsum(hits)
        hits_at += cum
        aps.append((cum[hits] / (np.flatnonzero(hits) + 1)).mean() if hits.any() else 0.0)
    return float(np.mean(aps))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--numpy-queries", type=int, default=500,
                        help="queries timed for the NumPy protocol (scaled to 10,000)")
    parser.add_argument("--json")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    db = rng.integers(0, 256, (args.database, 8), dtype=np.uint8)
    q = rng.integers(0, 256, (args.queries, 8), dtype=np.uint8)
    comparisons = args.database * args.queries
    results = {"threads": torch.get_num_threads()}
    ours_s, (ours_d, ours_i) = best_time(lambda: ops.hamming_topk(torch.from_numpy(q), torch.from_numpy(db), args.k))
    results["ours_s"] = ours_s
    print(f"ssdh hamming_topk: {ours_s * 1e3:8.1f} ms  {comparisons / ours_s / 1e9:6.2f} G comparisons/s")
    try:
        import faiss

        index = faiss.IndexBinaryFlat(64)
        index.add(db)
        faiss_s, (fd, fi) = best_time(lambda: index.search(q, args.k))
        same = np.array_equal(fd, ours_d.numpy())
        results.update(faiss_s=faiss_s, ratio_vs_faiss=faiss_s / ours_s, same_distances=bool(same))
        print(f"faiss IndexBinaryFlat: {faiss_s * 1e3:8.1f} ms  {comparisons / faiss_s / 1e9:6.2f} G comparisons/s"
              f"  -> ours {faiss_s / ours_s:.2f}x faster; same distances: {same}")
    except ImportError:
        print("faiss not installed: skipped")
    small = 50
    torch_s, torch_i = best_time(lambda: torch_topk(torch.from_numpy(q[:small]), torch.from_numpy(db), args.k), 1)
    torch_s *= args.queries / small
    results.update(torch_s=torch_s, ratio_vs_torch=torch_s / ours_s)
    print(f"plain PyTorch (xor + table, sort): {torch_s * 1e3:8.1f} ms (from {small} queries) -> ours "
          f"{torch_s / ours_s:.1f}x faster; same indices: {torch.equal(torch_i, ours_i[:small])}")

    # The CIFAR-10 protocol: 10,000 x 50,000, 48 bits, whole ranking.
    labels_db = rng.integers(0, 10, 50_000)
    labels_q = rng.integers(0, 10, 10_000)
    centres = rng.integers(0, 2, (10, 48), dtype=np.uint8)
    noisy = lambda labels: centres[labels] ^ (rng.random((len(labels), 48)) < 0.2)
    d_codes = np.packbits(noisy(labels_db).astype(np.uint8), axis=1, bitorder="little")
    q_codes = np.packbits(noisy(labels_q).astype(np.uint8), axis=1, bitorder="little")
    eval_s, result = best_time(lambda: evaluate(torch.from_numpy(q_codes), torch.from_numpy(d_codes),
                                                labels_q, labels_db, topk=None), 1)
    n = args.numpy_queries
    np_s, np_map = best_time(lambda: numpy_protocol(q_codes[:n], d_codes, labels_q[:n], labels_db), 1)
    np_s *= len(q_codes) / n
    ours_map = float(result["ap"][:n].mean())
    results.update(protocol_s=eval_s, numpy_protocol_s=np_s, protocol_ratio=np_s / eval_s,
                   same_map=abs(ours_map - np_map) < 1e-9)
    print(f"CIFAR-10 protocol 10k x 50k, 48 bits, whole ranking: ours {eval_s:.2f} s, NumPy "
          f"{np_s:.1f} s (from {n} queries) -> {np_s / eval_s:.0f}x; same mAP on those queries: "
          f"{abs(ours_map - np_map) < 1e-9}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
