#!/usr/bin/env python
"""Exact Hamming k-NN: ssdh_port.ops.hamming_topk vs faiss IndexBinaryFlat (and a
plain PyTorch xor + popcount-table version), same data, same run; and the
CIFAR-10 evaluation protocol (10,000 x 50,000, 48 bits, whole-ranking mAP + P@k):
ssdh_port.hashing.evaluate vs a plain NumPy version with a stable argsort per query.

    python bench/bench_hamming.py [--device cpu|cuda] [--database 1000000] [--queries N]
        [--k 100] [--json out.json]
    python bench/bench_hamming.py --bits 32 64 128 256 512 1024 [--codes uniform clustered]
        [--database 1000000] [--queries 1000] [--k 100] [--json out.json]

--bits: ops.hamming_topk against faiss IndexBinaryFlat at each code length, on the
same codes, the same threads (torch's, given to faiss too), best of 3, with the
distances checked equal: uniform random codes, and clustered ones (1,000 random
centres, each code its centre with every bit flipped with probability 1/8, queries
drawn the same way: the shape of a trained code space). Also the rate in 64-bit word
popcounts per core per cycle at the nominal clock (/proc/cpuinfo), against which a
core's popcount units (POPCNT: 1 per cycle on most x86 cores, up to 4 on recent
AMD; VPOPCNTQ: 8 words an instruction) say how close the kernel is to the machine.

With --device cuda (default 10,000 queries) the search and the protocol run on
the GPU, timed with CUDA events after a warm-up; the plain PyTorch baseline is
then an int8 matrix product of +-1 bits with a top-k over unique (distance,
index) keys on the same GPU, and faiss (if installed) runs on the machine's CPU.
"""
import argparse

import numpy as np
import torch

from ssdh_port import ops
from ssdh_port.fileio import write_json
from ssdh_port.device import cpu_name, describe
from ssdh_port.hashing import evaluate
from timer import time_calls


def torch_topk(queries, database, k):
    """Plain PyTorch: xor, byte popcount by table lookup, stable sort."""
    table = torch.tensor([bin(i).count("1") for i in range(256)], dtype=torch.int16)
    out = []
    for q in queries:
        dist = table[(database ^ q).long()].sum(dim=1)
        out.append(torch.sort(dist, stable=True).indices[:k])
    return torch.stack(out)


def torch_topk_matmul(queries, database, k, chunk=1000):
    """Plain PyTorch on the GPU: bits as +-1 int8, distances from one int8 matrix
    product per chunk of queries (bits - dot) / 2, then the k smallest of the
    unique keys distance * N + index (ties in database order)."""
    def signs(codes):
        bits = (codes[:, :, None] >> torch.arange(8, device=codes.device, dtype=torch.uint8)) & 1
        return (bits.reshape(len(codes), -1).to(torch.int8) * 2 - 1).contiguous()
    n, bits = database.shape[0], database.shape[1] * 8
    db_signs = signs(database).T  # k x N, column-major: the layout cuBLAS takes without a copy
    positions = torch.arange(n, device=database.device)
    out = []
    for start in range(0, len(queries), chunk):
        dot = torch._int_mm(signs(queries[start:start + chunk]), db_signs)
        keys = (bits - dot).to(torch.int64) // 2 * n + positions
        out.append(torch.topk(keys, k, dim=1, largest=False, sorted=True).values % n)
    return torch.cat(out)


def bench_cuda(args, rng, results):
    device = torch.device("cuda")
    queries = args.queries or 10_000
    db = rng.integers(0, 256, (args.database, 8), dtype=np.uint8)
    q = rng.integers(0, 256, (queries, 8), dtype=np.uint8)
    db_gpu, q_gpu = torch.from_numpy(db).to(device), torch.from_numpy(q).to(device)
    comparisons = args.database * queries
    results.update(gpu=describe(device), queries=queries)
    ours_s, (ours_d, ours_i) = time_calls(lambda: ops.hamming_topk(q_gpu, db_gpu, args.k), rounds=5, warmup=1,
                                          device=device).best_result
    results["ours_s"] = ours_s
    print(f"ssdh hamming_topk (GPU): {ours_s * 1e3:8.2f} ms  {comparisons / ours_s / 1e12:6.3f} T comparisons/s")
    cpu_s, (cpu_d, cpu_i) = time_calls(lambda: ops.hamming_topk(torch.from_numpy(q), torch.from_numpy(db), args.k),
                                       rounds=1).best_result
    same = torch.equal(cpu_i, ours_i.cpu()) and torch.equal(cpu_d, ours_d.cpu())
    results.update(ours_cpu_s=cpu_s, ratio_vs_ours_cpu=cpu_s / ours_s, same_as_cpu=same)
    print(f"ssdh hamming_topk (CPU, {torch.get_num_threads()} threads): {cpu_s * 1e3:8.1f} ms -> GPU "
          f"{cpu_s / ours_s:.0f}x faster; same result: {same}")
    plain_s, plain_i = time_calls(lambda: torch_topk_matmul(q_gpu, db_gpu, args.k), rounds=2, warmup=1,
                                  device=device).best_result
    same = torch.equal(plain_i.cpu(), cpu_i)
    results.update(torch_gpu_s=plain_s, ratio_vs_torch_gpu=plain_s / ours_s, torch_gpu_same=same)
    print(f"plain PyTorch (int8 matmul + top-k, GPU): {plain_s * 1e3:8.2f} ms -> ours "
          f"{plain_s / ours_s:.1f}x faster; same indices: {same}")
    try:
        import faiss

        index = faiss.IndexBinaryFlat(64)
        index.add(db)
        faiss_s, (fd, _) = time_calls(lambda: index.search(q, args.k), rounds=1).best_result
        results.update(faiss_cpu_s=faiss_s, ratio_vs_faiss_cpu=faiss_s / ours_s,
                       faiss_same_distances=bool(np.array_equal(fd, cpu_d.numpy())))
        print(f"faiss IndexBinaryFlat (CPU, {faiss.omp_get_max_threads()} threads): "
              f"{faiss_s * 1e3:8.1f} ms -> ours {faiss_s / ours_s:.0f}x faster")
    except ImportError:
        print("faiss not installed: skipped")

    q_codes, d_codes, labels_q, labels_db = protocol_data(rng)
    args_ = (torch.from_numpy(q_codes), torch.from_numpy(d_codes), labels_q, labels_db)
    gpu_s, gpu_result = time_calls(lambda: evaluate(*args_, topk=None, device=device), rounds=3, warmup=1,
                                   device=device).best_result
    cpu_s, cpu_result = time_calls(lambda: evaluate(*args_, topk=None), rounds=1).best_result
    same = abs(gpu_result["map"] - cpu_result["map"]) < 1e-9
    results.update(protocol_gpu_s=gpu_s, protocol_cpu_s=cpu_s, protocol_ratio=cpu_s / gpu_s,
                   protocol_same_map=same)
    print(f"CIFAR-10 protocol 10k x 50k, 48 bits, whole ranking: GPU {gpu_s * 1e3:.1f} ms, CPU "
          f"{cpu_s:.2f} s -> {cpu_s / gpu_s:.0f}x; same mAP: {same}")


def protocol_data(rng):
    """Codes and labels of the CIFAR-10 protocol's size: 10 noisy class centres."""
    labels_db = rng.integers(0, 10, 50_000)
    labels_q = rng.integers(0, 10, 10_000)
    centres = rng.integers(0, 2, (10, 48), dtype=np.uint8)
    noisy = lambda labels: centres[labels] ^ (rng.random((len(labels), 48)) < 0.2)
    d_codes = np.packbits(noisy(labels_db).astype(np.uint8), axis=1, bitorder="little")
    q_codes = np.packbits(noisy(labels_q).astype(np.uint8), axis=1, bitorder="little")
    return q_codes, d_codes, labels_q, labels_db


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


def make_codes(rng, kind, n, bits, centres=None):
    """n codes of `bits` bits packed to bytes: uniform, or clustered around `centres`
    (returned, made when None) with each bit flipped with probability 1/8."""
    nbytes = (bits + 7) // 8
    if kind == "uniform":
        return rng.integers(0, 256, (n, nbytes), dtype=np.uint8), None
    if centres is None:
        centres = rng.integers(0, 256, (1000, nbytes), dtype=np.uint8)
    noise = rng.integers(0, 256, (n, nbytes), dtype=np.uint8)
    for _ in range(2):
        noise &= rng.integers(0, 256, (n, nbytes), dtype=np.uint8)
    codes = centres[rng.integers(0, len(centres), n)] ^ noise
    if bits % 8:
        codes[:, -1] &= (1 << (bits % 8)) - 1
    return codes, centres


def nominal_ghz():
    try:
        with open("/proc/cpuinfo") as f:
            mhz = [float(line.split(":")[1]) for line in f if line.startswith("cpu MHz")]
        return max(mhz) / 1000 if mhz else None
    except OSError:
        return None


def bench_lengths(args, rng, results):
    """ours vs faiss at each code length and code kind; a table on stdout."""
    import faiss

    threads = torch.get_num_threads()
    faiss.omp_set_num_threads(threads)
    queries = args.queries or 1000
    ghz = nominal_ghz()
    rows = []
    print(f"{args.database:,} codes, {queries:,} queries, k = {args.k}, {threads} threads"
          + (f", {ghz:.2f} GHz nominal" if ghz else ""))
    print("| bits | codes | ours ms | G compares/s | word popcounts / core / cycle | faiss ms | faiss / ours |"
          " same distances |")
    print("|---|---|---|---|---|---|---|---|")
    for bits in args.bits:
        for kind in args.codes:
            db, centres = make_codes(rng, kind, args.database, bits)
            q, _ = make_codes(rng, kind, queries, bits, centres)
            tq, tdb = torch.from_numpy(q), torch.from_numpy(db)
            ours_s, (ours_d, _) = time_calls(lambda: ops.hamming_topk(tq, tdb, args.k), rounds=3).best_result
            index = faiss.IndexBinaryFlat(8 * q.shape[1])
            index.add(db)
            faiss_s, (fd, _) = time_calls(lambda: index.search(q, args.k), rounds=3).best_result
            same = bool(np.array_equal(fd, ours_d.numpy()))
            compares = args.database * queries
            words = compares * ((bits + 63) // 64)
            per_cycle = words / ours_s / threads / (ghz * 1e9) if ghz else None
            row = {"bits": bits, "codes": kind, "ours_s": ours_s, "faiss_s": faiss_s, "ratio": faiss_s / ours_s,
                   "g_compares_per_s": compares / ours_s / 1e9, "word_popcounts_per_core_cycle": per_cycle,
                   "same_distances": same}
            rows.append(row)
            print(f"| {bits} | {kind} | {ours_s * 1e3:.0f} | {row['g_compares_per_s']:.2f} | "
                  f"{'-' if per_cycle is None else f'{per_cycle:.2f}'} | {faiss_s * 1e3:.0f} | "
                  f"{row['ratio']:.2f}x | {same} |", flush=True)
    results.update(lengths=rows, queries=queries, database=args.database, k=args.k, ghz=ghz)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--database", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=None,
                        help="default 1,000 on the CPU, 10,000 on the GPU")
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--numpy-queries", type=int, default=500,
                        help="queries timed for the NumPy protocol (scaled to 10,000)")
    parser.add_argument("--bits", type=int, nargs="+", help="code lengths: ours vs faiss at each")
    parser.add_argument("--codes", nargs="+", default=["uniform", "clustered"], choices=("uniform", "clustered"))
    parser.add_argument("--json")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    results = {"threads": torch.get_num_threads(), "device": args.device, "machine": cpu_name()}
    if args.bits:
        bench_lengths(args, rng, results)
    elif args.device == "cuda":
        bench_cuda(args, rng, results)
    else:
        bench_cpu(args, rng, results)
    if args.json:
        write_json(args.json, results)


def bench_cpu(args, rng, results):
    args.queries = args.queries or 1000
    db = rng.integers(0, 256, (args.database, 8), dtype=np.uint8)
    q = rng.integers(0, 256, (args.queries, 8), dtype=np.uint8)
    comparisons = args.database * args.queries
    ours_s, (ours_d, ours_i) = time_calls(lambda: ops.hamming_topk(torch.from_numpy(q), torch.from_numpy(db), args.k),
                                          rounds=3).best_result
    results["ours_s"] = ours_s
    print(f"ssdh hamming_topk: {ours_s * 1e3:8.1f} ms  {comparisons / ours_s / 1e9:6.2f} G comparisons/s")
    try:
        import faiss

        index = faiss.IndexBinaryFlat(64)
        index.add(db)
        faiss_s, (fd, fi) = time_calls(lambda: index.search(q, args.k), rounds=3).best_result
        same = np.array_equal(fd, ours_d.numpy())
        results.update(faiss_s=faiss_s, ratio_vs_faiss=faiss_s / ours_s, same_distances=bool(same))
        print(f"faiss IndexBinaryFlat: {faiss_s * 1e3:8.1f} ms  {comparisons / faiss_s / 1e9:6.2f} G comparisons/s"
              f"  -> ours {faiss_s / ours_s:.2f}x faster; same distances: {same}")
    except ImportError:
        print("faiss not installed: skipped")
    small = 50
    torch_s, torch_i = time_calls(lambda: torch_topk(torch.from_numpy(q[:small]), torch.from_numpy(db), args.k),
                                  rounds=1).best_result
    torch_s *= args.queries / small
    results.update(torch_s=torch_s, ratio_vs_torch=torch_s / ours_s)
    print(f"plain PyTorch (xor + table, sort): {torch_s * 1e3:8.1f} ms (from {small} queries) -> ours "
          f"{torch_s / ours_s:.1f}x faster; same indices: {torch.equal(torch_i, ours_i[:small])}")

    # The CIFAR-10 protocol: 10,000 x 50,000, 48 bits, whole ranking.
    q_codes, d_codes, labels_q, labels_db = protocol_data(rng)
    eval_s, result = time_calls(lambda: evaluate(torch.from_numpy(q_codes), torch.from_numpy(d_codes),
                                                labels_q, labels_db, topk=None), rounds=1).best_result
    n = args.numpy_queries
    np_s, np_map = time_calls(lambda: numpy_protocol(q_codes[:n], d_codes, labels_q[:n], labels_db),
                              rounds=1).best_result
    np_s *= len(q_codes) / n
    ours_map = float(result["ap"][:n].mean())
    results.update(protocol_s=eval_s, numpy_protocol_s=np_s, protocol_ratio=np_s / eval_s,
                   same_map=abs(ours_map - np_map) < 1e-9)
    print(f"CIFAR-10 protocol 10k x 50k, 48 bits, whole ranking: ours {eval_s:.2f} s, NumPy "
          f"{np_s:.1f} s (from {n} queries) -> {np_s / eval_s:.0f}x; same mAP on those queries: "
          f"{abs(ours_map - np_map) < 1e-9}")


if __name__ == "__main__":
    main()
