"""Caffe's multi-GPU semantics under torchrun (gloo on the CPU): two ranks of
batch B train exactly as one process of batch 2B (the ranks read interleaved
records, the gradients are averaged), only rank 0 logs and snapshots, and a
snapshot of two ranks resumes in one process at the right record."""
import json
import os
import re
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

from ssdh_port.distributed import _without_device, parse_gpus
from ssdh_port.errors import SSDHError
from tests.shared_data import ROOT

NET = """name: "tiny"
layer {{ name: "data" type: "Data" top: "data" top: "label" include {{ phase: TRAIN }}
  transform_param {{ scale: 0.00390625 }}
  data_param {{ source: "{db}" batch_size: {batch} backend: LMDB }} }}
layer {{ name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
  inner_product_param {{ num_output: 10 weight_filler {{ type: "gaussian" std: 0.01 }} }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }}
"""

SOLVER = """net: "{net}"
base_lr: 0.1
momentum: 0.9
weight_decay: 0.0005
lr_policy: "fixed"
display: 1
max_iter: 6
snapshot: 3
snapshot_prefix: "{prefix}"
random_seed: 7
solver_mode: CPU
"""


def recipe(folder, name, batch, db):
    os.makedirs(folder / name, exist_ok=True)
    (folder / name / "net.prototxt").write_text(NET.format(db=db, batch=batch))
    (folder / name / "solver.prototxt").write_text(
        SOLVER.format(net=folder / name / "net.prototxt", prefix=folder / name / "snap"))
    return folder / name / "solver.prototxt"


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def train(solver, *extra, ranks=1):
    tool = os.path.join(ROOT, "tools", "train_net.py")
    command = [sys.executable, tool, str(solver), *extra]
    if ranks > 1:
        command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={ranks}",
                   f"--master_port={free_port()}", "--master_addr=127.0.0.1", tool, str(solver), *extra]
    env = {**os.environ, "SSDH_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def weights(path):
    return torch.load(path, map_location="cpu", weights_only=False)["params"]


@pytest.fixture(scope="module")
def database(tmp_path_factory):
    from ssdh_port.data import mnist
    from ssdh_port.data.datasets import write_array_db

    folder = tmp_path_factory.mktemp("parallel")
    images, labels = mnist.load_split("test")
    write_array_db(folder / "db", images[:40, None], labels[:40])
    return folder


@pytest.mark.slow
def test_two_ranks_of_batch_b_train_as_one_process_of_batch_2b(database):
    one = recipe(database, "one", 8, database / "db")
    two = recipe(database, "two", 4, database / "db")
    train(one)
    run = train(two, ranks=2)
    final_one, final_two = weights(database / "one" / "snap_iter_6.pt"), weights(database / "two" / "snap_iter_6.pt")
    for key in final_one:
        torch.testing.assert_close(final_two[key], final_one[key], rtol=1e-5, atol=1e-6)
    # Rank 0 alone logs (one record per iteration) and snapshots; 2 x 4 records per iteration.
    log = [json.loads(line) for line in open(database / "two" / "train_log.jsonl")]
    assert [r["iter"] for r in log if "loss" in r] == list(range(6))
    assert run.stdout.count("Iteration 5, loss") == 1 and "2 ranks of batch_size each" in run.stdout
    snapshot = torch.load(database / "two" / "snap_iter_3.pt", weights_only=False)
    assert snapshot["data_position"]["0/data"] == {"cursor": 24, "offset": 24}


@pytest.mark.slow
def test_a_two_rank_snapshot_resumes_in_one_process(database):
    # Ranks' snapshot at iteration 3 -> one process of batch 8 from there: the same
    # weights at iteration 6 as one process all along.
    resumed = recipe(database, "resumed", 8, database / "db")
    two = database / "two" / "snap_iter_3.pt"
    if not two.exists():
        pytest.skip("needs the two-rank run of the test above")
    train(resumed, "--resume", two)
    final = weights(database / "resumed" / "snap_iter_6.pt")
    reference = weights(database / "one" / "snap_iter_6.pt")
    for key in reference:
        torch.testing.assert_close(final[key], reference[key], rtol=1e-5, atol=1e-6)


PROBE = """import os
import torch
from ssdh_port import distributed

def threads():
    return len(os.listdir("/proc/self/task"))

before = threads()
ranks = distributed.from_environment(torch.device("cpu"))
from torch._subclasses.fake_tensor import FakeTensorMode  # noqa: E402

with FakeTensorMode():  # what the net builder's shape inference runs, after the group exists
    torch.empty(2, 3).sum()
assert distributed.agree(ranks.rank) == 1
during = threads()
distributed.shutdown()
print(f"threads {before} {during} {threads()};")
"""


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads in /proc")
def test_shutdown_ends_the_groups_threads_before_the_interpreter_exits(tmp_path):
    # A rank whose gloo worker threads outlive the group's destruction can abort at
    # exit (a thread drops a collective's tensor while the interpreter finalises):
    # after shutdown() no thread of the group may be left, even though the net
    # builder's imports ran after the group was made.
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                          f"--master_port={free_port()}", "--master_addr=127.0.0.1", str(script)],
                         capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT})
    assert run.returncode == 0, run.stderr[-3000:]
    counts = re.findall(r"threads (\d+) (\d+) (\d+);", run.stdout)  # the ranks' lines may interleave
    assert len(counts) == 2, run.stdout
    for before, during, after in counts:
        assert int(during) > int(before) and after == before


def test_data_layer_shards_by_offset():
    from ssdh_port.caffe.data_layers import Data

    class Fake(Data):
        def __init__(self):
            self.rank, self.world, self.offset, self.cursor, self.phase = 1, 3, 0, 0, "TRAIN"

    layer = Fake()
    # 7 records, rank 1 of 3: offsets 1, 4, 7 (= record 0 after the wrap), 10 (= record 3), ...
    assert layer.batch_indices(4, 7) == [1, 4, 0, 3]
    assert np.array_equal(layer.batch_indices(2, 7), [6, 2])


def test_gpu_lists_and_argv(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(SSDHError, match="--gpu all: this machine has no CUDA GPU"):
        parse_gpus("all")
    with pytest.raises(SSDHError, match="this machine has 0 CUDA GPU"):
        parse_gpus("0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert parse_gpus("all") == [0, 1, 2, 3]
    with pytest.raises(SSDHError, match="this machine has 4 CUDA GPU"):
        parse_gpus("0,4")
    assert parse_gpus("0,2,3") == [0, 2, 3]
    with pytest.raises(SSDHError, match="each GPU once"):
        parse_gpus("1,1")
    with pytest.raises(SSDHError, match="expected GPU numbers"):
        parse_gpus("0,x")
    assert _without_device(["s.prototxt", "--gpu", "0,1", "--amp", "--device=cuda"]) == ["s.prototxt", "--amp"]


@pytest.mark.slow
def test_lenet_ssdh_recipe_two_ranks_equal_one_process_after_20_iterations(tmp_path):
    """The real recipe (LeNet-SSDH-48, no random transform): 2 ranks of batch 8 against
    1 process of batch 16. E3 (the fire-rate loss) is not a mean over images, so
    the ranks' averaged E3 gradient differs from the full batch's at second order,
    as in Caffe's multi-GPU training; after 20 iterations the weights agree to 1e-6."""

    from ssdh_port.data import mnist
    from ssdh_port.data.datasets import write_array_db

    images, labels = mnist.load_split("train")
    write_array_db(tmp_path / "db", images[:400, None], labels[:400])
    net = open(os.path.join(ROOT, "prototxt", "lenet_ssdh", "train_val.prototxt")).read()
    net = net.replace('source: "runs/mnist/test_lmdb"', f'source: "{tmp_path}/db"')
    finals = {}
    for name, batch, ranks in (("one", 16, 1), ("two", 8, 2)):
        (tmp_path / name).mkdir()
        text = re.sub(r'source: "runs/mnist/train_lmdb" batch_size: 64',
                      f'source: "{tmp_path}/db" batch_size: {batch}', net)
        (tmp_path / name / "net.prototxt").write_text(text)
        solver = (SOLVER.replace("base_lr: 0.1", "base_lr: 0.01").replace("max_iter: 6", "max_iter: 20")
                  .replace("snapshot: 3", "snapshot: 20"))
        (tmp_path / name / "solver.prototxt").write_text(
            solver.format(net=tmp_path / name / "net.prototxt", prefix=tmp_path / name / "snap"))
        train(tmp_path / name / "solver.prototxt", ranks=ranks)
        finals[name] = weights(tmp_path / name / "snap_iter_20.pt")
    assert set(finals["one"]) == set(finals["two"]) and len(finals["one"]) == 10
    for key in finals["one"]:
        torch.testing.assert_close(finals["two"][key], finals["one"][key], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_sharded_encoding_writes_the_one_process_code_file(database, tmp_path):
    from ssdh_port.caffe.net import CaffeNet
    from ssdh_port.data import mnist
    from ssdh_port.data.datasets import write_array_db

    images, labels = mnist.load_split("test")
    write_array_db(tmp_path / "db", images[:250, None], labels[:250])  # 4 batches of 64, the last short
    deploy = os.path.join(ROOT, "prototxt", "lenet_ssdh", "deploy.prototxt")
    CaffeNet(deploy).save_caffemodel(tmp_path / "w.caffemodel")
    tool = ["-m", "ssdh_port", "encode"]
    common = ["--prototxt", deploy, "--weights", str(tmp_path / "w.caffemodel"), "--input", str(tmp_path / "db"),
              "--scale", "0.00390625", "--features", "ip2"]
    env = {**os.environ, "SSDH_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, *tool, *common, "--output", str(tmp_path / "one.ssdh")],
                         capture_output=True, text=True, env=env)
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                          f"--master_port={free_port()}", "--master_addr=127.0.0.1", *tool, *common,
                          "--output", str(tmp_path / "two.ssdh")], capture_output=True, text=True, env=env)
    assert one.returncode == 0 and two.returncode == 0, two.stderr[-3000:]
    assert (tmp_path / "one.ssdh").read_bytes() == (tmp_path / "two.ssdh").read_bytes()
    assert np.array_equal(np.load(tmp_path / "one.ssdh.ip2.npy"), np.load(tmp_path / "two.ssdh.ip2.npy"))
    assert two.stdout.count("encoded 250 items") == 1


@pytest.mark.slow
def test_fast_cifar_trainer_under_torchrun(tmp_path):
    from tests.test_pipeline import _colour_cifar

    _colour_cifar(str(tmp_path / "data"))
    train = '{epochs = 3.0, batch_size = 64, widths = "16,32,32", tta = 1, precision = "fp32"}'
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
         "--master_addr=127.0.0.1", "-m", "ssdh_port", "run", "cifar10_fast", "--out-dir", str(tmp_path / "run"),
         "--set", f"data.dir={tmp_path / 'data'}", "--set", "model.bits=16", "--set", f"model.train={train}",
         "--set", "protocol.metrics=[]"],
        capture_output=True, text=True, env={**os.environ, "SSDH_PROGRESS": "0", "OMP_NUM_THREADS": "1"},
        timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    history = [json.loads(line) for line in open(tmp_path / "run" / "train_log.jsonl")]
    # 1024 images, 2 ranks x 64 per step: 8 steps an epoch, logged once (rank 0).
    assert [h["step"] for h in history] == [8, 16, 24] and history[-1]["loss"] < history[0]["loss"]
    report = json.load(open(tmp_path / "run" / "table.json"))["rows"][0]
    assert run.stdout.count("| FastNet-SSDH-16 (scratch) |") == 1 and report["classification_accuracy"] > 0.5
