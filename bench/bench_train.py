#!/usr/bin/env python
"""Training throughput of AlexNet-SSDH-48 (prototxt/alexnet_ssdh48): images/s of
the whole solver step at 227 x 227 — uint8 batch read from a Datum LMDB of
256 x 256 images (read ahead on a thread), crop/mirror/mean on the device,
forward, backward, Caffe's SGD update — in each precision mode, measured in the
same run:

  fp32     full float32, as Caffe computes (the default of tools/train_net.py)
  tf32     float32 weights, TF32 tensor-core convolutions (--tf32)
  bf16-cl  bf16 autocast + channels_last (--amp --channels-last)

Also the data path alone (the Data layer's forward), so that a slow reader shows.
The original's reference: 50,000 iterations of batch 32 in 2-3 hours on a
Titan X, about 150-220 images/s.

    python bench/bench_train.py [--device cuda] [--batch 256] [--iters 20] [--warmup 5]
        [--images 1024] [--modes fp32,tf32,bf16-cl] [--json out.json]
"""
import argparse
import os
import sys
import tempfile

import numpy as np
import torch

from bench_data import make_db, recipe_solver
from ssdh_port.caffe import io as caffe_io
from ssdh_port.allocator import keep_freed_memory
from ssdh_port.fileio import write_json
from ssdh_port.caffe.solver import Solver
from ssdh_port.device import describe
from timer import stopwatch, time_calls

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(ROOT, "prototxt", "alexnet_ssdh48")
MODES = {
    "fp32": {},
    "tf32": {"tf32": True},
    "bf16-cl": {"amp": True, "channels_last": True},
}
ORIGINAL_IMAGES_PER_S = (50_000 * 32 / (3 * 3600), 50_000 * 32 / (2 * 3600))


def time_steps(solver, warmup, iters):
    """Seconds of `iters` solver steps after `warmup` steps."""
    solver.step(warmup)
    with stopwatch(solver.device) as elapsed:
        solver.step(iters)
    return elapsed.seconds


def time_data(solver, iters):
    """Seconds of `iters` batches of the net's Data layer alone, after one."""
    data = next(m for m in solver.net.layers if type(m).__name__ == "Data")
    return time_calls(data, rounds=1, number=iters, warmup=1, device=solver.device).mean * iters


def main():
    # What the training commands set at their entry point (ssdh_port.cli.run), for both paths timed here.
    keep_freed_memory()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--images", type=int, default=1024, help="records in the benchmark LMDB")
    parser.add_argument("--modes", default="fp32,tf32,bf16-cl")
    parser.add_argument("--json")
    args = parser.parse_args()
    modes = args.modes.split(",")
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        parser.error(f"unknown modes {unknown} (known: {', '.join(MODES)})")
    device = torch.device(args.device)
    name = describe(device)
    results = {"device": name, "batch": args.batch, "iters": args.iters, "modes": {}}
    with tempfile.TemporaryDirectory() as folder:
        rng = np.random.default_rng(0)
        make_db(os.path.join(folder, "lmdb"), args.images, encoded=False, rng=rng)
        caffe_io.write_blobproto(np.full((1, 3, 256, 256), 110.0, np.float32),
                                 os.path.join(folder, "mean.binaryproto"))
        param = recipe_solver(RECIPE, os.path.join(folder, "lmdb"), args.batch,
                              os.path.join(folder, "mean.binaryproto"))
        for mode in modes:
            solver = Solver(param, device=device, log=lambda line: None, **MODES[mode])
            seconds = time_steps(solver, args.warmup, args.iters)
            rate = args.batch * args.iters / seconds
            results["modes"][mode] = {"seconds_per_iter": seconds / args.iters, "images_per_s": rate}
            print(f"{mode:8s} {seconds / args.iters * 1e3:8.1f} ms/iter  {rate:9.0f} images/s  "
                  f"({rate / ORIGINAL_IMAGES_PER_S[1]:.1f}-{rate / ORIGINAL_IMAGES_PER_S[0]:.1f}x the "
                  "original on a Titan X)", flush=True)
            if mode == modes[0]:
                data_s = time_data(solver, args.iters)
                results["data_images_per_s"] = args.batch * args.iters / data_s
                print(f"data path alone (the Data layer, on {device.type}): "
                      f"{results['data_images_per_s']:9.0f} images/s", flush=True)
            for net in [solver.net] + solver.test_nets:
                net.stop_prefetch()
            del solver
    if "fp32" in results["modes"]:
        base = results["modes"]["fp32"]["images_per_s"]
        for mode, row in results["modes"].items():
            row["speedup_vs_fp32"] = row["images_per_s"] / base
        print("vs fp32: " + ", ".join(f"{m} {r['speedup_vs_fp32']:.2f}x" for m, r in results["modes"].items()))
    if args.json:
        write_json(args.json, results)


if __name__ == "__main__":
    sys.exit(main())
