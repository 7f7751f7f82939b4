#!/usr/bin/env python
"""Paper Table 3 on MNIST at CPU scale: LeNet-SSDH from scratch at 12/32/48 bits
with p = 1 and p = 2, each run by the main job (ssdh_port.pipeline.mnist_ssdh),
then one table.

    python experiments/reproduce_mnist.py [--iterations 10000] [--bits 12 32 48] [--p 2 1]
        [--out results/mnist]

Writes <out>/table.md and <out>/table.json (the project's results schema) and
keeps every run's logs, plots and report under <out>/runs/.
"""
import argparse
import os
import sys

from ssdh_port import cli
from ssdh_port.pipeline import mnist_ssdh, write_table


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_iterations(parser, 10000, help="training iterations per run")
    parser.add_argument("--bits", type=int, nargs="+", default=[12, 32, 48])
    parser.add_argument("--p", type=int, nargs="+", default=[2, 1])
    parser.add_argument("--out", default="results/mnist")
    args = parser.parse_args(argv)
    reports = []
    for p in args.p:
        for bits in args.bits:
            run = os.path.join(args.out, "runs", f"lenet_ssdh{bits}_p{p}")
            report = mnist_ssdh(run, bits=bits, p=p, iterations=args.iterations).report
            report.method = f"LeNet-SSDH-{bits}, p = {p}"
            report.extra.pop("files", None)
            report.extra["command"] = (f"python tools/demo.py --bits {bits} --p {p} "
                                       f"--iterations {args.iterations} --out {run}")
            reports.append(report)
    print(write_table(reports, args.out, title="SSDH on MNIST (LeNet-SSDH from scratch)",
                      notes=f"{args.iterations} iterations per run; 10,000 test queries against "
                      "the 60,000 training images."))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
