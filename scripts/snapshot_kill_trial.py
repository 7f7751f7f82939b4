#!/usr/bin/env python
"""Robustness trial: SIGKILL a training run while it writes snapshot sets, N
times, and count the latest records that name an incomplete set.

    python scripts/snapshot_kill_trial.py [--trials 10] [--work /tmp/kill_trial]

Each trial trains LeNet-SSDH-12 on 200 MNIST images with a snapshot at every
iteration, kills it (SIGKILL) after a random delay, then checks the newest
<prefix>_latest record: every file it names must exist and load (the
.caffemodel, the .solverstate, the .pt). Prints one line per trial and the count.
"""
import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def prepare(work):
    from ssdh_port.data import mnist
    from ssdh_port.data.datasets import write_array_db
    from ssdh_port.pipeline import prepare_recipe, recipe_dir

    images, labels = mnist.load_split("test")
    db = os.path.join(work, "db")
    if not os.path.isdir(db):
        write_array_db(db, images[:200, None], labels[:200])
    return prepare_recipe(recipe_dir("lenet_ssdh"), os.path.join(work, "run"), bits=12,
                          sources={"TRAIN": db, "TEST": db}, batch_size={"TRAIN": 16, "TEST": 20},
                          max_iter=100000, snapshot=1, test_interval=0, display=0)


def complete(record_path):
    """(complete?, why) of the set a _latest record names."""
    import torch

    from ssdh_port.caffe import io as caffe_io
    from ssdh_port.caffe.net import load_weights
    from ssdh_port.caffe.proto import caffe_pb2 as pb

    if not os.path.exists(record_path):
        return True, "no record yet (killed before the first set)"
    files = json.load(open(record_path))["files"]
    try:
        for path in files:
            if path.endswith(".caffemodel"):
                load_weights(path)
            elif path.endswith(".solverstate"):
                caffe_io.read_binary_proto(path, pb.SolverState(), "solverstate")
            else:
                torch.load(path, weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure means an incomplete set
        return False, f"{path}: {err}"
    return True, f"iteration {json.load(open(record_path))['iter']}, {len(files)} files load"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--work", default="/tmp/kill_trial")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    random.seed(args.seed)
    recipe = prepare(args.work)
    bad = 0
    record = recipe.snapshot_prefix + "_latest"
    for trial in range(args.trials):
        resume = ["--resume", "latest"] if os.path.exists(record) else []
        before = os.path.getmtime(record) if os.path.exists(record) else 0.0
        run = subprocess.Popen([sys.executable, os.path.join(ROOT, "tools", "train_net.py"), recipe.solver, *resume],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env={**os.environ, "SSDH_PROGRESS": "0"})
        # Once this run writes snapshot sets (one per iteration), kill it at a random moment.
        deadline = time.time() + 120
        while time.time() < deadline and run.poll() is None and not (
                os.path.exists(record) and os.path.getmtime(record) > before):
            time.sleep(0.05)
        time.sleep(random.uniform(0.0, 1.5))
        run.send_signal(signal.SIGKILL)
        run.wait()
        ok, why = complete(recipe.snapshot_prefix + "_latest")
        bad += not ok
        hidden = [f for f in os.listdir(os.path.dirname(recipe.snapshot_prefix)) if f.startswith(".")]
        print(f"trial {trial + 1}: {'complete' if ok else 'INCOMPLETE'} ({why}); temporaries left: {len(hidden)}",
              flush=True)
    print(f"{bad} incomplete latest sets in {args.trials} kills")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
