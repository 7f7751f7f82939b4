#!/usr/bin/env python
"""End-to-end SSDH on MNIST (the data shipped in data/mnist), CPU-sized.

Trains LeNet-SSDH (LeNet + a sigmoid latent layer of K units) with the three
SSDH terms (softmax E1, forcing-binary E2, 50%-fire-rate E3), encodes the test
and training images to K-bit codes, and evaluates Hamming retrieval with the
original protocol: test images query the training set, mAP@k, precision@k and
precision within Hamming radius 2. Writes a JSON report under --out.

    python tools/demo.py [--bits 48] [--iters 2000] [--queries 1000] [--out runs/demo]
"""
import argparse
import json
import os
import sys
import time

import numpy as np
import torch

from ssdh_port import ops
from ssdh_port.data import mnist
from ssdh_port.hashing import evaluate
from ssdh_port.models import LeNetSSDH, SSDHLoss


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bits", type=int, default=48, help="code length K")
    parser.add_argument("--iters", type=int, default=2000, help="training iterations")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--p", type=int, default=2, choices=(1, 2), help="loss exponent")
    parser.add_argument("--queries", type=int, default=1000,
                        help="number of test images used as queries (0: all 10,000)")
    parser.add_argument("--topk", type=int, default=1000, help="mAP cut-off k")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/demo", help="folder for the report")
    return parser.parse_args(argv)


def to_input(images):
    # Caffe's LeNet: raw bytes times scale 0.00390625 (1/256).
    return torch.from_numpy(images).float().unsqueeze(1) * 0.00390625


def train(model, objective, images, labels, args):
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4)
    generator = torch.Generator().manual_seed(args.seed)
    start = time.time()
    for it in range(1, args.iters + 1):
        idx = torch.randint(0, len(images), (args.batch,), generator=generator).numpy()
        latent, scores = model(to_input(images[idx]))
        loss, terms = objective(latent, scores, torch.from_numpy(labels[idx]).long())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if it % 100 == 0 or it == args.iters:
            parts = ", ".join(f"{name} {value.item():.4f}" for name, value in terms.items())
            print(f"iter {it}/{args.iters}: loss {loss.item():.4f} ({parts}), "
                  f"{time.time() - start:.1f}s", flush=True)


@torch.no_grad()
def encode(model, images, batch=1000):
    """(packed codes, latent activations, predicted classes)."""
    model.eval()
    codes, latents, predictions = [], [], []
    for start in range(0, len(images), batch):
        latent, scores = model(to_input(images[start:start + batch]))
        codes.append(ops.pack_bits(latent))
        latents.append(latent)
        predictions.append(scores.argmax(dim=1))
    return torch.cat(codes), torch.cat(latents), torch.cat(predictions)


def main(argv=None):
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    train_images, train_labels = mnist.load_split("train")
    test_images, test_labels = mnist.load_split("test")
    print(f"MNIST: {len(train_images)} training and {len(test_images)} test images")

    model = LeNetSSDH(bits=args.bits)
    objective = SSDHLoss(alpha=1.0, beta=1.0, gamma=1.0, p=args.p)
    train(model, objective, train_images, train_labels, args)

    db_codes, _, _ = encode(model, train_images)
    test_codes, test_latent, predictions = encode(model, test_images)
    accuracy = float((predictions.numpy() == test_labels).mean())
    bit_rate = float(test_latent.gt(0.5).float().mean())
    queries = len(test_images) if args.queries == 0 else args.queries
    start = time.time()
    result = evaluate(test_codes[:queries], db_codes, test_labels[:queries], train_labels,
                      topk=args.topk, radius=2)
    report = {
        "bits": args.bits, "iters": args.iters, "p": args.p, "queries": queries,
        "database": len(train_images), "topk": args.topk,
        "map": result["map"],
        "precision_at": {str(k): float(result["precision_at_k"][k - 1])
                         for k in (1, 10, 100, args.topk) if k <= args.topk},
        "precision_within_radius_2": result["precision_within_radius"],
        "classification_accuracy": accuracy,
        "fraction_of_bits_on": bit_rate,
        "evaluation_seconds": time.time() - start,
    }
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "report.json")
    with open(path + ".tmp", "w") as f:
        json.dump(report, f, indent=1)
    os.replace(path + ".tmp", path)
    print(f"classification accuracy: {accuracy:.4f}")
    print(f"mAP@{args.topk} ({queries} test queries vs {len(train_images)} training images, "
          f"{args.bits} bits): {result['map']:.4f}")
    print(f"precision@{args.topk}: {report['precision_at'][str(args.topk)]:.4f}, "
          f"precision within Hamming radius 2: {result['precision_within_radius']:.4f}")
    print(f"report: {path}")
    return 0


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    sys.exit(main())
