#!/usr/bin/env python
"""Multi-label SSDH on real images: two-digit MNIST mosaics (each training and
test image beside another one of its split, labelled with both classes), LeNet-SSDH-48
trained with the max-margin multi-label loss (paper Eq. 4-6) plus E2 and E3.

    python tools/reproduce_multilabel.py [--iters 5000] [--out results/multilabel]
        [--data runs/mnist_pairs]

Runs: p = 2 and p = 1 (the exponent of E2, E3 and the max-margin loss) with all
labels, and p = 2 with half of each training mosaic's ten labels made "don't
care" (0: no loss, no gradient; paper section 4.11). The 10,000 test mosaics query
the 60,000 training mosaics, with relevance "any shared label" and "exact label
set", mAP@1000 and over the whole ranking. Classification: a label is predicted
when its score passes 0.5 (the max-margin loss pushes present labels to >= 1 and
absent ones to <= 0); reported per label and per mosaic (whole set right).
Writes <out>/table.md, <out>/table.json, <out>/precision_at_k.png (any / exact); each run's logs,
plots and evaluations stay under <out>/runs/.
"""
import argparse
import json
import os
import platform
import sys
import time

import numpy as np

import eval_retrieval
import train_net
from ssdh_port import ops
from ssdh_port.caffe.io import atomic_write, read_net_prototxt, write_text_proto
from ssdh_port.caffe.net import CaffeNet
from ssdh_port.data import mnist
from ssdh_port.data.mosaics import pair_mosaics, signed_labels, write_hdf5_set
from ssdh_port.features import array_batches, extract
from ssdh_port.hashing.index import HammingIndex
from ssdh_port.plotting import pyplot, save_png
from ssdh_port.recipes import write_solver, write_variant

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(ROOT, "prototxt", "lenet_ssdh_multilabel")
SCALE = 0.00390625  # LeNet's 1/256
# (run name, p, fraction of each training row's labels made don't-care)
RUNS = (("p2", 2, 0.0), ("p1", 1, 0.0), ("p2_half_labels", 2, 0.5))


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=5000)
    parser.add_argument("--out", default="results/multilabel")
    parser.add_argument("--data", default="runs/mnist_pairs", help="where the HDF5 sets go")
    parser.add_argument("--runs", nargs="+", default=[r[0] for r in RUNS], choices=[r[0] for r in RUNS])
    return parser.parse_args(argv)


def make_sets(folder):
    """Mosaics of both splits (uint8), their multi-hot labels and HDF5 list files."""
    sets = {}
    for split, seed in (("train", 1), ("test", 2)):
        images, labels = mnist.load_split(split)
        sets[split] = pair_mosaics(images, labels, 10, seed=seed)
    lists = {}
    wanted = {"train": ("train", 0.0), "train_half_labels": ("train", 0.5), "test": ("test", 0.0)}
    for name, (split, dont_care) in wanted.items():
        listing = os.path.join(folder, f"{name}_h5.txt")
        if not os.path.isfile(listing):
            print(f"writing {name} ({len(sets[split][0])} mosaics) to {folder}", flush=True)
            write_hdf5_set(folder, name, sets[split][0], signed_labels(sets[split][1], dont_care, seed=3),
                           scale=SCALE)
        lists[name] = os.path.abspath(listing)
    return sets, lists


def train(run_dir, p, train_list, test_list, iters):
    train_val = write_variant(os.path.join(RECIPE, "train_val.prototxt"),
                              os.path.join(run_dir, "train_val.prototxt"), p=p)
    net = read_net_prototxt(train_val)
    for layer in net.layer:
        if layer.type == "HDF5Data":
            is_train = any(rule.phase == 0 for rule in layer.include)
            layer.hdf5_data_param.source = train_list if is_train else test_list
    write_text_proto(net, train_val)
    prefix = os.path.join(run_dir, "lenet_ssdh48_multilabel")
    solver = write_solver(os.path.join(RECIPE, "solver.yaml"), os.path.join(run_dir, "solver.prototxt"),
                          net=train_val, max_iter=iters, snapshot_prefix=prefix,
                          test_interval=max(1, iters // 5))
    if train_net.main([solver, "--log-dir", run_dir]) != 0:
        raise RuntimeError(f"training in {run_dir} failed")
    return f"{prefix}_iter_{iters}.caffemodel"


def encode(weights, mosaics, multi_hot, path):
    """Codes (latent_sigmoid > 0.5) into a code file with the multi-hot labels;
    returns the class scores (ip2)."""
    deploy = os.path.join(RECIPE, "deploy.prototxt")
    net = CaffeNet(deploy, weights=weights, input_shapes={"data": (500, 1, 28, 56)})
    data = (mosaics.astype(np.float32) * np.float32(SCALE))[:, None]
    out, _ = extract(net, ["latent_sigmoid", "ip2"], array_batches({"data": data}, 500))
    import torch

    codes = ops.pack_bits(torch.from_numpy(out["latent_sigmoid"]), 0.5)
    index = HammingIndex(48)
    index.add(codes, labels=multi_hot)
    index.save(path)
    return out["ip2"]


def classification(scores, multi_hot):
    predicted = scores > 0.5
    truth = multi_hot > 0
    return {"label_accuracy": float((predicted == truth).mean()),
            "set_accuracy": float((predicted == truth).all(axis=1).mean())}


def run_one(args, name, p, dont_care, sets, lists):
    run_dir = os.path.abspath(os.path.join(args.out, "runs", name))
    os.makedirs(run_dir, exist_ok=True)
    start = time.time()
    train_list = lists["train_half_labels" if dont_care else "train"]
    weights = train(run_dir, p, train_list, lists["test"], args.iters)
    codes = {}
    for split in ("test", "train"):
        codes[split] = os.path.join(run_dir, f"{split}.ssdh")
        scores = encode(weights, *sets[split], codes[split])
        if split == "test":
            row = classification(scores, sets["test"][1])
    for relevance in ("any", "exact"):
        for label, topk in (("1000", 1000), ("all", 0)):
            out = os.path.join(run_dir, f"eval_{relevance}_{label}")
            if eval_retrieval.main(["--query", codes["test"], "--database", codes["train"],
                                    "--name", name, "--topk", str(topk), "--relevance", relevance,
                                    "--out", out]) != 0:
                raise RuntimeError(f"evaluation of {name} failed")
            result = json.load(open(out + ".json"))["rows"][0]
            row[f"map_{relevance}_{label}"] = result["map"]
            if label == "1000":
                row[f"p1000_{relevance}"] = result["precision_at"]["1000"]
                row[f"r2_{relevance}"] = result["precision_within_radius"]
    curves = {relevance: json.load(open(os.path.join(run_dir, f"eval_{relevance}_1000.json")))["curves"][name]
              for relevance in ("any", "exact")}
    row.update(name=name, p=p, dont_care=dont_care, seconds=round(time.time() - start), curves=curves,
               command=f"python tools/reproduce_multilabel.py --iters {args.iters} --runs {name}")
    return row


def write_table(args, rows):
    lines = ["| run | p | don't care | mAP@1000 any | mAP@1000 exact | mAP all any | mAP all exact "
             "| P@1000 any | P(r<=2) any | label acc. | set acc. | seconds |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['p']} | {int(100 * r['dont_care'])}% | {100 * r['map_any_1000']:.2f} "
            f"| {100 * r['map_exact_1000']:.2f} | {100 * r['map_any_all']:.2f} | {100 * r['map_exact_all']:.2f} "
            f"| {100 * r['p1000_any']:.2f} | {100 * r['r2_any']:.2f} | {100 * r['label_accuracy']:.2f} "
            f"| {100 * r['set_accuracy']:.2f} | {r['seconds']} |")
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
    text = "\n".join(lines) + (
        f"\n\n10,000 test mosaics query 60,000 training mosaics (28 x 56, two MNIST digits, "
        f"55 label sets); {args.iters} iterations per run; {machine}.\n")
    with atomic_write(os.path.join(args.out, "table.md"), "w") as f:
        f.write(text)
    with atomic_write(os.path.join(args.out, "table.json"), "w") as f:
        json.dump({"iters": args.iters, "machine": machine, "rows": rows}, f, indent=1)
    print(text)


def plot(rows, path):
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, relevance, title in zip(axes, ("any", "exact"), ("any shared label", "exact label set")):
        for r in rows:
            curve = r["curves"][relevance]
            ax.plot([int(k) for k in curve], list(curve.values()),
                    label=f"{r['name']} (mAP@1000 {100 * r[f'map_{relevance}_1000']:.1f})")
        ax.set_xlabel("number of retrieved mosaics")
        ax.set_ylabel(f"precision ({title})")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("Multi-label MNIST mosaics, LeNet-SSDH-48")
    save_png(fig, path)


def main(argv=None):
    args = parse_args(argv)
    sets, lists = make_sets(args.data)
    rows = []
    previous = os.path.join(args.out, "table.json")
    if os.path.isfile(previous):  # keep the runs not redone this time
        rows = [r for r in json.load(open(previous))["rows"] if r["name"] not in args.runs]
    for name, p, dont_care in RUNS:
        if name in args.runs:
            print(f"\n=== {name}: p = {p}, {int(100 * dont_care)}% of the labels don't care", flush=True)
            rows.append(run_one(args, name, p, dont_care, sets, lists))
    rows.sort(key=lambda r: [n for n, _, _ in RUNS].index(r["name"]))
    write_table(args, rows)
    plot(rows, os.path.join(args.out, "precision_at_k.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
