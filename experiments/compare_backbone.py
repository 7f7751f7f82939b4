#!/usr/bin/env python
"""Is classification sacrificed? Train the backbone of an SSDH run without its
latent layer (same data, solver, iterations and initial weights) and compare the
test accuracy of both.

    python tools/compare_backbone.py --run results/mnist/runs/lenet_ssdh48_p2 --name "LeNet (MNIST)"
        [--weights INIT.caffemodel] [--out results/backbone]

--run is an SSDH training folder holding solver.prototxt, train_val.prototxt and
train_log.jsonl (every reproduction script leaves one); --weights the initial
weights it was fine-tuned from, if any. The variant (ssdh_port.recipes.
remove_latent: no latent layer, no E2/E3, the classifier on the latent layer's
input) trains into <out>/runs/<name>; <out>/table.md and table.json list every
comparison made so far.
"""
import argparse
import glob
import json
import os
import re
import sys

import train_net
from ssdh_port.caffe.io import atomic_write, read_net_prototxt, write_text_proto
from ssdh_port.recipes import remove_latent, write_solver


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="the SSDH training folder to compare with")
    parser.add_argument("--name", required=True, help="row name, e.g. 'LeNet (MNIST)'")
    parser.add_argument("--weights", help="initial weights of the SSDH run (fine-tuning)")
    parser.add_argument("--out", default="results/backbone")
    return parser.parse_args(argv)


def final_test(log_path):
    """Outputs of the last test pass in a train_log.jsonl."""
    last = None
    with open(log_path) as f:
        for line in f:
            record = json.loads(line)
            if record.get("kind") == "test" and record.get("net", 0) == 0:
                last = record
    if last is None:
        raise ValueError(f"{log_path}: no test pass logged")
    return last


def train_backbone(args, run_dir):
    os.makedirs(run_dir, exist_ok=True)
    net = remove_latent(read_net_prototxt(os.path.join(args.run, "train_val.prototxt")))
    train_val = os.path.join(run_dir, "train_val.prototxt")
    write_text_proto(net, train_val)
    ssdh_solver = os.path.join(args.run, "solver.prototxt")
    solver = write_solver(ssdh_solver, os.path.join(run_dir, "solver.prototxt"), net=train_val,
                          snapshot_prefix=os.path.join(run_dir, "backbone"))
    command = [solver, "--log-dir", run_dir] + (["--weights", args.weights] if args.weights else [])
    if train_net.main(command) != 0:
        raise RuntimeError(f"training the backbone in {run_dir} failed")


def write_table(out):
    rows = []
    for path in sorted(glob.glob(os.path.join(out, "runs", "*", "comparison.json"))):
        rows.append(json.load(open(path)))
    lines = ["| backbone | iterations | accuracy with SSDH latent layer | accuracy without | difference |",
             "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['iterations']} | {100 * r['ssdh_accuracy']:.2f} "
                     f"| {100 * r['backbone_accuracy']:.2f} "
                     f"| {100 * (r['ssdh_accuracy'] - r['backbone_accuracy']):+.2f} |")
    text = "\n".join(lines) + "\n\nEach pair: same data, solver, iterations and initial weights.\n"
    with atomic_write(os.path.join(out, "table.md"), "w") as f:
        f.write(text)
    with atomic_write(os.path.join(out, "table.json"), "w") as f:
        json.dump(rows, f, indent=1)
    print(text)


def main(argv=None):
    args = parse_args(argv)
    run_dir = os.path.join(args.out, "runs", re.sub(r"[^A-Za-z0-9_.-]+", "_", args.name).strip("_"))
    try:
        ssdh = final_test(os.path.join(args.run, "train_log.jsonl"))
        train_backbone(args, run_dir)
        backbone = final_test(os.path.join(run_dir, "train_log.jsonl"))
        if "accuracy" not in ssdh["outputs"] or "accuracy" not in backbone["outputs"]:
            raise ValueError("both nets need an 'accuracy' test output")
    except (OSError, ValueError) as err:
        print(f"compare_backbone: {err}", file=sys.stderr)
        return 1
    result = {"name": args.name, "iterations": backbone["iter"], "ssdh_run": args.run,
              "ssdh_accuracy": ssdh["outputs"]["accuracy"], "backbone_accuracy": backbone["outputs"]["accuracy"],
              "command": "python tools/compare_backbone.py " + " ".join(
                  f"--{k} '{v}'" if " " in str(v) else f"--{k} {v}"
                  for k, v in vars(args).items() if v is not None)}
    with atomic_write(os.path.join(run_dir, "comparison.json"), "w") as f:
        json.dump(result, f, indent=1)
    write_table(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
