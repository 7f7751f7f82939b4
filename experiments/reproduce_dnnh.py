#!/usr/bin/env python
"""DNNH on CIFAR-10 (caffe-dnnh's nets, weight-shared triplet streams,
divide-and-encode) at CPU scale: train prototxt/dnnh<b> with its solver_cpu.yaml,
encode the 1,000 queries and the 59,000 pool images with the author's test nets,
and evaluate with caffe-dnnh's evaluate_map (clean and compat) and the project's
precision.m protocol.

    python experiments/reproduce_dnnh.py [--bits 12 24 32 48] [--data runs/cifar10_dnnh]
        [--solver solver_cpu.yaml] [--out results/dnnh] [--ssdh-bits 12 48] [--ssdh-epochs 8]

--ssdh-bits adds SSDH rows on the same images and split (pipeline.jobs.ssdh_on_dnnh_split:
the FastNet-SSDH recipe from scratch on the 59,000 pool images), the comparison
the SSDH paper makes; with --bits given as nothing (--bits) only those run.

The data come from `python tools/prepare_dataset.py cifar10-dnnh ARCHIVE --out
runs/cifar10_dnnh`. Writes <out>/table.md and table.json; each run's log, plot,
codes and report stay under <out>/runs/dnnh<b>.
"""
import argparse
import os
import sys

from ssdh_port import cli
from ssdh_port.pipeline import read_table, write_table
from ssdh_port.pipeline.jobs import dnnh_run, ssdh_on_dnnh_split

# DNNH's CIFAR-10 mAP: the paper (Lai et al. 2015) and the caffe-dnnh author's runs (12 / 24 / 32 / 48 bits).
PAPER = {12: 0.552, 24: 0.566, 32: 0.558, 48: 0.581}
AUTHOR = {12: 0.413, 24: 0.452, 48: 0.473}
COLUMNS = (("DNNH metric", "dnnh_map", "{:.2%}"), ("DNNH metric (compat)", "dnnh_map_compat", "{:.2%}"),
           ("paper", "paper", "{:.1%}"), ("caffe-dnnh author", "author", "{:.1%}"),
           ("iterations", "iterations", "{}"))


def _family(report):
    return "SSDH" if report.method.startswith("SSDH") else "DNNH"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bits", type=int, nargs="*", default=[12, 24, 32, 48])
    parser.add_argument("--data", default="runs/cifar10_dnnh")
    parser.add_argument("--solver", default="solver_cpu.yaml", help="solver file of the recipe folder")
    parser.add_argument("--out", default="results/dnnh")
    parser.add_argument("--ssdh-bits", type=int, nargs="*", default=[])
    parser.add_argument("--ssdh-epochs", type=float, default=8.0)
    args = parser.parse_args(argv)
    previous = os.path.join(args.out, "table.json")
    rerun = {("DNNH", b) for b in args.bits} | {("SSDH", b) for b in args.ssdh_bits}
    reports = [r for r in read_table(previous) if (_family(r), r.bits) not in rerun] if os.path.isfile(previous) else []
    for bits in args.bits:
        report = dnnh_run(bits, os.path.join(args.out, "runs", f"dnnh{bits}"), data_dir=args.data,
                          solver=args.solver).report
        report.extra.update(paper=PAPER.get(bits), author=AUTHOR.get(bits),
                            command=f"python experiments/reproduce_dnnh.py --bits {bits} --solver {args.solver}")
        reports.append(report)
    for bits in args.ssdh_bits:
        report = ssdh_on_dnnh_split(bits, os.path.join(args.out, "runs", f"ssdh{bits}"), data_dir=args.data,
                                    epochs=args.ssdh_epochs).report
        report.extra.update(command=f"python experiments/reproduce_dnnh.py --bits --ssdh-bits {bits} "
                            f"--ssdh-epochs {args.ssdh_epochs:g}")
        reports.append(report)
    reports.sort(key=lambda r: (_family(r), r.bits))
    print(write_table(reports, args.out, title="DNNH on CIFAR-10 (caffe-dnnh nets, CPU scale)",
                      extra_columns=COLUMNS,
                      notes="1,000 queries (100 per class, seeded) against the 59,000 other images; the DNNH metric "
                      "is caffe-dnnh's evaluate_map over the first 10,000 ranks (compat: the original divisors)."))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
