#!/usr/bin/env python
"""Spatial search's set distance: PatchIndex (the native hamming_set_distance) against
a NumPy version and against faiss (IndexBinaryFlat over all patches, then the
per-image minimum and the mean), same data, same run, same threads.

    python bench/bench_patches.py [--images 10000] [--patches 30] [--query-patches 30]
        [--bits 64 512] [--queries 5] [--shortlists 100 1000] [--json out.json]

Clustered random codes (patches of one image near one of 64 centres); each query is
one image's worth of patches. Reported: seconds per query (best of 3 rounds) and the
ratios; all three give the same distances (checked). Also the two-stage search (a
shortlist by whole-image codes, then the set distance among it): its time, and its
recall of the full spatial search's top 10.
"""
import argparse
import os
import platform

import numpy as np
import torch

from ssdh_port.fileio import write_json
from ssdh_port.hashing import HammingIndex, PatchIndex, two_stage_search
from timer import time_calls


def numpy_set_distance(query_bits, patch_bytes, segments, table):
    """The definition with NumPy: all distances by byte popcount table, then the
    minimum per image segment and the mean over query patches."""
    query_bytes = np.packbits(query_bits, axis=1, bitorder="little")
    distances = table[query_bytes[:, None, :] ^ patch_bytes[None, :, :]].sum(-1)  # Q x P
    mins = np.minimum.reduceat(distances, segments[:-1], axis=1)
    return mins.mean(0)


def faiss_set_distance(index, query_bits, image_of, images):
    query_bytes = np.packbits(query_bits, axis=1, bitorder="little")
    distances, labels = index.search(query_bytes, index.ntotal)
    mins = np.full((len(query_bytes), images), np.iinfo(np.int32).max, dtype=np.int64)
    for q in range(len(query_bytes)):
        np.minimum.at(mins[q], image_of[labels[q]], distances[q])
    return mins.mean(0)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10000)
    parser.add_argument("--patches", type=int, default=30)
    parser.add_argument("--query-patches", type=int, default=30)
    parser.add_argument("--bits", type=int, nargs="+", default=[64, 512])
    parser.add_argument("--queries", type=int, default=5)
    parser.add_argument("--shortlists", type=int, nargs="*", default=[100, 1000])
    parser.add_argument("--json")
    args = parser.parse_args()
    import faiss

    threads = torch.get_num_threads()
    faiss.omp_set_num_threads(threads)
    rng = np.random.default_rng(0)
    table = np.array([bin(i).count("1") for i in range(256)], dtype=np.int32)
    out = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                       "threads": threads},
           "images": args.images, "patches_per_image": args.patches, "query_patches": args.query_patches,
           "results": []}
    for bits in args.bits:
        centres = rng.integers(0, 2, (64, bits), dtype=np.uint8)
        image_centre = rng.integers(0, 64, args.images)
        image_of = np.repeat(np.arange(args.images), args.patches)
        patch_bits = centres[image_centre[image_of]] ^ (rng.random((len(image_of), bits)) < 0.1).astype(np.uint8)
        patch_bytes = np.packbits(patch_bits, axis=1, bitorder="little")
        segments = np.arange(0, len(image_of) + 1, args.patches)
        index = PatchIndex(bits)
        index.add(patch_bits, image_of)
        flat = faiss.IndexBinaryFlat(8 * patch_bytes.shape[1])
        flat.add(patch_bytes)
        whole = HammingIndex(bits)  # one code per image: its centre, noisier than its patches
        whole.add(centres[image_centre] ^ (rng.random((args.images, bits)) < 0.2).astype(np.uint8),
                  np.arange(args.images))
        ours_t = numpy_t = faiss_t = 0.0
        staged = {n: [0.0, 0.0] for n in args.shortlists}  # shortlist -> [seconds, recall@10]
        for q in range(args.queries):
            centre = int(rng.integers(0, 64))
            query = centres[centre] ^ (rng.random((args.query_patches, bits)) < 0.1).astype(np.uint8)
            query_code = (centres[centre] ^ (rng.random(bits) < 0.2).astype(np.uint8))[None]
            _, top10 = index.search(query, 10)
            for n in args.shortlists:
                t, (_, found) = time_calls(lambda: two_stage_search(whole, index, query_code, query, n, 10),
                                           rounds=3).best_result
                staged[n][0] += t / args.queries
                staged[n][1] += len(set(found.tolist()) & set(top10.tolist())) / 10 / args.queries
            t, (ours, _) = time_calls(lambda: index.set_distances(query), rounds=3).best_result
            ours_t += t
            t, reference = time_calls(lambda: numpy_set_distance(query, patch_bytes, segments, table),
                                      rounds=1).best_result
            numpy_t += t
            t, via_faiss = time_calls(lambda: faiss_set_distance(flat, query, image_of, args.images),
                                      rounds=1).best_result
            faiss_t += t
            assert np.allclose(ours.numpy(), reference) and np.allclose(ours.numpy(), via_faiss)
        row = {"bits": bits, "ours_s": ours_t / args.queries, "numpy_s": numpy_t / args.queries,
               "faiss_s": faiss_t / args.queries}
        row["vs_numpy"] = row["numpy_s"] / row["ours_s"]
        row["vs_faiss"] = row["faiss_s"] / row["ours_s"]
        row["two_stage"] = [{"shortlist": n, "seconds": t, "recall_at_10": r} for n, (t, r) in staged.items()]
        out["results"].append(row)
        for n, (t, r) in staged.items():
            print(f"{bits} bits, two-stage with a shortlist of {n}: {1e3 * t:.1f} ms/query, recall@10 {r:.2f}")
        print(f"{bits} bits: ours {1e3 * row['ours_s']:.1f} ms/query, NumPy {1e3 * row['numpy_s']:.1f} ms "
              f"({row['vs_numpy']:.1f}x), faiss flat + aggregation {1e3 * row['faiss_s']:.1f} ms "
              f"({row['vs_faiss']:.1f}x)")
    if args.json:
        write_json(args.json, out)


if __name__ == "__main__":
    main()
