#!/usr/bin/env python
"""LSH, ITQ and CCA-ITQ (and l2) on the pooled features of a trained FastNet-SSDH
(tools/train_cifar10.py), beside its SSDH codes: the paper's ordering checked at
this accuracy.

    python experiments/cifar10_fast_baselines.py --run results/cifar10_fast/seed0 [--bits 48]

Writes <run>/baselines/table.md and table.json, the SSDH row (the run's report)
first.
"""
import argparse
import os
import sys

from ssdh_port import cli
from ssdh_port.pipeline import read_table, write_table
from ssdh_port.pipeline.fast_cifar import feature_baselines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="the folder of a tools/train_cifar10.py run")
    parser.add_argument("--bits", type=int, default=None, help="code length of the baselines (default: the run's)")
    args = parser.parse_args(argv)
    reports = read_table(os.path.join(args.run, "report.json")) + feature_baselines(
        os.path.join(args.run, "model.pt"), args.bits)
    print(write_table(reports, os.path.join(args.run, "baselines"), title="CIFAR-10: SSDH codes and hash "
                      "functions of the same network's features",
                      notes="10,000 test queries against the 50,000 training images; the baselines are fitted "
                      "on the training images' pooled features (the latent layer's input)."))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
