#!/usr/bin/env python
"""The main job: SSDH end to end on MNIST (shipped in data/mnist), on the CPU.

    python tools/demo.py [--bits 48] [--iters 5000] [--p 2] [--out runs/demo]
        [--solver-set FIELD=VALUE ...]

1. MNIST idx -> LMDBs (tools/prepare_dataset.py mnist);
2. tools/train_net.py trains LeNet-SSDH (prototxt/lenet_ssdh, code length --bits)
   with E1 + E2 + E3, Caffe's solver, snapshots and logs;
3. tools/encode.py encodes the 10,000 test images (queries) and the 60,000
   training images (database) with the deploy net into code files;
4. the codes go into a HammingIndex; tools/eval_retrieval.py evaluates with the
   original protocol (mAP@1000 and over the whole ranking, P@k, P within r=2);
5. a report (Markdown + JSON) with classification accuracy, a P@k / PR plot and
   a picture of retrieval results (queries with their top 10, wrong ones marked).
It prints where everything went.
"""
import argparse
import json
import os
import sys
import time

import numpy as np

import encode
import eval_retrieval
import train_net
from ssdh_port.caffe.io import atomic_write
from ssdh_port.data import datasets, mnist
from ssdh_port.hashing.index import HammingIndex
from ssdh_port.plotting import pyplot, save_png
from ssdh_port.recipes import write_solver, write_variant

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(ROOT, "prototxt", "lenet_ssdh")


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bits", type=int, default=48)
    parser.add_argument("--iters", type=int, default=5000)
    parser.add_argument("--p", type=int, default=2, choices=(1, 2), help="exponent of E2 and E3")
    parser.add_argument("--out", default="runs/demo")
    parser.add_argument("--data", default="runs/mnist", help="where the MNIST LMDBs go")
    parser.add_argument("--solver-set", action="append", default=[], metavar="FIELD=VALUE",
                        help="replace a field of the recipe's solver (SolverParameter name; "
                        "comma-separated values for a repeated field), e.g. lr_policy=multistep")
    args = parser.parse_args(argv)
    args.solver_fields = solver_overrides(args.solver_set, parser)
    return args


def solver_overrides(items, parser):
    """["lr_policy=multistep", "stepvalue=20000,26000"] -> solver fields, typed
    by the SolverParameter schema."""
    from ssdh_port.caffe.proto import caffe_pb2 as pb

    fields = {}
    for item in items:
        key, sep, value = item.partition("=")
        field = pb.SolverParameter.DESCRIPTOR.fields_by_name.get(key)
        if not sep or field is None:
            parser.error(f"--solver-set {item!r}: expected FIELD=VALUE with a SolverParameter field")
        cast = {field.TYPE_STRING: str, field.TYPE_FLOAT: float, field.TYPE_DOUBLE: float,
                field.TYPE_BOOL: lambda v: v.lower() in ("1", "true")}.get(field.type, int)
        try:
            values = [cast(v) for v in value.split(",")]
        except ValueError:
            parser.error(f"--solver-set {item!r}: {value!r} is not a valid {key}")
        fields[key] = values if field.is_repeated else values[0]
    return fields


def step(title):
    print(f"\n=== {title}", flush=True)


def retrieval_picture(query_images, query_labels, db_images, db_labels, ids, path, rows=8):
    plt = pyplot()
    top = ids.shape[1]
    fig, axes = plt.subplots(rows, top + 1, figsize=(1.1 * (top + 1), 1.15 * rows))
    for r in range(rows):
        axes[r][0].imshow(query_images[r], cmap="gray")
        axes[r][0].set_title("query", fontsize=7)
        for c in range(top):
            j = int(ids[r, c])
            ax = axes[r][c + 1]
            ax.imshow(db_images[j], cmap="gray")
            wrong = db_labels[j] != query_labels[r]
            for spine in ax.spines.values():
                spine.set_visible(bool(wrong))
                spine.set_color("red")
                spine.set_linewidth(3)
            if wrong:
                ax.set_title(f"wrong ({db_labels[j]})", fontsize=6, color="red")
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("Hamming retrieval: queries and their top 10 (wrong class in red)", fontsize=9)
    save_png(fig, path)


def main(argv=None):
    args = parse_args(argv)
    start = time.time()
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)

    step("1. MNIST -> LMDB")
    lmdbs = datasets.prepare_mnist(args.data)

    step(f"2. train LeNet-SSDH-{args.bits} ({args.iters} iterations)")
    train_val = write_variant(os.path.join(RECIPE, "train_val.prototxt"),
                              os.path.join(out, "train_val.prototxt"), bits=args.bits, p=args.p)
    deploy = write_variant(os.path.join(RECIPE, "deploy.prototxt"),
                           os.path.join(out, "deploy.prototxt"), bits=args.bits)
    _use_sources(train_val, lmdbs)
    prefix = os.path.join(out, f"lenet_ssdh{args.bits}")
    solver = write_solver(os.path.join(RECIPE, "solver.yaml"), os.path.join(out, "solver.prototxt"),
                          net=train_val, max_iter=args.iters, snapshot_prefix=prefix,
                          test_interval=max(1, args.iters // 5), **args.solver_fields)
    if train_net.main([solver, "--log-dir", out]) != 0:
        return 1
    weights = f"{prefix}_iter_{args.iters}.caffemodel"

    step("3. encode queries (test set) and database (training set)")
    codes = {}
    for split in ("test", "train"):
        codes[split] = os.path.join(out, f"{split}.ssdh")
        if encode.main(["--prototxt", deploy, "--weights", weights, "--input", lmdbs[split],
                        "--scale", "0.00390625", "--batch-size", "500", "--out", codes[split],
                        "--features", "ip2", "--features-out",
                        os.path.join(out, f"{split}_scores.npy")]) != 0:
            return 1

    step("4. Hamming index and evaluation (original protocol)")
    evals = {}
    for name, topk in (("top1000", 1000), ("all", 0)):
        evals[name] = os.path.join(out, f"eval_{name}")
        if eval_retrieval.main(["--query", codes["test"], "--database", codes["train"],
                                "--name", f"SSDH-{args.bits}", "--topk", str(topk),
                                "--out", evals[name]]) != 0:
            return 1

    step("5. report")
    test_images, test_labels = mnist.load_split("test")
    train_images, train_labels = mnist.load_split("train")
    scores = np.load(os.path.join(out, "test_scores.npy"))
    accuracy = float((scores.argmax(axis=1) == test_labels).mean())
    index = HammingIndex.load(codes["train"])
    queries = HammingIndex.load(codes["test"])
    _, ids = index.search(queries.codes[:8], 10)
    picture = os.path.join(out, "retrieval_examples.png")
    retrieval_picture(test_images[:8], test_labels, train_images, train_labels, ids.numpy(), picture)
    rows = {name: json.load(open(path + ".json"))["rows"][0] for name, path in evals.items()}
    report = {"bits": args.bits, "iterations": args.iters, "classification_accuracy": accuracy,
              "map_at_1000": rows["top1000"]["map"], "map_whole_ranking": rows["all"]["map"],
              "precision_at": rows["top1000"]["precision_at"],
              "precision_within_radius_2": rows["top1000"]["precision_within_radius"],
              "queries": len(test_labels), "database": len(train_labels),
              "seconds": round(time.time() - start, 1),
              "files": {"weights": weights, "codes": codes, "log": os.path.join(out, "train_log.jsonl"),
                        "loss_plot": os.path.join(out, "train_loss.png"),
                        "pk_pr_plot": evals["top1000"] + ".png", "retrieval_examples": picture}}
    with atomic_write(os.path.join(out, "report.json"), "w") as f:
        json.dump(report, f, indent=1)
    lines = [f"# SSDH on MNIST: LeNet-SSDH-{args.bits}", "",
             f"- classification accuracy (10,000 test images): {accuracy:.4f}",
             f"- mAP@1000 (10,000 test queries vs 60,000 training images): {report['map_at_1000']:.4f}",
             f"- mAP over the whole ranking: {report['map_whole_ranking']:.4f}",
             f"- precision@1000: {report['precision_at']['1000']:.4f}; within Hamming radius 2: "
             f"{report['precision_within_radius_2']:.4f}",
             f"- {args.iters} iterations, {report['seconds']} s in all", ""]
    lines += [f"- {key}: {value}" for key, value in report["files"].items()]
    with atomic_write(os.path.join(out, "report.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"report: {os.path.join(out, 'report.md')}")
    return 0


def _use_sources(train_val, lmdbs):
    """Point the recipe's Data layers at the LMDBs this run made."""
    from ssdh_port.caffe import io as caffe_io
    from ssdh_port.caffe.proto import caffe_pb2 as pb

    net = caffe_io.read_net_prototxt(train_val)
    for layer in net.layer:
        if layer.type == "Data":
            phases = [pb.Phase.Name(r.phase) for r in layer.include]
            layer.data_param.source = os.path.abspath(lmdbs["train" if "TRAIN" in phases else "test"])
    caffe_io.write_text_proto(net, train_val)


if __name__ == "__main__":
    sys.exit(main())
