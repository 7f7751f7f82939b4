"""DNNH's data: the triplet converter (caffe-dnnh's convert_triplet_imageset) and
the seeded CIFAR-10 query / pool / triplet set built from the authors' archive
layout."""
import json
import os
import tarfile

import cv2
import numpy as np
import pytest

from ssdh_port.caffe import io as caffe_io
from ssdh_port.data.db import DatumLMDB
from ssdh_port.data.dnnh import prepare_cifar10_dnnh, sample_triplets, split_queries
from ssdh_port.data.imageset import ImagesetError, convert_triplet_imageset
from tests.commands import ssdh
from tests.shared_data import ROOT


def _images(folder, n, size=(6, 5)):
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        cv2.imwrite(os.path.join(folder, f"{i}.png"), rng.integers(0, 256, size + (3,), dtype=np.uint8))


def test_convert_triplet_imageset(tmp_path):
    _images(tmp_path / "img", 4)
    (tmp_path / "t.txt").write_text("0.png 1.png 2.png\n3.png 0.png 1.png\n2.png 2.png 3.png\n")
    assert convert_triplet_imageset(tmp_path / "img", tmp_path / "t.txt", tmp_path / "db", 2) == 2
    db = DatumLMDB(tmp_path / "db")
    assert [k.decode() for k in db.keys] == ["00000000_0.png", "00000001_3.png"]
    array, label = db.read(1)
    assert array.shape == (9, 6, 5) and label == 1
    for k, name in enumerate(("3.png", "0.png", "1.png")):
        expected = cv2.imread(str(tmp_path / "img" / name)).transpose(2, 0, 1)
        np.testing.assert_array_equal(array[3 * k:3 * k + 3], expected)
    (tmp_path / "bad.txt").write_text("0.png 1.png 2.png\n0.png 1.png\n")
    with pytest.raises(ImagesetError, match=r"bad.txt:2: expected 'anchor similar dissimilar' \(three paths\), got 2"):
        convert_triplet_imageset(tmp_path / "img", tmp_path / "bad.txt", tmp_path / "db2")
    (tmp_path / "missing.txt").write_text("0.png 1.png 2.png\n0.png 9.png 2.png\n")
    result = ssdh("triplets", str(tmp_path / "img") + "/", tmp_path / "missing.txt", tmp_path / "db3", "2")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "missing.txt:2:" in result.stderr and "9.png: cannot read the image" in result.stderr
    assert not (tmp_path / "db3").exists() and not (tmp_path / "db2").exists()


def test_query_split_and_triplet_sampling():
    labels = np.repeat(np.arange(10), 30)
    rng = np.random.default_rng(1)
    queries, pool = split_queries(labels, 5, rng)
    assert len(queries) == 50 and len(pool) == 250 and np.all(np.diff(queries) > 0)
    assert np.array_equal(np.bincount(labels[queries]), np.full(10, 5))
    anchor, similar, dissimilar = sample_triplets(labels[pool], 2000, rng)
    pool_labels = labels[pool]
    assert np.all(pool_labels[anchor] == pool_labels[similar]) and np.all(anchor != similar)
    assert np.all(pool_labels[anchor] != pool_labels[dissimilar])
    # Uniform over the other members: every same-class image gets picked.
    cls0 = np.flatnonzero(pool_labels == 0)
    assert set(similar[pool_labels[anchor] == 0]) == set(cls0)


def _fake_archive(path, per_class=6):
    """The authors' archive layout: examples/cvprw15-cifar10/dataset/{train,val}.txt + images."""
    folder = path.parent / "fake"
    prefix = folder / "examples" / "cvprw15-cifar10" / "dataset"
    rng = np.random.default_rng(2)
    train, val = [], []
    for c in range(10):
        for i in range(per_class):
            name = f"batch1/{c}_{i}.jpg"
            os.makedirs(prefix / "batch1", exist_ok=True)
            cv2.imwrite(str(prefix / name), rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
            (train if i < per_class - 1 else val).append(f"{name} {c}")
    val = [f"test/{k + 1}.jpg {line.split()[1]}" for k, line in enumerate(val)]
    os.makedirs(prefix / "test", exist_ok=True)
    for k, line in enumerate(val):
        cv2.imwrite(str(prefix / line.split()[0]), rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    (prefix / "train.txt").write_text("\n".join(train) + "\n")
    (prefix / "val.txt").write_text("\n".join(val) + "\n")
    with tarfile.open(path, "w:gz") as tar:
        tar.add(folder / "examples", arcname="examples")


@pytest.mark.slow
def test_prepare_cifar10_dnnh(tmp_path):
    _fake_archive(tmp_path / "a.tar.gz")
    paths = prepare_cifar10_dnnh(tmp_path / "a.tar.gz", tmp_path / "out", triplets=30, seed=3, per_class=2)
    query = open(paths["query.txt"]).read().splitlines()
    pool = open(paths["pool.txt"]).read().splitlines()
    assert len(query) == 20 and len(pool) == 40 and not set(query) & set(pool)
    assert open(paths["query_label.txt"]).read().split() == [str(int(line.split()[1]) + 1) for line in query]
    assert set(open(paths["pool_label.txt"]).read().split()) == {str(c) for c in range(1, 11)}
    triplets = DatumLMDB(paths["triplet_lmdb"])
    assert len(triplets) == 30 and triplets.read(0)[0].shape == (9, 32, 32)
    pool_db = DatumLMDB(paths["pool_lmdb"])
    image = pool_db.read(0)[0]
    assert len(pool_db) == 40 and np.array_equal(image[:3], image[3:6]) and np.array_equal(image[:3], image[6:])
    assert caffe_io.read_blobproto(paths["triplet_mean"]).shape == (1, 9, 32, 32)
    again = prepare_cifar10_dnnh(tmp_path / "a.tar.gz", tmp_path / "out2", triplets=30, seed=3, per_class=2)
    assert open(again["triplets.txt"]).read() == open(paths["triplets.txt"]).read()  # seeded
    # The same split as 3-channel databases (SSDH on DNNH's images), and SSDH trained on it.
    from ssdh_port import runner, spec
    from ssdh_port.data.dnnh import split_image_dbs

    images = split_image_dbs(tmp_path / "out", tmp_path / "out" / "ssdh_split")
    train, test = DatumLMDB(images["train"]), DatumLMDB(images["test"])
    assert (len(train), len(test)) == (40, 20)
    assert np.array_equal(train.read(5)[0], pool_db.read(5)[0][:3])
    assert [test.read(i)[1] for i in range(20)] == [int(v) - 1 for v in open(paths["query_label.txt"]).read().split()]
    # The shipped DNNH spec's SSDH variant, small: FastNet-SSDH on the split, with caffe-dnnh's metric.
    dnnh = spec.load(spec.find("dnnh")).with_fields({"data.dir": str(tmp_path / "out"),
                                                     "protocol.options.dnnh_top": 40})
    small = {"epochs": 1.0, "batch_size": 8, "widths": "8,8,8", "tta": 1, "precision": "fp32"}
    for variant in dnnh.variants:
        variant.set = {**variant.set, "model.train": small} if variant.name.startswith("ssdh") else variant.set
    result = runner.run(dnnh, str(tmp_path / "ssdh"), only=["ssdh12"])
    report, = result.reports
    extra = report.extra
    assert report.queries == 20 and report.database == 40 and report.bits == 12
    assert report.method == "SSDH-12 (FastNet, scratch) on DNNH's split"
    assert 0 < extra["dnnh_map"] <= 1 and len(extra["dnnh_map_per_class"]) == 10
    assert json.load(open(tmp_path / "ssdh" / "table.json"))["rows"][0]["extra"]["dnnh_map"] == extra["dnnh_map"]
    assert json.load(open(tmp_path / "ssdh" / "runs" / "ssdh12" / "report.json"))["rows"][0]["bits"] == 12


def test_dnnh_recipe_trains_one_blob_per_shared_name_and_encodes(tmp_path):
    import torch

    from ssdh_port.caffe.net import CaffeNet
    from ssdh_port.caffe.proto import caffe_pb2 as pb
    from ssdh_port.caffe.solver import Solver
    from ssdh_port.data.db import DatumDBWriter
    from ssdh_port.pipeline import find_latent_blob

    recipe = os.path.join(ROOT, "prototxt", "dnnh12")
    net = caffe_io.read_net_prototxt(os.path.join(recipe, "train.prototxt"))
    rng = np.random.default_rng(4)
    with DatumDBWriter(tmp_path / "triplets") as writer:
        for k in range(4):
            writer.put_array(f"{k:08d}", rng.integers(0, 256, (9, 32, 32), dtype=np.uint8), label=1)
    caffe_io.write_blobproto(np.full((1, 9, 32, 32), 120, np.float32), tmp_path / "mean.binaryproto")
    data = net.layer[0]
    data.data_param.source, data.data_param.batch_size = str(tmp_path / "triplets"), 2
    data.transform_param.mean_file = str(tmp_path / "mean.binaryproto")
    param = pb.SolverParameter(base_lr=0.01, momentum=0.9, max_iter=2, display=0, random_seed=1,
                               snapshot_prefix=str(tmp_path / "s"))
    param.net_param.CopyFrom(net)
    solver = Solver(param, log=lambda line: None)
    streams = [m for m in solver.net.layers if m.name.startswith("conv1/")]
    assert len(streams) == 3 and all(m.blobs[0] is streams[0].blobs[0] for m in streams)
    before = streams[0].blobs[0].detach().clone()
    solver.solve()
    assert not torch.equal(before, streams[0].blobs[0].detach())  # trained, once, for all three streams
    assert len(solver.params) == len({id(b) for m in solver.net.layers for b in m.blobs})
    # The deploy net: one 3-channel image through stream 1 to the 12 concatenated sigmoids.
    solver.net.save_caffemodel(tmp_path / "w.caffemodel")
    deploy = CaffeNet(os.path.join(recipe, "deploy.prototxt"), weights=str(tmp_path / "w.caffemodel"))
    assert find_latent_blob(deploy) == "concat_s1/cifar"
    out = deploy(torch.zeros(1, 3, 32, 32))
    assert out["concat_s1/cifar"].shape == (1, 12)
    # A 9-channel mean against 3-channel images: a clear error.
    from ssdh_port.data.transformer import DataTransformer, TransformError

    transform = DataTransformer(pb.TransformationParameter(mean_file=str(tmp_path / "mean.binaryproto")), "TEST")
    with pytest.raises(TransformError, match=r"mean file .*mean.binaryproto has shape \(9, 32, 32\), the data is "
                                             r"\(3, 32, 32\)"):
        transform(np.zeros((1, 3, 32, 32), np.uint8))


@pytest.mark.slow
def test_the_dnnh_spec_trains_encodes_with_the_test_nets_and_adds_the_metric(tmp_path):
    # The dnnh spec's DNNH-12 variant through the runner on a small split: 100 queries and
    # 100 pool images (the author's test nets read batches of 100), one training step.
    from ssdh_port import runner, spec

    _fake_archive(tmp_path / "a.tar.gz", per_class=20)
    prepare_cifar10_dnnh(tmp_path / "a.tar.gz", tmp_path / "out", triplets=100, seed=3, per_class=10)
    dnnh = spec.load(spec.find("dnnh")).with_fields({
        "data.dir": str(tmp_path / "out"), "protocol.options.dnnh_top": 50,
        "model.solver": {"max_iter": 1, "display": 1, "stepvalue": [1, 2]}})
    result = runner.run(dnnh, tmp_path / "run", only=["dnnh12"])
    report, = result.reports
    assert (report.method, report.bits, report.queries, report.database) == ("DNNH-12", 12, 100, 100)
    assert report.extra["iterations"] == 1 and report.extra["paper"] == 0.552 and report.extra["author"] == 0.413
    assert 0 < report.extra["dnnh_map"] <= 1 and 0 < report.extra["dnnh_map_compat"] <= 1
    run_dir = tmp_path / "run" / "runs" / "dnnh12"
    assert (run_dir / "query.ssdh").exists() and (run_dir / "pool.ssdh").exists()
    assert "clip_gradients: 0.5" in (run_dir / "solver.prototxt").read_text()
    assert "| DNNH-12 | 12 |" in (tmp_path / "run" / "table.md").read_text()
