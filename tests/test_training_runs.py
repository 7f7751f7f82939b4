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
    from ssdh_port.fileio import temporary_beside

    recipe = _recipe(tmp_path, mnist_db, max_iter=2, snapshot=1)
    prefix = recipe.snapshot_prefix
    # What a kill during a snapshot leaves: temporaries (the one naming scheme) that nothing names.
    for name in ("_iter_9.caffemodel", "_iter_9.pt", "_latest"):
        fd, _ = temporary_beside(prefix + name)
        os.write(fd, b"partial")
        os.close(fd)
    assert len(remove_stale_temporaries(prefix)) == 3
    solver = Solver(read_solver(recipe.solver), log=lambda line: None)
    solver.solve()
    files = sorted(os.listdir(tmp_path / "run"))
    assert not [f for f in files if f.startswith(".")]
    for it in (1, 2):
        for suffix in (".caffemodel", ".solverstate", ".pt"):
            assert f"{os.path.basename(prefix)}_iter_{it}{suffix}" in files
    record = json.load(open(prefix + "_latest"))
    assert record["iter"] == 2 and all("/" not in name for name in record["files"])


KILLED_IN_CAFFEMODEL_WRITE = """
import os, signal, sys
from ssdh_port.caffe.net import CaffeNet
from ssdh_port.caffe.solver import Solver, read_solver

def dying(self, f):
    f.write(b"half a caffemodel")
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)

CaffeNet.write_caffemodel = dying
Solver(read_solver(sys.argv[1]), log=lambda line: None).solve()
"""


def test_a_kill_during_the_caffemodel_write_leaves_what_the_clean_up_removes(tmp_path, mnist_db):
    recipe = _recipe(tmp_path, mnist_db, max_iter=1, snapshot=1)
    killed = subprocess.run([sys.executable, "-c", KILLED_IN_CAFFEMODEL_WRITE, recipe.solver], cwd=tmp_path,
                            capture_output=True, text=True, env={**os.environ, "SSDH_PROGRESS": "0"})
    assert killed.returncode == -signal.SIGKILL
    left = [f for f in os.listdir(tmp_path / "run") if f.startswith(".")]
    assert left and all(f.startswith(".lenet_ssdh_iter_1.caffemodel.") for f in left), left
    assert sorted(remove_stale_temporaries(recipe.snapshot_prefix)) == sorted(str(tmp_path / "run" / f) for f in left)
    assert not [f for f in os.listdir(tmp_path / "run") if f.startswith(".")]


def test_a_moved_run_folder_resumes_from_its_own_files(tmp_path, mnist_db):
    import shutil

    from ssdh_port.caffe.solver import resolve_snapshot

    recipe = _recipe(tmp_path, mnist_db, max_iter=2, snapshot=2)
    Solver(read_solver(recipe.solver), log=lambda line: None).solve()
    shutil.copytree(tmp_path / "run", tmp_path / "copy")
    found = resolve_snapshot(str(tmp_path / "copy"), None)
    assert found == str(tmp_path / "copy" / "lenet_ssdh_iter_2.pt")
    shutil.rmtree(tmp_path / "run")
    assert os.path.isfile(resolve_snapshot(str(tmp_path / "copy"), None))


def test_resuming_an_older_snapshot_logs_each_iteration_once(tmp_path, mnist_db):
    from ssdh_port.pipeline.train import read_log, train_caffe

    recipe = _recipe(tmp_path, mnist_db, max_iter=8, snapshot=4)
    train_caffe(recipe.solver, display=lambda line: None, progress=False)
    again = train_caffe(recipe.solver, resume=recipe.snapshot_prefix + "_iter_4.pt", display=lambda line: None,
                        progress=False)
    lines = [json.loads(line) for line in open(again.log)]
    assert {"kind": "resumed", "iter": 4} in lines
    records, tests = read_log(again.log)
    assert [r["iter"] for r in records] == list(range(8))
    assert [t["iter"] for t in tests] == [0, 4, 8]
    assert os.path.isfile(again.plot)


def test_a_failed_start_leaves_no_log(tmp_path, mnist_db):
    from tests.commands import ssdh

    recipe = _recipe(tmp_path, mnist_db, max_iter=2)
    (tmp_path / "bad.pt").write_bytes(b"\x00" * 100)
    result = ssdh("train", recipe.solver, "--resume", tmp_path / "bad.pt", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"ssdh train: {tmp_path / 'bad.pt'}: not a readable training snapshot: not a PyTorch .pt file "
        "(no zip archive in it)")
    assert not (tmp_path / "run" / "train_log.jsonl").exists()
    payload = (tmp_path / "run" / "x.pt")
    torch.save({"params": {}, "history": {}, "iter": 0, "w": torch.zeros(1000)}, payload)
    (tmp_path / "cut.pt").write_bytes(payload.read_bytes()[:2000])
    result = ssdh("train", recipe.solver, "--resume", tmp_path / "cut.pt", cwd=tmp_path)
    assert result.stderr.strip().splitlines()[-1].endswith(
        "cut.pt: not a readable training snapshot: a truncated or damaged .pt file (its zip archive is incomplete)")
    assert not (tmp_path / "run" / "train_log.jsonl").exists()


def test_gpu_all_without_a_gpu_is_an_error(tmp_path, mnist_db):
    from tests.commands import ssdh

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    recipe = _recipe(tmp_path, mnist_db, max_iter=2)
    for flag in ("all", "0,1"):
        result = ssdh("train", recipe.solver, "--gpu", flag, cwd=tmp_path)
        assert result.returncode == 1 and "Traceback" not in result.stderr
        assert "this machine has" in result.stderr.strip().splitlines()[-1]
        assert not (tmp_path / "run" / "train_log.jsonl").exists()


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


@pytest.mark.slow
def test_ctrl_c_under_nproc_ends_as_one_process_does(tmp_path, mnist_db):
    recipe = _recipe(tmp_path, mnist_db, max_iter=100000, snapshot=0)
    run = subprocess.Popen([sys.executable, "-m", "ssdh_port", "train", str(recipe.solver), "--nproc", "2"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                           env={**os.environ, "SSDH_PROGRESS": "0", "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 180
    while time.time() < deadline:
        line = run.stdout.readline()
        if line.startswith("Iteration 2,"):
            break
    run.send_signal(signal.SIGINT)  # as a terminal's Ctrl-C reaches the command
    out, err = run.communicate(timeout=180)
    assert run.returncode == 0, err[-2000:]
    assert "Traceback" not in err and "SignalException" not in err
    assert "stopped early" in out and out.count("log: ") == 1 and "/dev/null" not in out
    assert json.load(open(recipe.snapshot_prefix + "_latest"))["iter"] >= 2


def test_the_same_machine_and_threads_train_bit_for_bit(tmp_path, mnist_db):
    """What the README says of the demo's numbers: run after run, on one machine with
    one thread count, training gives the same weights bit for bit."""
    recipe = _recipe(tmp_path, mnist_db, max_iter=6)
    runs = []
    for _ in range(2):
        solver = Solver(read_solver(recipe.solver), log=lambda line: None)
        solver.solve()
        runs.append(_weights(solver))
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
