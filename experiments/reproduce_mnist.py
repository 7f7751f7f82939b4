#!/usr/bin/env python
"""Paper Table 3 on MNIST at CPU scale: LeNet-SSDH from scratch at 12/32/48 bits
with p = 1 and p = 2, each run by the main job (tools/demo.py), then one table.

    python tools/reproduce_mnist.py [--iters 10000] [--bits 12 32 48] [--p 1 2] [--out results/mnist]

Writes <out>/table.md and <out>/table.json (mAP@1000 and over the whole ranking,
P@1000, P within radius 2, classification accuracy, time) and keeps every run's
logs, plots and report under <out>/runs/.
"""
import argparse
import json
import os
import platform
import sys

import demo
from ssdh_port.caffe.io import atomic_write


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=10000)
    parser.add_argument("--bits", type=int, nargs="+", default=[12, 32, 48])
    parser.add_argument("--p", type=int, nargs="+", default=[2, 1])
    parser.add_argument("--out", default="results/mnist")
    args = parser.parse_args(argv)
    rows = []
    for p in args.p:
        for bits in args.bits:
            run = os.path.join(args.out, "runs", f"lenet_ssdh{bits}_p{p}")
            if demo.main(["--bits", str(bits), "--p", str(p), "--iters", str(args.iters), "--out", run]) != 0:
                return 1
            report = json.load(open(os.path.join(run, "report.json")))
            rows.append({"bits": bits, "p": p, **{k: report[k] for k in (
                "map_at_1000", "map_whole_ranking", "precision_within_radius_2",
                "classification_accuracy", "seconds")}, "precision_at_1000": report["precision_at"]["1000"],
                "command": f"python tools/demo.py --bits {bits} --p {p} --iters {args.iters} --out {run}"})
    lines = ["| bits | p | mAP@1000 | mAP (whole ranking) | P@1000 | P(r<=2) | accuracy | seconds |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['bits']} | {r['p']} | {100 * r['map_at_1000']:.2f} | {100 * r['map_whole_ranking']:.2f} "
                     f"| {100 * r['precision_at_1000']:.2f} | {100 * r['precision_within_radius_2']:.2f} "
                     f"| {100 * r['classification_accuracy']:.2f} | {r['seconds']:.0f} |")
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
    text = "\n".join(lines) + f"\n\n{args.iters} iterations per run; {machine}.\n"
    with atomic_write(os.path.join(args.out, "table.md"), "w") as f:
        f.write(text)
    with atomic_write(os.path.join(args.out, "table.json"), "w") as f:
        json.dump({"iters": args.iters, "machine": machine, "rows": rows}, f, indent=1)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
