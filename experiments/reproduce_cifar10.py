#!/usr/bin/env python
"""CIFAR-10 at CPU scale: SSDH-48 fine-tuned from the real Caffe cifar10_quick model
(the paper's pre-train + fine-tune), the ablation {alpha, beta, gamma} = {1,0,0},
{1,1,0}, {1,1,1}, the CVPRW coarse-to-fine search, and LSH / ITQ / CCA-ITQ / l2 on
the same backbone's features, under both original protocols: the 10,000 test images
query the 50,000 training images, mAP@1000 (CVPRW) and over the whole ranking
(the authors' README).

    python tools/reproduce_cifar10.py --archive cvprw15-cifar10-dataset-jpg.tar.gz
        --weights cifar10_quick_iter_4000.caffemodel [--iters 4000] [--out results/cifar10]

Writes <out>/table.md and <out>/table.json; every run's logs, plots and reports
stay under <out>/runs/.
"""
import argparse
import json
import os
import platform
import sys
import time

import numpy as np
import torch

import encode
import extract_features
import train_net
from ssdh_port.caffe.io import atomic_write, read_net_prototxt, write_text_proto
from ssdh_port.caffe.proto import caffe_pb2 as pb
from ssdh_port.data import datasets
from ssdh_port.hashing import evaluate
from ssdh_port.hashing.baselines import CCAITQ, ITQ, LSH
from ssdh_port.hashing.index import HammingIndex, coarse_to_fine
from ssdh_port.hashing.metrics import average_precision
from ssdh_port.recipes import write_solver, write_variant

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(ROOT, "prototxt", "cifar10_quick_ssdh")
ABLATION = ((1, 1, 1), (1, 1, 0), (1, 0, 0))


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archive", required=True, help="the authors' CIFAR-10 JPEG archive")
    parser.add_argument("--weights", required=True, help="the pre-trained cifar10_quick caffemodel")
    parser.add_argument("--iters", type=int, default=4000)
    parser.add_argument("--data", default="runs/cifar10")
    parser.add_argument("--out", default="results/cifar10")
    parser.add_argument("--shortlist", type=int, default=2000, help="coarse-to-fine Hamming shortlist")
    return parser.parse_args(argv)


def protocols(query_codes, db_codes, q_labels, d_labels):
    top = evaluate(query_codes, db_codes, q_labels, d_labels, topk=1000)
    whole = evaluate(query_codes, db_codes, q_labels, d_labels, topk=None)
    return {"map_at_1000": top["map"], "map_whole_ranking": whole["map"],
            "precision_at_1000": float(top["precision_at_k"][999]),
            "precision_within_radius_2": top["precision_within_radius"]}


def train_ssdh(args, data, weights, run, alpha, beta, gamma):
    os.makedirs(run, exist_ok=True)
    train_val = write_variant(os.path.join(RECIPE, "train_val.prototxt"),
                              os.path.join(run, "train_val.prototxt"), alpha=alpha, beta=beta, gamma=gamma)
    net = read_net_prototxt(train_val)
    for layer in net.layer:
        if layer.type == "Data":
            phase = pb.Phase.Name(layer.include[0].phase)
            layer.data_param.source = os.path.abspath(data[f"{'train' if phase == 'TRAIN' else 'test'}_lmdb_32"])
            layer.transform_param.mean_file = os.path.abspath(data["mean_32"])
    write_text_proto(net, train_val)
    prefix = os.path.join(run, "quick_ssdh48")
    solver = write_solver(os.path.join(RECIPE, "solver.yaml"), os.path.join(run, "solver.prototxt"),
                          net=train_val, max_iter=args.iters, snapshot_prefix=prefix,
                          stepsize=int(args.iters * 0.75), test_interval=args.iters)
    if train_net.main([solver, "--weights", weights, "--log-dir", run]) != 0:
        raise RuntimeError(f"training {run} failed")
    return f"{prefix}_iter_{args.iters}.caffemodel"


def encode_split(deploy, weights, data, split, out, features):
    path = os.path.join(out, f"{split}.ssdh")
    if encode.main(["--prototxt", deploy, "--weights", weights, "--input", data[f"{split}_lmdb_32"],
                    "--mean-file", data["mean_32"], "--batch-size", "500", "--out", path,
                    "--features", features]) != 0:
        raise RuntimeError(f"encoding {split} failed")
    return path


def main(argv=None):
    args = parse_args(argv)
    start = time.time()
    out = os.path.abspath(args.out)
    data = datasets.prepare_cifar10_jpg(args.archive, args.data, sizes=(32,), layout="rgb")
    deploy = os.path.join(RECIPE, "deploy.prototxt")
    rows = []
    c2f_source = None
    for alpha, beta, gamma in ABLATION:
        name = f"SSDH-48 {{{alpha},{beta},{gamma}}}"
        run = os.path.join(out, "runs", f"ssdh48_{alpha}{beta}{gamma}")
        t0 = time.time()
        weights = train_ssdh(args, data, os.path.abspath(args.weights), run, alpha, beta, gamma)
        query = HammingIndex.load(encode_split(deploy, weights, data, "test", run, "fc9,ip1"))
        db = HammingIndex.load(encode_split(deploy, weights, data, "train", run, "ip1"))
        q_labels, d_labels = query.labels.numpy(), db.labels.numpy()
        scores = np.load(os.path.join(run, "test.ssdh.fc9.npy"))
        row = {"method": name, **protocols(query.codes, db.codes, q_labels, d_labels),
               "classification_accuracy": float((scores.argmax(axis=1) == q_labels).mean()),
               "seconds": round(time.time() - t0), "run": run}
        rows.append(row)
        print(json.dumps(row), flush=True)
        if (alpha, beta, gamma) == (1, 0, 0):
            c2f_source = (run, query, db)
    rows.append(coarse_to_fine_row(c2f_source, args.shortlist))
    rows.extend(baseline_rows(args, data, out))
    write_table(rows, out, args, time.time() - start)
    return 0


def coarse_to_fine_row(source, shortlist):
    """The CVPRW search on the {1,0,0} net (softmax only, as KevinNet): Hamming
    shortlist, re-ranked by l2 on ip1; mAP@1000 of the re-ranked list."""
    run, query, db = source
    q_feat = np.load(os.path.join(run, "test.ssdh.ip1.npy"))
    d_feat = np.load(os.path.join(run, "train.ssdh.ip1.npy"))
    results = coarse_to_fine(db, query.codes, q_feat, d_feat, k=1000, shortlist=shortlist)
    q_labels, d_labels = torch.from_numpy(query.labels.numpy()), torch.from_numpy(db.labels.numpy())
    ranked = torch.stack([ids for ids, _ in results])
    hits = d_labels[ranked] == q_labels[:, None]
    ap = average_precision(hits)
    return {"method": f"KevinNet-48 coarse-to-fine (Hamming top {shortlist}, l2 on ip1)",
            "map_at_1000": float(ap.mean()), "precision_at_1000": float(hits.double().mean()), "run": run}


def baseline_rows(args, data, out):
    """LSH / ITQ / CCA-ITQ at 48 bits and l2 on the pre-trained backbone's ip1."""
    model = os.path.join(os.path.dirname(os.path.abspath(args.weights)), "cifar10_quick.prototxt")
    features = {}
    for split in ("train", "test"):
        path = os.path.join(out, "runs", "baselines", f"{split}_ip1.npz")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if extract_features.main(["--prototxt", model, "--weights", args.weights, "--input",
                                  data[f"{split}_lmdb_32"], "--mean-file", data["mean_32"],
                                  "--batch-size", "500", "--blobs", "ip1", "--out", path]) != 0:
            raise RuntimeError("feature extraction failed")
        features[split] = np.load(path)
    train, test = features["train"], features["test"]
    rows = []
    for name, cls in (("CCA-ITQ", CCAITQ), ("ITQ", ITQ), ("LSH", LSH)):
        hasher = cls(48).fit(train["ip1"], train["labels"])
        rows.append({"method": f"{name}-48 on ip1", **protocols(
            hasher.encode(test["ip1"]), hasher.encode(train["ip1"]), test["labels"], train["labels"])})
        print(json.dumps(rows[-1]), flush=True)
    top = evaluate(test["ip1"], train["ip1"], test["labels"], train["labels"], topk=1000, mode="euclidean")
    whole = evaluate(test["ip1"], train["ip1"], test["labels"], train["labels"], topk=None, mode="euclidean")
    rows.append({"method": "l2 on ip1 (64 floats)", "map_at_1000": top["map"],
                 "map_whole_ranking": whole["map"], "precision_at_1000": float(top["precision_at_k"][999])})
    return rows


def write_table(rows, out, args, seconds):
    def pct(row, key):
        return f"{100 * row[key]:.2f}" if key in row else "-"

    lines = ["| method | mAP@1000 | mAP (whole ranking) | P@1000 | P(r<=2) | accuracy |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['method']} | {pct(row, 'map_at_1000')} | {pct(row, 'map_whole_ranking')} | "
                     f"{pct(row, 'precision_at_1000')} | {pct(row, 'precision_within_radius_2')} | "
                     f"{pct(row, 'classification_accuracy')} |")
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs"
    text = ("\n".join(lines) + f"\n\n10,000 test queries, 50,000 training images as the database; "
            f"{args.iters} fine-tuning iterations per SSDH net from {os.path.basename(args.weights)}; "
            f"{machine}; {seconds / 60:.0f} minutes in all.\n")
    with atomic_write(os.path.join(out, "table.md"), "w") as f:
        f.write(text)
    with atomic_write(os.path.join(out, "table.json"), "w") as f:
        json.dump({"rows": rows, "iters": args.iters, "machine": machine, "seconds": seconds}, f, indent=1)
    print(text)


if __name__ == "__main__":
    sys.exit(main())
