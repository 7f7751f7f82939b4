#!/usr/bin/env python
"""The live index (ssdh_port.hashing.live) under writes, and Milvus Lite beside it.

    python bench/bench_live_index.py [--items 60000] [--bits 48] [--compact-items 1000000]
        [--milvus] [--json out.json]

Measured in one run, on a copy of an index of --items random codes:
  - adds per second: one item per call, and batches of 100 (each call appends a
    record and fsyncs it before returning: what an acknowledged POST /items costs);
  - removals per second (one id per call);
  - search queries per second (one code per query, k = 10) on the read-only index,
    then the same while 4 threads add single items as fast as they can;
  - compaction of a --compact-items index after 1 % removals and 1 % additions;
  - with --milvus, Milvus Lite's single and 100-item inserts and single deletes on the
    same codes (MilvusIndex.add / remove, which flush).
"""
import argparse
import os
import platform
import statistics
import tempfile
import threading

import numpy as np

from ssdh_port.fileio import write_json
from ssdh_port.hashing import HammingIndex, LiveIndex
from timer import calls_within, per_call, stopwatch


def rate(calls, seconds):
    return calls / seconds if seconds else float("inf")


def timed(fn, count):
    """(calls per second, per-call latencies in ms) of count calls fn(i)."""
    seconds, each = per_call(fn, count)
    return rate(count, seconds), [1e3 * s for s in each]


def fresh_index(path, items, bits, rng):
    index = HammingIndex(bits)
    index.add(rng.integers(0, 2, (items, bits)), np.arange(items))
    index.save(path)


def searches_per_second(live, queries, seconds):
    done, elapsed = calls_within(lambda i: live.search(queries[i % len(queries)][None], 10), seconds)
    return rate(done, elapsed)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=60000)
    parser.add_argument("--bits", type=int, default=48)
    parser.add_argument("--compact-items", type=int, default=1_000_000)
    parser.add_argument("--milvus", action="store_true")
    parser.add_argument("--json")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    folder = tempfile.mkdtemp(prefix="bench-live-", dir=os.environ.get("BENCH_TMP"))
    path = os.path.join(folder, "codes.ssdh")
    fresh_index(path, args.items, args.bits, rng)
    live = LiveIndex(path)
    out = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                       "folder": folder}, "items": args.items, "bits": args.bits}
    new = rng.integers(0, 2, (20000, args.bits))
    next_id = args.items

    def add_one(i):
        live.add(new[i % len(new)][None], [next_id + i])
    per_s, lat = timed(add_one, 300)
    out["add_single"] = {"calls_per_s": per_s, "median_ms": statistics.median(lat)}
    next_id += 300

    def add_hundred(i):
        start = next_id + 100 * i
        live.add(new[:100], np.arange(start, start + 100))
    per_s, lat = timed(add_hundred, 50)
    out["add_batch_100"] = {"calls_per_s": per_s, "items_per_s": 100 * per_s, "median_ms": statistics.median(lat)}
    next_id += 5000

    def remove_one(i):
        live.remove([i])
    per_s, lat = timed(remove_one, 200)
    out["remove_single"] = {"calls_per_s": per_s, "median_ms": statistics.median(lat)}

    queries = rng.integers(0, 2, (256, args.bits))
    out["search_qps_read_only"] = searches_per_second(live, queries, 3.0)
    stop, added = threading.Event(), [0]

    def ingest(worker):
        i = 0
        while not stop.is_set():
            live.add(new[i % len(new)][None], [10_000_000 * (worker + 1) + i])
            added[0] += 1
            i += 1
    writers = [threading.Thread(target=ingest, args=(w,)) for w in range(4)]
    for w in writers:
        w.start()
    with stopwatch() as elapsed:
        out["search_qps_while_4_ingest"] = searches_per_second(live, queries, 3.0)
        stop.set()
        for w in writers:
            w.join()
    out["adds_per_s_during_that"] = rate(added[0], elapsed.seconds)
    live.close()

    big = os.path.join(folder, "big.ssdh")
    fresh_index(big, args.compact_items, args.bits, rng)
    with LiveIndex(big) as live:
        change = max(1, args.compact_items // 100)
        live.remove(np.arange(change))
        live.add(rng.integers(0, 2, (change, args.bits)), np.arange(args.compact_items, args.compact_items + change))
        with stopwatch() as elapsed:
            live.compact()
        out["compact"] = {"items": len(live), "seconds": elapsed.seconds}

    if args.milvus:
        from ssdh_port.hashing.milvus import MilvusIndex

        milvus = MilvusIndex(args.bits, os.path.join(folder, "m.db"), "bench")
        milvus.add(rng.integers(0, 2, (args.items, args.bits)), np.arange(args.items))
        base = args.items

        def milvus_one(i):
            milvus.add(new[i][None], [base + i])
        per_s, lat = timed(milvus_one, 30)
        out["milvus_add_single"] = {"calls_per_s": per_s, "median_ms": statistics.median(lat)}

        def milvus_hundred(i):
            start = base + 1000 + 100 * i
            milvus.add(new[:100], np.arange(start, start + 100))
        per_s, lat = timed(milvus_hundred, 10)
        out["milvus_add_batch_100"] = {"calls_per_s": per_s, "items_per_s": 100 * per_s,
                                       "median_ms": statistics.median(lat)}

        def milvus_remove(i):
            milvus.remove([i])
        per_s, lat = timed(milvus_remove, 30)
        out["milvus_remove_single"] = {"calls_per_s": per_s, "median_ms": statistics.median(lat)}

    for key, value in out.items():
        print(f"{key}: {value}")
    if args.json:
        write_json(args.json, out)


if __name__ == "__main__":
    main()
