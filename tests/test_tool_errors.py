"""Every expected failure of a tool is one line `tool: message` naming the file
or argument, exit status 1, no traceback, no partial output; and the inputs
that used to fail now work (training snapshots as weights, gray lists, a
train_val whose databases are elsewhere)."""
import dataclasses
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from ssdh_port.caffe.net import CaffeNet
from ssdh_port.hashing.index import HammingIndex
from tests.commands import ssdh
from tests.shared_data import ROOT

LENET = os.path.join(ROOT, "prototxt", "lenet_ssdh")
DEPLOY = os.path.join(LENET, "deploy.prototxt")


def run(command, *args, cwd=None):
    return ssdh(command, *args, cwd=cwd)


def one_line(result, tool, *fragments):
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines and lines[-1].startswith(f"{tool}: ") and not lines[-1].startswith(f"{tool}: {tool}:")
    for fragment in fragments:
        assert fragment in lines[-1], lines[-1]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    folder = tmp_path_factory.mktemp("w")
    torch.manual_seed(0)
    net = CaffeNet(DEPLOY)
    net.save_caffemodel(folder / "w.caffemodel")
    return folder / "w.caffemodel"


def test_damaged_resume_snapshot(tmp_path):
    from ssdh_port.data import mnist
    from ssdh_port.data.datasets import write_array_db
    from ssdh_port.pipeline import prepare_recipe, recipe_dir

    images, labels = mnist.load_split("test")
    write_array_db(tmp_path / "db", images[:50, None], labels[:50])
    recipe = prepare_recipe(recipe_dir("lenet_ssdh"), tmp_path / "run", sources={"TRAIN": tmp_path / "db",
                            "TEST": tmp_path / "db"}, max_iter=2)
    (tmp_path / "bad.pt").write_bytes(b"PK\x03\x04 not really a zip")
    result = run("train", recipe.solver, "--resume", tmp_path / "bad.pt", cwd=tmp_path)
    one_line(result, "ssdh train", "bad.pt: not a readable training snapshot")


def test_convert_caffemodel_picks_the_format_from_the_name(tmp_path, weights):
    ok = run("convert", "--prototxt", DEPLOY, "--caffemodel", weights, "--out", tmp_path / "m.pt")
    assert ok.returncode == 0 and "(pt," in ok.stdout
    back = run("convert", "--prototxt", DEPLOY, "--pt", tmp_path / "m.pt", "--out", tmp_path / "w2.caffemodel")
    assert back.returncode == 0 and "(caffemodel," in back.stdout
    assert open(tmp_path / "w2.caffemodel", "rb").read(4) != b"PK\x03\x04"  # protobuf, not a torch zip
    a, b = CaffeNet(DEPLOY, weights=str(weights)), CaffeNet(DEPLOY, weights=str(tmp_path / "w2.caffemodel"))
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    one_line(run("convert", "--prototxt", DEPLOY, "--caffemodel", weights, "--to-caffemodel",
                 "--out", tmp_path / "x.pt"), "ssdh convert", "--to-caffemodel contradicts the output")
    one_line(run("convert", "--prototxt", DEPLOY, "--caffemodel", weights,
                 "--out", tmp_path / "x.caffemodel.h5"), "ssdh convert", "HDF5 caffemodels are read, not written")
    assert not (tmp_path / "x.pt").exists() and not (tmp_path / "x.caffemodel.h5").exists()


def test_convert_a_train_val_whose_databases_are_elsewhere(tmp_path, weights):
    """Its help says a train_val is fine: weights need no data."""
    result = run("convert", "--prototxt", os.path.join(LENET, "train_val.prototxt"), "--caffemodel",
                 weights, "--out", tmp_path / "m.pt", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "shapes not checked" in result.stderr
    net = CaffeNet(DEPLOY, weights=str(tmp_path / "m.pt"))
    assert torch.equal(net.layer("ip1").blobs[0], CaffeNet(DEPLOY, weights=str(weights)).layer("ip1").blobs[0])


def test_a_training_snapshot_is_weights_too(tmp_path):
    from ssdh_port.caffe.proto import caffe_pb2 as pb
    from ssdh_port.caffe.solver import Solver

    param = pb.SolverParameter(base_lr=0.01, max_iter=1, display=0, snapshot_prefix=str(tmp_path / "s"))
    net = CaffeNet(DEPLOY)
    train = pb.NetParameter()
    train.CopyFrom(net.net_param)
    train.layer[0].type = "DummyData"
    train.layer[0].dummy_data_param.shape.add().dim.extend([2, 1, 28, 28])
    train.layer[0].ClearField("input_param")
    train.layer.add(name="loss", type="EuclideanLoss", bottom=["ip2", "ip2"], top=["loss"])
    param.net_param.CopyFrom(train)
    solver = Solver(param, log=lambda line: None)
    assert "loss" in solver.net.output_names and solver.net.layer("data").type == "DummyData"
    solver.solve()
    snapshot = tmp_path / "s_iter_1.pt"
    loaded = CaffeNet(DEPLOY, weights=str(snapshot))
    torch.testing.assert_close(loaded.layer("latent").blobs[0], solver.net.layer("latent").blobs[0])
    data = np.random.default_rng(0).random((3, 1, 28, 28)).astype(np.float32)
    np.save(tmp_path / "x.npy", data)
    encoded = run("encode", "--prototxt", DEPLOY, "--weights", snapshot, "--input", tmp_path / "x.npy",
                  "--out", tmp_path / "c.ssdh")
    assert encoded.returncode == 0, encoded.stderr
    assert len(HammingIndex.load(tmp_path / "c.ssdh")) == 3


def test_input_errors_of_encode_and_extract(tmp_path, weights):
    np.save(tmp_path / "wrong.npy", np.zeros((2, 1, 32, 32), np.float32))
    one_line(run("encode", "--prototxt", DEPLOY, "--weights", weights, "--input", tmp_path / "wrong.npy",
                 "--out", tmp_path / "c.ssdh"), "ssdh encode", "net input 'data' has shape (2, 1, 32, 32); the net is declared for N x 1 x 28 x 28")
    assert not (tmp_path / "c.ssdh").exists()
    # Images in a list are read with the channels the net wants (gray for its one channel), --gray or not.
    for i in range(3):
        cv2.imwrite(str(tmp_path / f"{i}.png"), np.full((28, 28, 3), 60 * i, np.uint8))
    (tmp_path / "list.txt").write_text("".join(f"{i}.png {i}\n" for i in range(3)))
    for flags, name in (((), "f.npz"), (("--gray",), "g.npz")):
        ok = run("extract", "--prototxt", DEPLOY, "--weights", weights, "--input", tmp_path / "list.txt",
                 *flags, "--blobs", "ip2", "--out", tmp_path / name)
        assert ok.returncode == 0, ok.stderr
    assert np.load(tmp_path / "f.npz")["ip2"].shape == (3, 10)
    np.testing.assert_array_equal(np.load(tmp_path / "f.npz")["ip2"], np.load(tmp_path / "g.npz")["ip2"])
    # A search for k = 0 names the flag, not the operator underneath.
    one_line(run("search", "--index", tmp_path / "missing.ssdh", "--k", "0", tmp_path / "0.png"), "ssdh search",
             "--k must be at least 1, got 0")


def test_eval_on_a_missing_device_and_serve_with_bad_weights(tmp_path):
    from ssdh_port.hashing import HammingIndex

    index = HammingIndex(16)
    index.add(np.random.default_rng(0).integers(0, 256, (8, 2), dtype=np.uint8), labels=np.arange(8))
    index.save(tmp_path / "c.ssdh")
    if not torch.cuda.is_available():
        one_line(run("eval", "--query", tmp_path / "c.ssdh", "--database", tmp_path / "c.ssdh",
                     "--device", "cuda", "--out-dir", tmp_path / "e"), "ssdh eval", "CUDA is not available")
    (tmp_path / "bad.caffemodel").write_bytes(b"\x01\x02garbage")
    one_line(run("serve", "--prototxt", DEPLOY, "--weights", tmp_path / "bad.caffemodel", "--index",
                 tmp_path / "c.ssdh", "--db", tmp_path / "nodb", "--port", "0"), "ssdh serve", "bad.caffemodel")
    one_line(run("search", "--prototxt", DEPLOY, "--weights", tmp_path / "bad.caffemodel", "--index",
                 tmp_path / "c.ssdh", tmp_path / "q.png"), "ssdh search")


def test_convert_imageset_skips_unreadable_images_unless_strict(tmp_path):
    from ssdh_port.data.db import DatumLMDB

    (tmp_path / "img").mkdir()
    for i in (0, 2):
        cv2.imwrite(str(tmp_path / "img" / f"{i}.png"), np.full((4, 5, 3), 10 * i, np.uint8))
    (tmp_path / "img" / "1.png").write_bytes(b"not a png")
    (tmp_path / "list.txt").write_text("0.png 0\n1.png 1\n2.png 2\n")
    ok = run("imageset", tmp_path / "img", tmp_path / "list.txt", tmp_path / "db")
    assert ok.returncode == 0 and "wrote 2 records" in ok.stdout
    assert "list.txt:2:" in ok.stderr and "skipped" in ok.stderr and "WARN" not in ok.stderr
    assert [k.decode() for k in DatumLMDB(tmp_path / "db").keys] == ["00000000_0.png", "00000002_2.png"]
    strict = run("imageset", tmp_path / "img", tmp_path / "list.txt", tmp_path / "db2", "--strict")
    one_line(strict, "ssdh imageset", "list.txt:2:", "1.png")
    assert not (tmp_path / "db2").exists()


def test_unknown_layer_types_name_the_file_and_the_closest_type(tmp_path):
    from ssdh_port.caffe.layers import LayerError

    path = tmp_path / "net.prototxt"
    for wrong, hint in (("Convolutoin", "did you mean 'Convolution'?"), ("relu", "did you mean 'ReLU'?"),
                        ("Python", "write the layer as a torch module")):
        path.write_text("layer { name: 'a' type: 'Input' top: 'x' input_param { shape { dim: 1 dim: 1 } } }\n"
                        f"layer {{ name: 'b' type: '{wrong}' bottom: 'x' top: 'y' }}")
        with pytest.raises(LayerError) as err:
            CaffeNet(str(path))
        assert str(err.value).startswith(f"{path}: layer 'b': ") and hint in str(err.value)


def test_solver_set_offers_the_closest_field(tmp_path):
    one_line(run("train", os.path.join(ROOT, "prototxt", "lenet_ssdh", "solver.yaml"), "--solver-set",
                 "max_itr=3", cwd=tmp_path), "ssdh train", "unknown solver field 'max_itr' (did you mean 'max_iter'?)")


def test_convert_says_wrote_once_when_the_data_layers_cannot_be_opened(tmp_path, weights):
    result = run("convert", "--prototxt", os.path.join(ROOT, "prototxt", "lenet_ssdh", "train_val.prototxt"),
                 "--caffemodel", weights, "--output", tmp_path / "m.pt", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (result.stdout + result.stderr).count("wrote ") == 1
    assert "cannot be opened here" in result.stderr


def test_a_run_whose_training_was_stopped_encodes_nothing():
    from ssdh_port.errors import SSDHError
    from ssdh_port.pipeline.experiment import _check_finished
    from ssdh_port.pipeline.train import TrainResult

    stopped = TrainResult(weights="w", snapshot_prefix="p", iterations=7, log="l", plot=None, seconds=1.0,
                          final_test={}, stopped_early=True)
    with pytest.raises(SSDHError, match="training stopped at iteration 7 by a signal.*nothing was encoded"):
        _check_finished(stopped, "solver.prototxt")
    _check_finished(dataclasses.replace(stopped, stopped_early=False), "solver.prototxt")


def test_milvus_lite_starts_without_a_deprecation_warning(tmp_path):
    pytest.importorskip("pymilvus")
    result = subprocess.run([sys.executable, "-W", "default", "-c",
                             "from ssdh_port.hashing.milvus import _client; _client('m.db').close()"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "pkg_resources" not in result.stderr


def test_progress_bars_only_on_a_terminal(monkeypatch):
    import io

    from ssdh_port import progress

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.delenv("SSDH_PROGRESS", raising=False)
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # a log file: no bars, results on their own lines
    assert not progress.enabled()
    monkeypatch.setattr(sys, "stderr", Terminal())
    assert progress.enabled()
    monkeypatch.setenv("SSDH_PROGRESS", "0")
    assert not progress.enabled()
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    monkeypatch.setenv("SSDH_PROGRESS", "1")
    assert progress.enabled()
