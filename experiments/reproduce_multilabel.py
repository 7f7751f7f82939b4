#!/usr/bin/env python
"""Multi-label SSDH on real images: two-digit MNIST mosaics (each training and
test image beside another one of its split, labelled with both classes), LeNet-SSDH-48
trained with the max-margin multi-label loss (paper Eq. 4-6) plus E2 and E3.

    python experiments/reproduce_multilabel.py [--iterations 5000] [--out results/multilabel]
        [--data runs/mnist_pairs] [--runs p2 p1 p2_half_labels]

Runs: p = 2 and p = 1 (the exponent of E2, E3 and the max-margin loss) with all
labels, and p = 2 with half of each training mosaic's ten labels made "don't
care" (0: no loss, no gradient; paper section 4.11). The 10,000 test mosaics query
the 60,000 training mosaics, with relevance "any shared label" and "exact label
set", mAP@1000 and over the whole ranking. Classification: a label is predicted
when its score passes 0.5 (the max-margin loss pushes present labels to >= 1 and
absent ones to <= 0); reported per label and per mosaic (whole set right).
Writes <out>/table.md, <out>/table.json (one row per run and relevance) and
<out>/precision_at_k.png; each run's logs and codes stay under <out>/runs/.
"""
import argparse
import os
import sys
import time

import numpy as np

from ssdh_port import cli
from ssdh_port.data.mosaics import prepare_mnist_mosaics
from ssdh_port.pipeline import (
    encode_batches,
    load_net,
    prepare_recipe,
    read_table,
    recipe_dir,
    retrieval_report,
    sampled_curve,
    train_caffe,
    write_table,
)
from ssdh_port.pipeline.features import array_batches
from ssdh_port.pipeline.plots import pyplot, save_png

SCALE = 0.00390625  # LeNet's 1/256
# (run name, p, fraction of each training row's labels made don't-care)
RUNS = (("p2", 2, 0.0), ("p1", 1, 0.0), ("p2_half_labels", 2, 0.5))
EXTRA_COLUMNS = (("p", "p", "{}"), ("don't care", "dont_care", "{:.0%}"),
                 ("label acc.", "label_accuracy", "{:.2%}"), ("set acc.", "set_accuracy", "{:.2%}"))


def encode(run_dir, weights, mosaics, multi_hot, split):
    """Codes (latent_sigmoid > 0.5) with the multi-hot labels, and the class scores (ip2)."""
    net = load_net(os.path.join(recipe_dir("lenet_ssdh_multilabel"), "deploy.prototxt"), weights, 500)
    data = (mosaics.astype(np.float32) * np.float32(SCALE))[:, None]
    encoded = encode_batches(net, array_batches({"data": data}, 500), latent_blob="latent_sigmoid",
                             features=("ip2",), labels=multi_hot)
    return encoded.save(os.path.join(run_dir, f"{split}.ssdh"))


def run_one(args, name, p, dont_care, sets, lists):
    run_dir = os.path.abspath(os.path.join(args.out, "runs", name))
    start = time.time()
    recipe = prepare_recipe(recipe_dir("lenet_ssdh_multilabel"), run_dir, p=p,
                            sources={"TRAIN": lists["train_half_labels" if dont_care else "train"],
                                     "TEST": lists["test"]},
                            weights_name="lenet_ssdh48_multilabel", max_iter=args.iterations,
                            test_interval=max(1, args.iterations // 5))
    trained = train_caffe(recipe.solver, log_dir=run_dir)
    query, db = (encode(run_dir, trained.weights, *sets[split], split) for split in ("test", "train"))
    predicted, truth = query.features["ip2"] > 0.5, sets["test"][1] > 0
    extra = {"p": p, "dont_care": dont_care, "label_accuracy": float((predicted == truth).mean()),
             "set_accuracy": float((predicted == truth).all(axis=1).mean()), "run": name,
             "command": f"python experiments/reproduce_multilabel.py --iterations {args.iterations} --runs {name}"}
    reports = []
    for relevance in ("any", "exact"):
        ev = retrieval_report(query.index.codes, db.index.codes, query.labels, db.labels, method=name,
                              bits=48, relevance=relevance, curves=True, seconds=round(time.time() - start),
                              extra=dict(extra))
        ev.report.extra["curve"] = sampled_curve(ev.precision_at_k)
        reports.append(ev.report)
    return reports


def plot(reports, path):
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, relevance, title in zip(axes, ("any", "exact"), ("any shared label", "exact label set")):
        for r in (r for r in reports if r.relevance == relevance):
            curve = r.extra["curve"]
            ax.plot([int(k) for k in curve], list(curve.values()),
                    label=f"{r.method} (mAP@1000 {100 * r.map_at_topk:.1f})")
        ax.set_xlabel("number of retrieved mosaics")
        ax.set_ylabel(f"precision ({title})")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("Multi-label MNIST mosaics, LeNet-SSDH-48")
    save_png(fig, path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_iterations(parser, 5000, help="training iterations per run")
    parser.add_argument("--out", default="results/multilabel")
    parser.add_argument("--data", default="runs/mnist_pairs", help="where the HDF5 sets go")
    parser.add_argument("--runs", nargs="+", default=[r[0] for r in RUNS], choices=[r[0] for r in RUNS])
    args = parser.parse_args(argv)
    sets, lists = prepare_mnist_mosaics(args.data, SCALE)
    previous = os.path.join(args.out, "table.json")
    # Keep the rows of the runs not redone this time.
    reports = [r for r in read_table(previous) if r.method not in args.runs] if os.path.isfile(previous) else []
    for name, p, dont_care in RUNS:
        if name in args.runs:
            reports += run_one(args, name, p, dont_care, sets, lists)
    order = [n for n, _, _ in RUNS]
    reports.sort(key=lambda r: (order.index(r.method), r.relevance))
    print(write_table(reports, args.out, title="Multi-label MNIST mosaics, LeNet-SSDH-48",
                      extra_columns=EXTRA_COLUMNS,
                      notes=f"10,000 test mosaics query 60,000 training mosaics (28 x 56, two MNIST digits, "
                      f"55 label sets); {args.iterations} iterations per run."))
    plot(reports, os.path.join(args.out, "precision_at_k.png"))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
