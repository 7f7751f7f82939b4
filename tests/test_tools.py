"""The command-line tools end to end on small inputs."""
import json
import os
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import torch

from ssdh_port.caffe.net import CaffeNet
from ssdh_port.data.db import DatumLMDB
from ssdh_port.hashing.index import HammingIndex
from ssdh_port.pipeline import read_table
from tests.commands import ssdh
from tests.shared_data import ROOT, needs_shared, shared

LENET_SSDH = os.path.join(ROOT, "prototxt", "lenet_ssdh")


def run(command, *args, cwd=None):
    return ssdh(command, *args, cwd=cwd)


@needs_shared
def test_convert_caffemodel_round_trip(tmp_path):
    folder = shared("caffe-models", "lenet")
    result = run("convert", "--prototxt", f"{folder}/lenet.prototxt",
                 "--caffemodel", f"{folder}/lenet_iter_10000.caffemodel", "--out", tmp_path / "m.pt")
    assert result.returncode == 0, result.stderr
    assert "ip1                      InnerProduct         500x800 500" in result.stdout
    back = run("convert", "--prototxt", f"{folder}/lenet.prototxt", "--pt", tmp_path / "m.pt",
               "--to-caffemodel", "--out", tmp_path / "m.caffemodel")
    assert back.returncode == 0, back.stderr
    a = CaffeNet(f"{folder}/lenet.prototxt", weights=f"{folder}/lenet_iter_10000.caffemodel")
    b = CaffeNet(f"{folder}/lenet.prototxt", weights=str(tmp_path / "m.caffemodel"))
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    bad = run("convert", "--prototxt", f"{folder}/lenet.prototxt",
              "--caffemodel", f"{folder}/lenet.prototxt", "--out", tmp_path / "x.pt")
    assert bad.returncode == 1 and "not a valid caffemodel" in bad.stderr
    assert not (tmp_path / "x.pt").exists()


def _tiny_mnist(tmp_path, n=300):
    from ssdh_port.data import mnist
    from ssdh_port.data.datasets import write_array_db

    images, labels = mnist.load_split("test")
    write_array_db(tmp_path / "db", images[:n, None], labels[:n])
    return images[:n], labels[:n]


def test_extract_encode_and_evaluate(tmp_path):
    images, labels = _tiny_mnist(tmp_path)
    deploy = os.path.join(LENET_SSDH, "deploy.prototxt")
    net = CaffeNet(deploy)
    net.save_caffemodel(tmp_path / "w.caffemodel")
    feats = run("extract", "--prototxt", deploy, "--weights", tmp_path / "w.caffemodel",
                "--input", tmp_path / "db", "--scale", "0.00390625", "--batch-size", "128",
                "--blobs", "latent_sigmoid,ip2", "--out", tmp_path / "f.npz")
    assert feats.returncode == 0, feats.stderr
    arrays = np.load(tmp_path / "f.npz")
    assert arrays["latent_sigmoid"].shape == (300, 48) and list(arrays["labels"]) == list(labels)
    direct = net(data=torch.from_numpy(images[:128, None]).float() * 0.00390625)["ip2"]
    np.testing.assert_allclose(arrays["ip2"][:128], direct.detach().numpy(), rtol=1e-5, atol=1e-6)
    coded = run("encode", "--prototxt", deploy, "--weights", tmp_path / "w.caffemodel",
                "--input", tmp_path / "db", "--scale", "0.00390625", "--out", tmp_path / "c.ssdh")
    assert coded.returncode == 0, coded.stderr
    index = HammingIndex.load(tmp_path / "c.ssdh")
    assert len(index) == 300 and index.bits == 48
    expected = (arrays["latent_sigmoid"] > 0.5).astype(np.uint8)
    assert np.array_equal(np.unpackbits(index.codes.numpy(), axis=1, bitorder="little")[:, :48], expected)
    # Untrained weights: activations sit near 0.5 and the report says so.
    assert "WARNING" in coded.stderr
    evaluated = run("eval", "--query", tmp_path / "c.ssdh", "--database", tmp_path / "c.ssdh",
                    "--topk", "100", "--out-dir", tmp_path / "eval")
    assert evaluated.returncode == 0, evaluated.stderr
    row = read_table(tmp_path / "eval" / "table.json")[0]
    assert 0 <= row.map_at_topk <= 1 and row.topk == 100
    assert (tmp_path / "eval" / "retrieval_curves.png").stat().st_size > 10000
    # Codes evaluated against themselves: every query finds itself at distance 0.
    assert row.map_whole_ranking is not None and row.precision_within_radius > 0


def test_convert_imageset_tool_and_failure(tmp_path):
    import cv2

    os.makedirs(tmp_path / "img")
    for i in range(3):
        cv2.imwrite(str(tmp_path / "img" / f"{i}.png"), np.full((5, 7, 3), 40 * i, np.uint8))
    (tmp_path / "list.txt").write_text("".join(f"{i}.png {i}\n" for i in range(3)))
    ok = run("imageset", tmp_path / "img", tmp_path / "list.txt", tmp_path / "db",
             "--resize_height", "4", "--resize_width", "6")
    assert ok.returncode == 0, ok.stderr
    db = DatumLMDB(tmp_path / "db")
    assert [k.decode() for k in db.keys] == ["00000000_0.png", "00000001_1.png", "00000002_2.png"]
    assert db.read(2)[0].shape == (3, 4, 6) and db.read(2)[1] == 2
    mean = run("mean", tmp_path / "db", tmp_path / "mean.binaryproto")
    assert mean.returncode == 0 and "mean_value channel [0]: 40" in mean.stdout
    (tmp_path / "bad.txt").write_text("0.png zero\n")
    bad = run("imageset", tmp_path / "img", tmp_path / "bad.txt", tmp_path / "db2")
    assert bad.returncode == 1 and "bad.txt:1: label 'zero' is not an integer" in bad.stderr
    assert not (tmp_path / "db2").exists()


def test_prepare_cifar10_batches_python_and_binary(tmp_path):
    import pickle

    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, (4, 3072), dtype=np.uint8)
    labels = [3, 1, 4, 1]
    with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz") as tar:
        for name in ("data_batch_1", "test_batch"):
            (tmp_path / name).write_bytes(pickle.dumps({b"data": data, b"labels": labels}))
            tar.add(tmp_path / name, arcname=f"cifar-10-batches-py/{name}")
    rows = np.concatenate([np.array(labels, np.uint8)[:, None], data], axis=1)
    with tarfile.open(tmp_path / "cifar-10-binary.tar.gz", "w:gz") as tar:
        for name in ("data_batch_1.bin", "test_batch.bin"):
            (tmp_path / name).write_bytes(rows.tobytes())
            tar.add(tmp_path / name, arcname=f"cifar-10-batches-bin/{name}")
    for kind in ("python", "binary"):
        result = run("prepare", "cifar10-batches", tmp_path / f"cifar-10-{kind}.tar.gz",
                     "--out", tmp_path / kind)
        assert result.returncode == 0, result.stderr
        db = DatumLMDB(tmp_path / kind / "train_lmdb_32")
        image, label = db.read(2)
        assert label == 4 and np.array_equal(image.ravel(), data[2])  # RGB planar, as stored
    folder = run("prepare", "folder", tmp_path, "--list", tmp_path / "l.txt")
    assert folder.returncode == 0


def test_train_net_reports_bad_solver(tmp_path):
    (tmp_path / "s.prototxt").write_text('net: "missing.prototxt"\nbase_lr: 0.1\nmax_iter: 1\n')
    result = run("train", tmp_path / "s.prototxt", cwd=tmp_path)
    assert result.returncode == 1 and "missing.prototxt: no such prototxt file" in result.stderr


def test_search_tool_reads_the_model_card(tmp_path):
    import cv2

    images, labels = _tiny_mnist(tmp_path, n=200)
    deploy = os.path.join(LENET_SSDH, "deploy.prototxt")
    CaffeNet(deploy).save_caffemodel(tmp_path / "w.caffemodel")
    assert run("encode", "--prototxt", deploy, "--weights", tmp_path / "w.caffemodel", "--input",
               tmp_path / "db", "--scale", "0.00390625", "--out", tmp_path / "c.ssdh").returncode == 0
    card = json.load(open(tmp_path / "c.ssdh.card.json"))
    assert card["weights"] == "w.caffemodel" and card["transform"]["scale"] == 0.00390625
    cv2.imwrite(str(tmp_path / "q.png"), images[3])
    # No --prototxt, --weights or --scale: the card beside the codes gives them.
    found = run("search", "--index", tmp_path / "c.ssdh", tmp_path / "q.png", "--k", "5")
    assert found.returncode == 0, found.stderr
    # The query is database item 3 itself: a code at distance 0 comes first.
    assert "distance   0" in found.stdout.splitlines()[1]
    assert f"label {labels[3]}" in found.stdout.splitlines()[1]
    overridden = run("search", "--index", tmp_path / "c.ssdh", "--scale", "1", tmp_path / "q.png")
    assert overridden.returncode == 0 and "scale 0.00390625 overridden by 1.0" in overridden.stderr
    (tmp_path / "c.ssdh.card.json").unlink()
    bare = run("search", "--index", tmp_path / "c.ssdh", tmp_path / "q.png")
    assert bare.returncode == 1 and "give --prototxt and --weights" in bare.stderr


@pytest.mark.slow
def test_bench_train_runs_the_recipe_step(tmp_path):
    # A smoke run of the training benchmark on the CPU (tiny batch): every mode
    # builds the recipe's solver and steps it; the numbers are not checked here.
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "bench", "bench_train.py"), "--device", "cpu",
         "--batch", "2", "--iters", "1", "--warmup", "0", "--images", "4", "--modes", "fp32,bf16-cl",
         "--json", str(out)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert set(report["modes"]) == {"fp32", "bf16-cl"}
    assert all(row["images_per_s"] > 0 for row in report["modes"].values())
    assert report["data_images_per_s"] > 0


@pytest.mark.slow
def test_bench_fast_cifar_measures_each_mode(tmp_path):
    # A smoke run of the FastNet benchmark (tiny widths and batch): each asked mode is
    # measured and compared with the first one when fp32-cl is not among them.
    out = tmp_path / "bench.json"
    script = os.path.join(ROOT, "bench", "bench_fast_cifar.py")
    result = subprocess.run([sys.executable, script, "--widths", "8,16,16", "--batch", "32", "--iters", "1",
                             "--modes", "bf16-cl,fp32", "--json", str(out)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert set(report["images_per_s"]) == {"bf16-cl", "fp32"} and min(report["images_per_s"].values()) > 0
    assert "(1.00x bf16-cl;" in result.stdout
    bad = subprocess.run([sys.executable, script, "--device", "tpu"], capture_output=True, text=True)
    assert bad.returncode == 1 and bad.stderr.strip().splitlines()[-1] == (
        "bench_fast_cifar: device 'tpu': expected cpu, cuda or cuda:N")
