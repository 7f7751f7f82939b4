"""Training runs that lose nothing: snapshot sets written atomically with a
latest record, exact resume (data positions and random draws included),
Caffe's signal effects, the log kept line by line."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from ssdh_port.caffe.solver import Solver, read_solver, remove_stale_temporaries
from ssdh_port.pipeline import prepare_recipe, recipe_dir
from tests.shared_data import ROOT


@pytest.fixture
def mnist_db(tmp_path):
    from ssdh_port.data import mnist
    from ssdh_port.data.datasets import write_array_db

    images, labels = mnist.load_split("test")
    write_array_db(tmp_path / "db", images[:200, None], labels[:200])
    return tmp_path / "db"


def _recipe(tmp_path, db, **fields):
    """LeNet-SSDH-12 on 200 MNIST images with a random 24 x 24 crop and mirror."""
    recipe = prepare_recipe(recipe_dir("lenet_ssdh"), tmp_path / "run", bits=12, sources={"TRAIN": db, "TEST": db},
                            batch_size={"TRAIN": 16, "TEST": 20}, test_iter=[2], test_interval=4, display=1,
                            random_seed=7, **fields)
    from ssdh_port.caffe import io as caffe_io

    net = caffe_io.read_net_prototxt(recipe.train_val)
    for layer in net.layer:
        if layer.type == "Data":
            layer.transform_param.crop_size = 24
            layer.transform_param.mirror = True
    caffe_io.write_text_proto(net, recipe.train_val)
    return recipe


def _weights(solver):
    return {lp.key: lp.tensor.detach().clone() for lp in solver.params}


def test_resume_from_pt_is_exact_with_crop_and_mirror(tmp_path, mnist_db):
    """Interrupted at 5 and resumed = uninterrupted, bit for bit (data positions,
    crop and mirror draws, solver history)."""
    recipe = _recipe(tmp_path, mnist_db, max_iter=11, snapshot=5)
    straight = Solver(read_solver(recipe.solver), log=lambda line: None)
    straight.solve()
    first = Solver(read_solver(recipe.solver), log=lambda line: None)
    first.step(5)  # the snapshot at 5 is written by step
    resumed = Solver(read_solver(recipe.solver), log=lambda line: None)
    resumed.restore("latest")
    assert resumed.iter == 5
    resumed.solve()
    a, b = _weights(straight), _weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    record = json.load(open(recipe.snapshot_prefix + "_latest"))
    assert record["iter"] == 11 and len(record["files"]) == 3


def test_snapshot_sets_and_stale_temporaries(tmp_path, mnist_db):
    recipe = _recipe(tmp_path, mnist_db, max_iter=2, snapshot=1)
    prefix = recipe.snapshot_prefix
    # What a kill during a snapshot leaves: temporaries that nothing names.
    for name in (f".{os.path.basename(prefix)}_iter_9.caffemodel.tmp", f".{os.path.basename(prefix)}_iter_9.pt.tmp"):
        (tmp_path / "run" / name).write_bytes(b"partial")
    assert len(remove_stale_temporaries(prefix)) == 2
    solver = Solver(read_solver(recipe.solver), log=lambda line: None)
    solver.solve()
    files = sorted(os.listdir(tmp_path / "run"))
    assert not [f for f in files if f.startswith(".")]
    for it in (1, 2):
        for suffix in (".caffemodel", ".solverstate", ".pt"):
            assert f"{os.path.basename(prefix)}_iter_{it}{suffix}" in files
    assert json.load(open(prefix + "_latest"))["iter"] == 2


def _train_net(*args, cwd):
    return subprocess.Popen([sys.executable, os.path.join(ROOT, "tools", "train_net.py"), *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd,
                            env={**os.environ, "SSDH_PROGRESS": "0"})


@pytest.mark.slow
def test_sigint_stops_with_a_snapshot_and_resume_latest_continues(tmp_path, mnist_db):
    recipe = _recipe(tmp_path, mnist_db, max_iter=100000, snapshot=0)
    run = _train_net(recipe.solver, cwd=tmp_path)
    # Wait for the first display lines, then interrupt as Ctrl-C would.
    deadline = time.time() + 120
    seen = []
    while time.time() < deadline:
        line = run.stdout.readline()
        seen.append(line)
        if line.startswith("Iteration 3,"):
            break
    run.send_signal(signal.SIGINT)
    out, err = run.communicate(timeout=120)
    assert run.returncode == 0, err
    assert "SIGINT received: stop at the end of the iteration" in out
    assert "Optimization stopped early." in out and "resume with --resume latest" in out
    assert "Traceback" not in err
    record = json.load(open(recipe.snapshot_prefix + "_latest"))
    stopped_at = record["iter"]
    assert stopped_at >= 3
    log = [json.loads(line) for line in open(tmp_path / "run" / "train_log.jsonl")]
    assert log[-1]["iter"] == stopped_at - 1
    # Resume the latest set for a few more iterations: the log grows, the plot covers all of it.
    more = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "train_net.py"), recipe.solver, "--resume",
                           "latest", "--solver-set", f"max_iter={stopped_at + 2}"], capture_output=True, text=True,
                          cwd=tmp_path, env={**os.environ, "SSDH_PROGRESS": "0"})
    assert more.returncode == 0, more.stderr
    assert "Resumed from" in more.stdout and f"at iteration {stopped_at}" in more.stdout
    log = [json.loads(line) for line in open(tmp_path / "run" / "train_log.jsonl")]
    iterations = [r["iter"] for r in log if r["kind"] == "train"]
    assert iterations == list(range(stopped_at + 2))
