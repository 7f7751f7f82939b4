#!/usr/bin/env python
"""CIFAR-10 at CPU scale: SSDH-48 fine-tuned from the real Caffe cifar10_quick model
(the paper's pre-train + fine-tune), the ablation {alpha, beta, gamma} = {1,0,0},
{1,1,0}, {1,1,1}, the CVPRW coarse-to-fine search, and LSH / ITQ / CCA-ITQ / l2 on
the pre-trained backbone's features, under both original protocols: the 10,000
test images query the 50,000 training images, mAP@1000 (CVPRW) and over the whole
ranking (the authors' README).

    python experiments/reproduce_cifar10.py --archive cvprw15-cifar10-dataset-jpg.tar.gz
        --weights cifar10_quick_iter_4000.caffemodel [--iterations 4000] [--out results/cifar10]

Writes <out>/table.md and <out>/table.json; every run's logs, plots and codes
stay under <out>/runs/.
"""
import argparse
import os
import sys
import time

from ssdh_port import cli
from ssdh_port.data import datasets
from ssdh_port.pipeline import (
    batch_source,
    encode_splits,
    extract,
    load_net,
    prepare_recipe,
    recipe_dir,
    splits_report,
    train_caffe,
    transform_param,
    write_table,
)
from ssdh_port.pipeline.jobs import coarse_to_fine_report, hashing_baseline_reports

ABLATION = ((1, 1, 1), (1, 1, 0), (1, 0, 0))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archive", required=True, help="the authors' CIFAR-10 JPEG archive")
    parser.add_argument("--weights", required=True, help="the pre-trained cifar10_quick caffemodel")
    cli.add_iterations(parser, 4000, help="fine-tuning iterations per SSDH net")
    parser.add_argument("--data", default="runs/cifar10")
    parser.add_argument("--out", default="results/cifar10")
    parser.add_argument("--shortlist", type=int, default=2000, help="coarse-to-fine Hamming shortlist")
    args = parser.parse_args(argv)
    start = time.time()
    out = os.path.abspath(args.out)
    data = datasets.prepare_cifar10_jpg(args.archive, args.data, sizes=(32,), layout="rgb")
    splits = {"test": data["test_lmdb_32"], "train": data["train_lmdb_32"]}
    transform = transform_param(mean_file=data["mean_32"])
    reports, kevinnet = [], None
    for weights in ABLATION:
        t0 = time.time()
        name = "ssdh48_" + "".join(map(str, weights))
        run = os.path.join(out, "runs", name)
        recipe = prepare_recipe(recipe_dir("cifar10_quick_ssdh"), run, loss_weights=weights,
                                sources={"TRAIN": splits["train"], "TEST": splits["test"]},
                                mean_file=data["mean_32"], weights_name="quick_ssdh48",
                                max_iter=args.iterations, stepsize=int(args.iterations * 0.75),
                                test_interval=args.iterations)
        trained = train_caffe(recipe.solver, weights=os.path.abspath(args.weights), log_dir=run)
        encoded = encode_splits(recipe.deploy, trained.weights, splits, run, transform=transform,
                                features=("fc9", "ip1"))
        reports.append(splits_report(encoded["test"], encoded["train"], method="SSDH-48 {%d,%d,%d}" % weights,
                                     scores_blob="fc9", seconds=round(time.time() - t0), extra={"run": run}))
        if weights == (1, 0, 0):
            kevinnet = encoded
    reports.append(coarse_to_fine_report(
        kevinnet["test"], kevinnet["train"], "ip1", shortlist=args.shortlist,
        method=f"KevinNet-48 coarse-to-fine (Hamming top {args.shortlist}, l2 on ip1)"))
    reports.extend(hashing_baseline_reports(*backbone_features(args.weights, splits, transform),
                                            bits=48, source="ip1"))
    print(write_table(reports, out, title="CIFAR-10 at CPU scale (cifar10_quick fine-tuned)",
                      notes=f"10,000 test queries, 50,000 training images as the database; "
                      f"{args.iterations} fine-tuning iterations per SSDH net from "
                      f"{os.path.basename(args.weights)}; {(time.time() - start) / 60:.0f} minutes in all."))
    return 0


def backbone_features(weights, splits, transform):
    """ip1 of the pre-trained cifar10_quick net: (train, train labels, test, test labels)."""
    model = os.path.join(os.path.dirname(os.path.abspath(weights)), "cifar10_quick.prototxt")
    net = load_net(model, weights, 500)
    out = []
    for split in ("train", "test"):
        features, labels = extract(net, ["ip1"], batch_source(splits[split], net, 500, transform))
        out += [features["ip1"], labels]
    return out


if __name__ == "__main__":
    sys.exit(cli.run(main))
