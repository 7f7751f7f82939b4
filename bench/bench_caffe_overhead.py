#!/usr/bin/env python
"""What the Caffe path costs: one training step of a recipe's net through CaffeNet +
Data layer + Caffe's solver, against the same network written by hand as a plain
nn.Module (bench/plain_nets.py; ssdh_port.models.SSDHLoss for the objective) with
torch.optim.SGD on batches already transformed in memory, in the same run. The
same update rule: momentum, weight decay and every blob's lr_mult / decay_mult
taken from the prototxt, the solver's learning rate set before each step.

    python bench/bench_caffe_overhead.py [--net lenet_ssdh cifar10_quick_ssdh alexnet_ssdh48]
        [--batch N] [--iters N] [--warmup N] [--threads 2] [--rounds 3] [--compile] [--profile N]
        [--json out.json]

Nets: lenet_ssdh (MNIST, batch 64), cifar10_quick_ssdh (random 32 x 32 images with a
mean file and mirroring, batch 100), alexnet_ssdh48 (random 256 x 256 images, 227
crops, mirroring, mean file; batch 8 by default).

Prints ms per step of each and the ratio (Caffe path / plain); the target of the
speed work is <= 1.10. The plain step runs twice: with torch.optim.SGD's default
(a per-tensor loop on the CPU) and with foreach=True (fused, as the Caffe path's
update is). --profile N lists each path's top N ops (torch.profiler).
"""
import argparse
import os
import sys
import tempfile

import numpy as np
import torch

from bench_data import make_db, recipe_solver
from plain_nets import PLAIN
from ssdh_port.caffe import io as caffe_io
from ssdh_port.allocator import keep_freed_memory
from ssdh_port.fileio import write_json
from ssdh_port.caffe.solver import Solver
from ssdh_port.data import mnist
from ssdh_port.data.datasets import write_array_db
from ssdh_port.data.db import open_db
from ssdh_port.device import cpu_name
from ssdh_port.models.ssdh import SSDHLoss
from timer import time_calls

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_BATCH = {"lenet_ssdh": 64, "cifar10_quick_ssdh": 100, "alexnet_ssdh48": 8}
DEFAULT_ITERS = {"lenet_ssdh": 200, "cifar10_quick_ssdh": 100, "alexnet_ssdh48": 10}


def make_data(net, folder, count, rng):
    """(database, mean file or None, plain's float images N x C x H x W, labels)."""
    db, mean_file = os.path.join(folder, f"{net}_db"), None
    if net == "lenet_ssdh":
        images, labels = mnist.load_split("train")
        images, labels = images[:count, None], labels[:count]
        write_array_db(db, images, labels)
        return db, None, torch.from_numpy(images).float() * 0.00390625, torch.from_numpy(labels).long()
    if net == "cifar10_quick_ssdh":
        images = rng.integers(0, 256, (count, 3, 32, 32), dtype=np.uint8)
        labels = (np.arange(count) % 10).astype(np.int64)
        write_array_db(db, images, labels)
        mean = images.mean(0, keepdims=True).astype(np.float32)
        plain = torch.from_numpy(images.astype(np.float32) - mean)
    else:
        make_db(db, count, encoded=False, rng=rng)
        images = np.empty((count, 3, 256, 256), np.uint8)
        open_db(db).read_batch(range(count), images)
        mean = np.full((1, 3, 256, 256), 110.0, np.float32)
        labels = (np.arange(count) % 10).astype(np.int64)
        plain = torch.from_numpy(images[:, :, 14:241, 14:241].astype(np.float32) - 110.0)
    mean_file = os.path.join(folder, f"{net}_mean.binaryproto")
    caffe_io.write_blobproto(mean, mean_file)
    return db, mean_file, plain, torch.from_numpy(labels)


def plain_step(net, solver, images, labels, batch, foreach=None):
    """The plain module's step; its parameters get the Caffe net's multipliers in order.
    foreach: torch.optim.SGD's (None: its default, the per-tensor loop on the CPU)."""
    model = PLAIN[net]()
    params = list(model.parameters())
    caffe_params = solver.params
    shapes = [tuple(p.shape) for p in params], [tuple(lp.tensor.shape) for lp in caffe_params]
    if shapes[0] != shapes[1]:
        raise SystemExit(f"bench_caffe_overhead: the plain {net} is not the prototxt's net: {shapes}")
    param = solver.param
    groups = [{"params": [p], "lr_mult": lp.lr_mult, "weight_decay": param.weight_decay * lp.decay_mult}
              for p, lp in zip(params, caffe_params)]
    # Caffe's SGD: h = m h + lr (g + wd w); w -= h. torch's: b = m b + (g + wd w); w -= lr b:
    # the same while lr is constant within a step (the rate is set before each step).
    optimizer = torch.optim.SGD(groups, lr=param.base_lr, momentum=param.momentum, foreach=foreach)
    objective = SSDHLoss()
    state = {"it": 0, "cursor": 0}

    def step():
        start = state["cursor"]
        x, y = images[start:start + batch], labels[start:start + batch]
        state["cursor"] = (start + batch) % (len(images) - batch + 1)
        rate = solver.rate(state["it"])
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
    """Mean seconds of a step over `iters` steps after `warmup`."""
    return time_calls(step, rounds=1, number=iters, warmup=warmup).mean


def bench_net(net, args, folder):
    batch = args.batch or DEFAULT_BATCH[net]
    iters = args.iters or DEFAULT_ITERS[net]
    warmup = args.warmup if args.warmup is not None else max(2, iters // 10)
    count = max(8 * batch, 512 if net != "alexnet_ssdh48" else 64)
    db, mean_file, images, labels = make_data(net, folder, count, np.random.default_rng(0))
    param = recipe_solver(os.path.join(ROOT, "prototxt", net), db, batch, mean_file)
    paths = {"caffe": Solver(param, log=lambda line: None)}
    if args.compile:
        paths["caffe_compiled"] = Solver(param, log=lambda line: None, compile=True)
    steps = {name: (lambda s=s: s.step(1)) for name, s in paths.items()}
    steps["plain"] = plain_step(net, paths["caffe"], images, labels, batch)
    steps["plain_foreach"] = plain_step(net, paths["caffe"], images, labels, batch, foreach=True)
    # Interleave the measurements, so that a slower phase of the machine hits all;
    # each path's best round counts.
    seconds = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            seconds[name].append(timed(step, warmup, iters))
    ms = {name: 1000 * min(s) for name, s in seconds.items()}
    result = {"net": net, "batch": batch, "iters": iters, "threads": torch.get_num_threads(),
              "caffe_ms_per_step": round(ms["caffe"], 2), "plain_ms_per_step": round(ms["plain"], 2),
              "ratio": round(ms["caffe"] / ms["plain"], 3),
              "plain_foreach_ms_per_step": round(ms["plain_foreach"], 2),
              "ratio_vs_foreach": round(ms["caffe"] / ms["plain_foreach"], 3)}
    line = (f"{net}, batch {batch}, {torch.get_num_threads()} threads: Caffe path {ms['caffe']:.2f} ms/step, "
            f"plain PyTorch {ms['plain']:.2f} ms/step (ratio {ms['caffe'] / ms['plain']:.2f}x), "
            f"plain with foreach SGD {ms['plain_foreach']:.2f} ms/step ({ms['caffe'] / ms['plain_foreach']:.2f}x)")
    if args.compile:
        result.update(compiled_ms_per_step=round(ms["caffe_compiled"], 2),
                      compiled_ratio=round(ms["caffe_compiled"] / ms["plain"], 3))
        line += f"; compiled {ms['caffe_compiled']:.2f} ms/step ({ms['caffe_compiled'] / ms['plain']:.2f}x)"
    print(line, flush=True)
    if args.profile:
        result["profile"] = {name: top_ops(step, args.profile) for name, step in steps.items()}
        for name, rows in result["profile"].items():
            print(f"  {name}: top {args.profile} ops by self CPU time (ms per step, calls per step)")
            for row in rows:
                print(f"    {row['op']:44s} {row['ms_per_step']:8.3f} ms  {row['calls_per_step']:6.1f}")
    return result


def top_ops(step, count, steps=20):
    """The ops that take the most self CPU time over `steps` steps (torch.profiler)."""
    from torch.profiler import profile
    with profile() as prof:
        for _ in range(steps):
            step()
    events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:count]
    return [{"op": e.key, "ms_per_step": round(e.self_cpu_time_total / steps / 1000, 3),
             "calls_per_step": round(e.count / steps, 1)} for e in events]


def main():
    # What the training commands set at their entry point (ssdh_port.cli.run), for both paths timed here.
    keep_freed_memory()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--net", nargs="+", default=list(DEFAULT_BATCH), choices=list(DEFAULT_BATCH))
    parser.add_argument("--batch", type=int, default=0, help="batch size (0: the net's default)")
    parser.add_argument("--iters", type=int, default=0, help="timed steps (0: the net's default)")
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of every path")
    parser.add_argument("--compile", action="store_true", help="also time the Caffe path under torch.compile")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="also list each path's top N ops by self CPU time (torch.profiler)")
    parser.add_argument("--json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as folder:
        results = [bench_net(net, args, folder) for net in args.net]
    if args.json:
        write_json(args.json, {"cpu": cpu_name(), "nets": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
