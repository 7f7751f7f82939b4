#!/usr/bin/env python
"""The main job: SSDH end to end on MNIST (shipped in data/mnist), on the CPU.

    python tools/demo.py [--bits 48] [--iterations 5000] [--p 2] [--out runs/demo]
        [--data runs/mnist] [--solver-set FIELD=VALUE ...] [--device cpu]

MNIST idx -> LMDBs; LeNet-SSDH (prototxt/lenet_ssdh, code length --bits) trained
with E1 + E2 + E3 by Caffe's solver; the 10,000 test images (queries) and the
60,000 training images (database) encoded into code files; the original
protocol (mAP@1000 and over the whole ranking, P@k, P within radius 2); a report
(report.md, report.json) with the classification accuracy, P@k / PR plots and a
picture of retrieval results. It prints where everything went.
"""
import argparse
import sys

from ssdh_port import cli
from ssdh_port.pipeline import mnist_ssdh, solver_overrides


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bits", type=int, default=48)
    cli.add_iterations(parser, 5000, help="training iterations")
    parser.add_argument("--p", type=int, default=2, choices=(1, 2), help="exponent of E2 and E3")
    parser.add_argument("--out", default="runs/demo", help="folder of the run")
    parser.add_argument("--data", default="runs/mnist", help="where the MNIST LMDBs go")
    cli.solver_set_argument(parser)
    cli.add_device(parser, default=None)
    args = parser.parse_args(argv)
    result = mnist_ssdh(args.out, data_dir=args.data, bits=args.bits, iterations=args.iterations, p=args.p,
                        solver_fields=solver_overrides(args.solver_set), device=args.device)
    r = result.report
    print(f"{r.method}: accuracy {r.classification_accuracy:.4f}, mAP@{r.topk} {r.map_at_topk:.4f}, "
          f"mAP (whole ranking) {r.map_whole_ranking:.4f}, P@1000 {r.precision_at_1000:.4f}, "
          f"P(r<={r.radius}) {r.precision_within_radius:.4f}; {r.seconds} s")
    for key, value in r.extra["files"].items():
        print(f"{key}: {value}")
    print(f"report: {args.out}/report.md")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
