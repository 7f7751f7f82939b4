#!/usr/bin/env python
"""Evaluate retrieval with the original protocol (analysis/precision.m) and plot it.

    python tools/eval_retrieval.py --query Q.ssdh --database D.ssdh [--query Q2.ssdh --database D2.ssdh ...]
        [--name SSDH-48 ...] [--topk 1000] [--radius 2] [--relevance any|exact]
        [--reference-curves DIR] [--device cpu|cuda] [--out results/eval]

Each (query, database) pair of code files (tools/encode.py) is one method or code
length; labels come from the code files. Prints and saves a table (Markdown and
JSON): mAP@topk (0: the whole ranking), precision@k for k = 100..1000, precision
within Hamming radius r; and PNG plots: precision@k curves, precision-recall
curves, mAP against code length. --reference-curves adds the published
baseline curves of a folder of '<method>-p-at-k.txt' files (k, precision per
line), as the original plot-p-at-k.gnuplot did.
"""
import argparse
import glob
import json
import os
import sys

import numpy as np

from ssdh_port.caffe.io import atomic_write
from ssdh_port.hashing import evaluate
from ssdh_port.hashing.index import HammingIndex, IndexFileError
from ssdh_port.plotting import pyplot, save_png

P_AT = (100, 200, 400, 600, 800, 1000)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--query", action="append", required=True)
    parser.add_argument("--database", action="append", required=True)
    parser.add_argument("--name", action="append")
    parser.add_argument("--topk", type=int, default=1000, help="mAP cut-off (0: whole ranking)")
    parser.add_argument("--radius", type=int, default=2)
    parser.add_argument("--relevance", default="any", choices=("any", "exact"))
    parser.add_argument("--reference-curves", help="folder of <method>-p-at-k.txt files")
    parser.add_argument("--device", default="cpu",
                        help="where the ranking runs (cuda: the CUDA kernel; default cpu)")
    parser.add_argument("--out", default="results/eval")
    args = parser.parse_args(argv)
    if len(args.query) != len(args.database):
        parser.error("give one --database per --query")
    if args.name and len(args.name) != len(args.query):
        parser.error("give one --name per --query")
    return args


def evaluate_pair(query_path, db_path, topk, radius, relevance, device="cpu"):
    query, db = HammingIndex.load(query_path), HammingIndex.load(db_path)
    if query.labels is None or db.labels is None:
        raise IndexFileError(f"{query_path} / {db_path}: code files without labels cannot be evaluated")
    k = len(db) if topk == 0 else topk
    result = evaluate(query.codes, db.codes, query.labels.numpy(), db.labels.numpy(), topk=k,
                      radius=radius, relevance=relevance, pr_curve=True, device=device)
    result["bits"] = query.bits
    return result


def table(rows, topk):
    head = (f"| method | bits | mAP@{'all' if topk == 0 else topk} | "
            + " | ".join(f"P@{k}" for k in P_AT) + " | P(r<=2) |")
    lines = [head, "|" + "---|" * (4 + len(P_AT))]
    for row in rows:
        lines.append(f"| {row['name']} | {row['bits']} | {row['map']:.4f} | "
                     + " | ".join(f"{row['precision_at'].get(str(k), float('nan')):.4f}" for k in P_AT)
                     + f" | {row['precision_within_radius']:.4f} |")
    return "\n".join(lines)


def reference_curves(folder):
    curves = {}
    for path in sorted(glob.glob(os.path.join(folder, "*-p-at-k.txt"))):
        data = np.loadtxt(path, ndmin=2)
        curves[os.path.basename(path)[: -len("-p-at-k.txt")]] = data
    return curves


def plot(rows, results, references, out):
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    ax = axes[0]
    for row, result in zip(rows, results):
        curve = result["precision_at_k"]
        ax.plot(np.arange(1, len(curve) + 1), curve, lw=2, label=row["name"])
    for name, data in references.items():
        ax.plot(data[:, 0], data[:, 1], ls="--", marker="o", ms=3, label=f"{name} (published)")
    ax.set(xlabel="number of retrieved images k", ylabel="precision@k", title="precision@k")
    ax.legend(fontsize=7)
    ax = axes[1]
    for row, result in zip(rows, results):
        ax.plot(result["pr_recall"], result["pr_precision"], marker=".", label=row["name"])
    ax.set(xlabel="recall", ylabel="precision", title="precision-recall (Hamming radius sweep)")
    ax.legend(fontsize=7)
    ax = axes[2]
    by_name = {}
    for row in rows:
        by_name.setdefault(row["name"].split("-")[0], []).append((row["bits"], row["map"]))
    for name, points in by_name.items():
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name)
    ax.set(xlabel="code length (bits)", ylabel="mAP", title="mAP against code length")
    ax.legend(fontsize=7)
    save_png(fig, out + ".png", dpi=110)


def _sampled_curve(curve, points=1000):
    """{k: precision@k}: every k up to 1000, then 1000 evenly spaced ranks."""
    n = len(curve)
    ks = np.unique(np.concatenate([np.arange(1, min(n, 1000) + 1),
                                   np.linspace(1, n, points).round().astype(int)]))
    return {int(k): round(float(curve[k - 1]), 6) for k in ks}


def main(argv=None):
    args = parse_args(argv)
    names = args.name or [os.path.splitext(os.path.basename(q))[0] for q in args.query]
    rows, results = [], []
    try:
        for name, query, db in zip(names, args.query, args.database):
            result = evaluate_pair(query, db, args.topk, args.radius, args.relevance, args.device)
            curve = result["precision_at_k"]
            rows.append({"name": name, "bits": result["bits"], "map": result["map"],
                         "precision_at": {str(k): float(curve[k - 1]) for k in P_AT if k <= len(curve)},
                         "precision_within_radius": result["precision_within_radius"],
                         "query": query, "database": db, "topk": args.topk,
                         "relevance": args.relevance, "radius": args.radius})
            results.append(result)
    except (IndexFileError, ValueError) as err:
        print(f"eval_retrieval: {err}", file=sys.stderr)
        return 1
    text = table(rows, args.topk)
    print(text)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with atomic_write(args.out + ".md", "w") as f:
        f.write(text + "\n")
    with atomic_write(args.out + ".json", "w") as f:
        json.dump({"rows": rows, "curves": {r["name"]: _sampled_curve(res["precision_at_k"])
                                            for r, res in zip(rows, results)}}, f, indent=1)
    references = reference_curves(args.reference_curves) if args.reference_curves else {}
    plot(rows, results, references, args.out)
    print(f"wrote {args.out}.md, {args.out}.json, {args.out}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
