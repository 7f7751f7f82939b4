#!/usr/bin/env python
"""What the Caffe path costs: one training step of LeNet-SSDH-48 through CaffeNet +
Data layer + Caffe's solver, against the same network written as a plain
nn.Module (ssdh_port.models.LeNetSSDH + SSDHLoss) with torch.optim.SGD on batches
already in memory, in the same run. The same update rule: momentum 0.9, weight
decay 5e-4, biases at twice the rate (the recipe's lr_mult 2), the recipe's 'inv'
learning rate.

    python bench/bench_caffe_overhead.py [--batch 64] [--iters 200] [--warmup 20] [--threads 2]
        [--json out.json]

Prints ms per step of each and the ratio (Caffe path / plain); the target of the
speed work is <= 1.10.
"""
import argparse
import json
import os
import sys
import tempfile
import time

import torch

from ssdh_port.caffe import io as caffe_io
from ssdh_port.caffe.solver import Solver, read_solver
from ssdh_port.data import mnist
from ssdh_port.data.datasets import write_array_db
from ssdh_port.models.ssdh import LeNetSSDH, SSDHLoss

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(ROOT, "prototxt", "lenet_ssdh")


def caffe_solver(db, batch):
    net = caffe_io.read_net_prototxt(os.path.join(RECIPE, "train_val.prototxt"))
    for layer in net.layer:
        if layer.type == "Data":
            layer.data_param.source = db
            layer.data_param.batch_size = batch
    param = read_solver(os.path.join(RECIPE, "solver.yaml"))
    param.ClearField("net")
    param.net_param.CopyFrom(net)
    del param.test_iter[:]
    param.test_interval = param.display = param.snapshot = 0
    return Solver(param, log=lambda line: None), param


def plain_step(param, images, labels, batch):
    model = LeNetSSDH(48)
    objective = SSDHLoss()
    biases = [p for n, p in model.named_parameters() if n.endswith("bias")]
    weights = [p for n, p in model.named_parameters() if not n.endswith("bias")]
    # Caffe's SGD: h = m h + lr (g + wd w); w -= h. torch's: b = m b + (g + wd w); w -= lr b:
    # the same while lr is constant within a step (the 'inv' rate is set before each step).
    optimizer = torch.optim.SGD([{"params": weights, "lr_mult": 1.0, "weight_decay": param.weight_decay},
                                 {"params": biases, "lr_mult": 2.0, "weight_decay": 0.0}],
                                lr=param.base_lr, momentum=param.momentum)
    data = images.float() * 0.00390625
    state = {"it": 0, "cursor": 0}

    def step():
        start = state["cursor"]
        x, y = data[start:start + batch], labels[start:start + batch]
        state["cursor"] = (start + batch) % (len(data) - batch)
        rate = param.base_lr * (1 + param.gamma * state["it"]) ** (-param.power)
        for group in optimizer.param_groups:
            group["lr"] = rate * group["lr_mult"]
        optimizer.zero_grad(set_to_none=True)
        latent, scores = model(x)
        loss, _ = objective(latent, scores, y)
        loss.backward()
        optimizer.step()
        state["it"] += 1
    return step


def timed(step, warmup, iters):
    for _ in range(warmup):
        step()
    started = time.perf_counter()
    for _ in range(iters):
        step()
    return (time.perf_counter() - started) / iters


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--iters", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    images, labels = mnist.load_split("train")
    images, labels = images[:5000], labels[:5000]
    with tempfile.TemporaryDirectory() as folder:
        write_array_db(os.path.join(folder, "db"), images[:, None], labels)
        solver, param = caffe_solver(os.path.join(folder, "db"), args.batch)
        plain = plain_step(param, torch.from_numpy(images[:, None]), torch.from_numpy(labels).long(), args.batch)
        # Interleave the two measurements twice, so that a slower phase of the machine hits both.
        caffe_s, plain_s = [], []
        for _ in range(2):
            caffe_s.append(timed(lambda: solver.step(1), args.warmup, args.iters))
            plain_s.append(timed(plain, args.warmup, args.iters))
    caffe_ms, plain_ms = 1000 * min(caffe_s), 1000 * min(plain_s)
    result = {"net": "lenet_ssdh48", "batch": args.batch, "threads": torch.get_num_threads(),
              "caffe_ms_per_step": round(caffe_ms, 2), "plain_ms_per_step": round(plain_ms, 2),
              "ratio": round(caffe_ms / plain_ms, 3)}
    print(f"LeNet-SSDH-48, batch {args.batch}, {torch.get_num_threads()} threads: Caffe path {caffe_ms:.2f} ms/step, "
          f"plain PyTorch {plain_ms:.2f} ms/step, ratio {caffe_ms / plain_ms:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
