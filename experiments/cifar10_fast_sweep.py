#!/usr/bin/env python
"""FastNet-SSDH at one (shorter) recipe over code lengths and the {alpha,beta,gamma}
ablation: the paper's orderings checked again at this accuracy.

    python experiments/cifar10_fast_sweep.py [--widths 64,256,256] [--epochs 8] [--tta 1]
        [--bits 12,32,48,64] [--ablation 1:0:0,1:1:0] [--out results/cifar10_fast/sweep]

Each variant is one tools/train_cifar10.py run in <out>/<name>/ (skipped when its
report.json exists, so an interrupted sweep continues); <out>/table.md and
table.json hold every row. Any other FastCifarConfig field is a flag.
"""
import argparse
import dataclasses
import os
import sys

from ssdh_port import cli
from ssdh_port.errors import SSDHError
from ssdh_port.pipeline import read_table, write_table
from ssdh_port.pipeline.fast_cifar import FastCifarConfig, train_fast_cifar
from ssdh_port.pipeline.report import write_run


def variants(config, bits, ablation):
    for k in bits:
        yield f"bits{k}", dataclasses.replace(config, bits=k)
    for weights in ablation:
        alpha, beta, gamma = weights
        yield f"loss{alpha:g}-{beta:g}-{gamma:g}", dataclasses.replace(config, alpha=alpha, beta=beta, gamma=gamma)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_dataclass_arguments(parser, FastCifarConfig)
    parser.add_argument("--bits-list", dest="bits_list", default="12,32,48,64")
    parser.add_argument("--ablation", default="1:0:0,1:1:0", help="alpha:beta:gamma,... (48 bits)")
    parser.set_defaults(widths="64,256,256", epochs=8.0, tta=1, out_dir="results/cifar10_fast/sweep")
    args = vars(parser.parse_args(argv))
    bits = [int(b) for b in args.pop("bits_list").split(",") if b]
    ablation = [tuple(float(w) for w in item.split(":")) for item in args.pop("ablation").split(",") if item]
    if any(len(w) != 3 for w in ablation):
        raise SSDHError("--ablation: expected alpha:beta:gamma triples like 1:0:0,1:1:0")
    base = FastCifarConfig(**args)
    rows = []
    for name, config in variants(base, bits, ablation):
        folder = os.path.join(base.out_dir, name)
        report = os.path.join(folder, "report.json")
        if not os.path.exists(report):
            result = train_fast_cifar(dataclasses.replace(config, out_dir=folder))
            write_run(result.report, folder, title=f"FastNet-SSDH sweep: {name}", seconds=result.seconds)
        for row in read_table(report):
            row.method = f"FastNet-SSDH-{config.bits} {{{config.alpha:g},{config.beta:g},{config.gamma:g}}}"
            rows.append(row)
    print(write_table(rows, base.out_dir, title="CIFAR-10 FastNet-SSDH: code lengths and loss terms",
                      notes=f"widths {base.widths}, {base.epochs:g} epochs, tta {base.tta}, seed {base.seed}; "
                      "10,000 test queries against the 50,000 training images"))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
