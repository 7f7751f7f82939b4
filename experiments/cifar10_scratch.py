#!/usr/bin/env python
"""CIFAR-10 SSDH from scratch on a modern backbone (no ImageNet weights): a CIFAR
ResNet-18 with a K-bit latent layer trained with the SSDH objective, then
evaluated under the original protocol (the 10,000 test images query the 50,000
training images; mAP@1000 and over the whole ranking), with the classification
accuracy and the wall time.

    python experiments/cifar10_scratch.py [--archive cvprw15-cifar10-dataset-jpg.tar.gz]
        [--data runs/cifar10] [--bits 48] [--epochs 30] [--batch-size 512] [--lr 0.2]
        [--width 64] [--device cpu|cuda] [--no-amp] [--compile] [--out-dir results/cifar10_scratch]

Every field of ssdh_port.pipeline.ScratchConfig is a flag (the trainer and its
recipe are documented there). Writes <out-dir>/report.json, table.md, table.json,
train_log.jsonl, model.pt and training.png.
"""
import argparse
import sys

from ssdh_port import cli
from ssdh_port.pipeline import ScratchConfig, train_scratch
from ssdh_port.pipeline.report import PAPER_CIFAR10_BEST_MAP, write_run


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_dataclass_arguments(parser, ScratchConfig)
    parser.add_argument("--batch", dest="batch_size", type=int, help=argparse.SUPPRESS)
    args = vars(parser.parse_args(argv))
    config = ScratchConfig(**{k: v for k, v in args.items() if v is not None or k == "archive"})
    result = train_scratch(config)
    print(write_run(result.report, config.out_dir, title="CIFAR-10 SSDH from scratch",
                    notes=f"train time {result.train_seconds:.0f} s; paper's best 48-bit mAP@1000 (VGG16, "
                    f"ImageNet weights): {100 * PAPER_CIFAR10_BEST_MAP:.2f}",
                    train_seconds=result.train_seconds, wall_seconds=result.wall_seconds,
                    paper_best_map_at_1000=PAPER_CIFAR10_BEST_MAP))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
