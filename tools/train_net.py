#!/usr/bin/env python
"""Train a Caffe net from a solver, as `caffe train -solver S [-weights W]` does.

    python tools/train_net.py solver.yaml|solver.prototxt [--weights W.caffemodel|.pt]
        [--resume SNAPSHOT.solverstate|.pt] [--gpu N] [--amp] [--channels-last] [--tf32]
        [--log-dir DIR]

Relative paths inside the solver and net (net, data sources, mean files,
snapshot_prefix) resolve against the working directory, as in Caffe. Writes
Caffe's display lines to stdout, a JSON-lines log and a PNG of the losses (and
test outputs) to --log-dir (default: the folder of snapshot_prefix), a progress
bar with ETA to stderr, and snapshots <prefix>_iter_<N>.caffemodel/.solverstate/.pt.
"""
import argparse
import json
import os
import sys
import time

import torch

from ssdh_port.caffe.io import CaffeFileError
from ssdh_port.caffe.layers import LayerError
from ssdh_port.caffe.proto import caffe_pb2 as pb
from ssdh_port.caffe.solver import Solver, SolverError, read_solver
from ssdh_port.data.db import LMDBError
from ssdh_port.plotting import pyplot, save_png


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("solver")
    start = parser.add_mutually_exclusive_group()
    start.add_argument("--weights", help="initial weights, copied by layer name (fine-tuning)")
    start.add_argument("--resume", help="snapshot to resume from (.solverstate or .pt)")
    parser.add_argument("--gpu", type=int, default=None, help="CUDA device (default: solver_mode)")
    parser.add_argument("--amp", action="store_true",
                        help="bf16 autocast of the training passes (off by default, for fidelity)")
    parser.add_argument("--channels-last", action="store_true",
                        help="NHWC layout of images and conv weights (for GPU tensor cores)")
    parser.add_argument("--tf32", action="store_true",
                        help="TF32 float32 convolutions on the GPU (default: full float32, as Caffe)")
    parser.add_argument("--log-dir", default=None)
    return parser.parse_args(argv)


def pick_device(args, param):
    if args.gpu is not None:
        if not torch.cuda.is_available():
            raise SolverError(f"--gpu {args.gpu} given but CUDA is not available")
        return torch.device(f"cuda:{args.gpu}")
    if param.solver_mode == pb.SolverParameter.GPU and torch.cuda.is_available():
        return torch.device(f"cuda:{param.device_id}")
    return torch.device("cpu")


class Progress:
    """A one-line progress bar with ETA on stderr."""

    def __init__(self, total, start_iter):
        self.total, self.start_iter, self.start = total, start_iter, time.time()

    def __call__(self, done, total):
        elapsed = time.time() - self.start
        rate = (done - self.start_iter) / elapsed if elapsed > 0 else 0.0
        eta = (total - done) / rate if rate > 0 else float("nan")
        width = 30
        filled = int(width * done / max(total, 1))
        print(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} iters, "
              f"{rate:.1f} it/s, ETA {eta:.0f}s ", end="\n" if done >= total else "",
              file=sys.stderr, flush=True)


def plot_log(records, tests, path):
    plt = pyplot()
    fig, axes = plt.subplots(1, 2 if tests else 1, figsize=(11 if tests else 6, 4), squeeze=False)
    ax = axes[0][0]
    iters = [r["iter"] for r in records]
    ax.plot(iters, [r["smoothed_loss"] for r in records], label="total (smoothed)", lw=2)
    for name in records[0]["outputs"] if records else []:
        ax.plot(iters, [r["outputs"][name] for r in records], label=name, lw=1)
    ax.set_xlabel("iteration")
    ax.set_title("training")
    ax.legend(fontsize=7)
    if tests:
        ax = axes[0][1]
        for name in tests[0]["outputs"]:
            values = [t["outputs"][name] for t in tests]
            if all(isinstance(v, float) for v in values):
                ax.plot([t["iter"] for t in tests], values, marker="o", label=name)
        ax.set_xlabel("iteration")
        ax.set_title("test net outputs")
        ax.legend(fontsize=7)
    save_png(fig, path, dpi=110)


def main(argv=None):
    args = parse_args(argv)
    try:
        param = read_solver(args.solver)
        device = pick_device(args, param)
        log_dir = args.log_dir or os.path.dirname(param.snapshot_prefix) or "."
        os.makedirs(log_dir, exist_ok=True)
        log_path = os.path.join(log_dir, "train_log.jsonl")
        records, tests = [], []
        log_file = open(log_path + ".tmp", "w")

        def on_iteration(record):
            # The machine-readable log follows the display lines: every `display` iterations.
            if param.display and record["iter"] % param.display:
                return
            records.append(record)
            log_file.write(json.dumps({"kind": "train", **record}) + "\n")

        def on_test(record):
            tests.append(record)
            log_file.write(json.dumps({"kind": "test", **record}) + "\n")

        solver = Solver(param, device=device, log=lambda line: print(line, flush=True),
                        on_iteration=on_iteration, on_test=on_test, amp=args.amp,
                        channels_last=args.channels_last, tf32=args.tf32)
        print(f"Solver: {solver.updater.kind}, lr_policy {solver.rate.policy}, device {device}, "
              f"{len(solver.params)} learnable blobs, max_iter {param.max_iter}", flush=True)
        if args.weights:
            report = solver.net.copy_from(args.weights)
            print(f"Initialised from {args.weights}: loaded {report['loaded']}; "
                  f"left to fillers {report['not_in_weights']}; unused {report['unused']}",
                  flush=True)
        if args.resume:
            solver.restore(args.resume)
            print(f"Resumed from {args.resume} at iteration {solver.iter}", flush=True)
        solver.solve(progress=Progress(param.max_iter, solver.iter))
        log_file.close()
        os.replace(log_path + ".tmp", log_path)
        if records:
            plot_log(records, tests, os.path.join(log_dir, "train_loss.png"))
        print(f"log: {log_path}; plot: {os.path.join(log_dir, 'train_loss.png')}")
    except (SolverError, CaffeFileError, LayerError, LMDBError) as err:
        print(f"train_net: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
