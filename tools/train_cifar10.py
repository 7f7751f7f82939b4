#!/usr/bin/env python
"""SSDH on CIFAR-10 from scratch on the CPU: FastNet-SSDH trained with a fast-training
recipe, then the original protocol (10,000 test queries against the 50,000
training images: mAP@1000, whole-ranking mAP, P@1000, P within radius 2) and the
classification accuracy.

    python tools/train_cifar10.py [--archive cvprw15-cifar10-dataset-jpg.tar.gz] [--data runs/cifar10]
        [--bits 48] [--epochs 16] [--seed 0] [--precision bf16|fp32] [--tta 2]
        [--out-dir results/cifar10_fast] [--resume results/cifar10_fast/snapshot.pt] [--device cpu|cuda]

Several processes (`torchrun --nproc_per_node=N tools/train_cifar10.py ...`) train
one net: each rank takes batch_size images per step (the learning rate follows the
effective batch N x batch_size), the gradients are averaged, rank 0 writes
everything; batch norm statistics stay per rank (no synchronised batch norm).

Every field of ssdh_port.pipeline.fast_cifar.FastCifarConfig is a flag (the
recipe is documented there). Writes to --out-dir: train_log.jsonl (one line per
epoch, flushed), snapshot.pt (each epoch; --resume continues from it), model.pt,
report.json, table.md / table.json, retrieval_curves.png (P@k, PR) and
training.png; the wall time split into training, encoding and evaluation.
"""
import argparse
import sys

from ssdh_port import cli
from ssdh_port.pipeline.fast_cifar import FastCifarConfig, train_fast_cifar
from ssdh_port.pipeline.report import PAPER_CIFAR10_BEST_MAP, write_run


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_dataclass_arguments(parser, FastCifarConfig)
    args = vars(parser.parse_args(argv))
    config = FastCifarConfig(**args)
    result = train_fast_cifar(config)
    if result is None:
        return 0  # a rank other than 0 of `torchrun ... tools/train_cifar10.py`
    print(write_run(result.report, config.out_dir, title="CIFAR-10 SSDH from scratch on the CPU (FastNet-SSDH)",
                    notes=f"seconds: {result.seconds}; the paper's best 48-bit mAP@1000 (VGG16 with ImageNet "
                    f"weights, GPU): {100 * PAPER_CIFAR10_BEST_MAP:.2f}",
                    seconds=result.seconds, paper_best_map_at_1000=PAPER_CIFAR10_BEST_MAP))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
