"""The Caffe data path against what real Caffe made and produced
(../shared/data/caffe-oracle/c_data): convert_imageset records, compute_image_mean,
Data and ImageData batches, plus the other transform paths and bad input."""
import hashlib
import json
import os

import cv2
import numpy as np
import pytest
import torch

from ssdh_port.caffe import io as caffe_io
from ssdh_port.caffe.net import CaffeNet
from ssdh_port.caffe.proto import caffe_pb2 as pb
from ssdh_port.data.datum import DatumError, datum_to_array, encoded_datum
from ssdh_port.data.imageset import convert_imageset, write_image_mean
from ssdh_port.data.db import DatumLMDB, DatumDBWriter, DatabaseError
from ssdh_port.data.transformer import DataTransformer, TransformError
from tests.shared_data import needs_shared, oracle

C_DATA = oracle("c_data")
CONFIGS = ["d1_lmdb_color256_crop227_meanfile", "d2_lmdb_color256_crop227_meanvalue_scale",
           "i1_imagedata_256_crop227_meanvalue"]


@needs_shared
@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("prefetch", [0, 2])
def test_data_layers_match_caffe_batches(config, prefetch, monkeypatch):
    monkeypatch.chdir(C_DATA)  # the prototxts use paths relative to c_data, as Caffe did
    net = CaffeNet(f"net_{config}.prototxt")
    if prefetch:  # batches read ahead on a thread are the same batches
        net.start_prefetch(prefetch)
    expected = np.load(f"{config}.npz")
    for batch in range(3):  # the third batch wraps around the end of the DB
        out = net()
        np.testing.assert_allclose(out["data"].numpy(), expected[f"batch{batch}/data"].astype(np.float32),
                                   rtol=0, atol=1e-6)
        assert out["label"].dtype == torch.float32
        np.testing.assert_array_equal(out["label"].numpy(), expected[f"batch{batch}/label"])
    net.stop_prefetch()


def test_prefetcher_keeps_order_and_reports_errors():
    from ssdh_port.data.prefetch import BatchPrefetcher

    produced = iter(range(5))

    def read():
        value = next(produced)
        if value == 4:
            raise OSError("record 4 is corrupt")
        return value

    prefetcher = BatchPrefetcher(read, depth=2)
    assert [prefetcher.next() for _ in range(4)] == [0, 1, 2, 3]
    with pytest.raises(OSError, match="record 4 is corrupt"):
        prefetcher.next()
    assert not prefetcher.running
    with pytest.raises(RuntimeError, match="closed"):
        prefetcher.next()
    with pytest.raises(ValueError, match="depth must be >= 1"):
        BatchPrefetcher(read, depth=0)


@needs_shared
def test_convert_imageset_and_mean_are_byte_identical_to_caffe(tmp_path):
    count = convert_imageset(os.path.join(C_DATA, "demo_imgs"), os.path.join(C_DATA, "list.txt"),
                             tmp_path / "db", resize_height=256, resize_width=256)
    assert count == 12
    records = json.load(open(os.path.join(C_DATA, "meta.json")))["lmdb_records"]["lmdb_color256"]
    db = DatumLMDB(tmp_path / "db")
    assert [k.decode() for k in db.keys] == [r["key"] for r in records]
    for index, record in enumerate(records):
        datum = db.datum(index)
        assert (datum.label, datum.channels, datum.height, datum.width) == (
            record["label"], record["channels"], record["height"], record["width"])
        assert hashlib.md5(datum.data).hexdigest() == record["data_md5"]
    write_image_mean(tmp_path / "db", tmp_path / "mean.binaryproto")
    assert (tmp_path / "mean.binaryproto").read_bytes() == open(
        os.path.join(C_DATA, "mean_color256.binaryproto"), "rb").read()


@needs_shared
def test_gray_encoded_and_force_paths(tmp_path):
    root, listing = os.path.join(C_DATA, "demo_imgs"), os.path.join(C_DATA, "list.txt")
    convert_imageset(root, listing, tmp_path / "gray", gray=True)
    convert_imageset(root, listing, tmp_path / "enc", encoded=True)
    convert_imageset(root, listing, tmp_path / "png", encoded=True, encode_type="png")
    gray, enc, png = (DatumLMDB(tmp_path / n) for n in ("gray", "enc", "png"))
    first = os.path.join(root, "air1.jpg")
    assert gray.read(0)[0].shape == (1, 32, 32)
    np.testing.assert_array_equal(gray.read(0)[0][0], cv2.imread(first, cv2.IMREAD_GRAYSCALE))
    assert enc.datum(0).encoded and enc.datum(0).data == open(first, "rb").read()
    color = cv2.imread(first, cv2.IMREAD_COLOR).transpose(2, 0, 1)
    np.testing.assert_array_equal(enc.read(0)[0], color)
    np.testing.assert_array_equal(png.read(0)[0], color)  # PNG is lossless
    assert enc.read(0, force_gray=True)[0].shape == (1, 32, 32)
    assert png.read(0, force_color=True)[0].shape == (3, 32, 32)


def _transformer(phase="TEST", **fields):
    param = pb.TransformationParameter(**{k: v for k, v in fields.items() if k != "mean_value"})
    param.mean_value.extend(fields.get("mean_value", []))
    return DataTransformer(param, phase, seed=3)


def test_transformer_reference_semantics():
    rng = np.random.default_rng(0)
    batch = rng.integers(0, 256, (4, 3, 9, 11), dtype=np.uint8)
    # No crop: (x - mean_value) * scale, channels as stored.
    out = _transformer(mean_value=[1, 2, 3], scale=0.5)(batch).numpy()
    np.testing.assert_allclose(out, (batch - np.array([1, 2, 3]).reshape(1, 3, 1, 1)) * 0.5)
    # TEST crop: centre with integer division offsets.
    out = _transformer(crop_size=5)(batch).numpy()
    np.testing.assert_array_equal(out, batch[:, :, 2:7, 3:8])
    # TRAIN crop + mirror: each image is some window, mirrored or not, from the drawn offsets.
    t = _transformer("TRAIN", crop_size=5, mirror=True)
    rows, cols, flips = t.draw(4, 9, 11)
    out = t(batch, rows, cols, flips).numpy()
    for i in range(4):
        window = batch[i, :, rows[i]:rows[i] + 5, cols[i]:cols[i] + 5]
        np.testing.assert_array_equal(out[i], window[:, :, ::-1] if flips[i] else window)
    # Reproducible with a seed.
    a = _transformer("TRAIN", crop_size=5, mirror=True)(batch)
    b = _transformer("TRAIN", crop_size=5, mirror=True)(batch)
    assert torch.equal(a, b)


def test_transformer_mirrors_in_the_test_phase_too():
    """Caffe's transformer draws mirror && Rand(2) whatever the phase: a TEST net with
    mirror: true (the authors' KevinNet) flips half of its images, crop still centred."""
    rng = np.random.default_rng(2)
    batch = rng.integers(0, 256, (400, 1, 6, 7), dtype=np.uint8)
    t = _transformer("TEST", crop_size=4, mirror=True)
    rows, cols, flips = t.draw(400, 6, 7)
    assert set(rows) == {1} and set(cols) == {1}
    assert 150 < flips.sum() < 250
    out = _transformer("TEST", crop_size=4, mirror=True)(batch).numpy()
    centre = batch[:, :, 1:5, 1:5]
    flipped = np.array([np.array_equal(o, c[:, :, ::-1]) and not np.array_equal(o, c)
                        for o, c in zip(out, centre)])
    assert flipped.sum() == (flips & ~np.array([np.array_equal(c, c[:, :, ::-1]) for c in centre])).sum()
    # The same draws as a TRAIN transformer with the same seed makes for its flips.
    train_flips = _transformer("TRAIN", mirror=True).draw(400, 6, 7)[2]
    assert np.array_equal(_transformer("TEST", mirror=True).draw(400, 6, 7)[2], train_flips)


def test_transformer_mean_file_is_cropped_with_the_image(tmp_path):
    rng = np.random.default_rng(1)
    mean = rng.normal(100, 10, (1, 3, 9, 11)).astype(np.float32)
    caffe_io.write_blobproto(mean, tmp_path / "mean.binaryproto")
    batch = rng.integers(0, 256, (2, 3, 9, 11), dtype=np.uint8)
    t = _transformer("TRAIN", crop_size=5, mirror=True, mean_file=str(tmp_path / "mean.binaryproto"))
    rows, cols, flips = np.array([1, 4]), np.array([6, 0]), np.array([True, False])
    out = t(batch, rows, cols, flips).numpy()
    for i in range(2):
        window = batch[i, :, rows[i]:rows[i] + 5, cols[i]:cols[i] + 5] - mean[0, :, rows[i]:rows[i] + 5,
                                                                              cols[i]:cols[i] + 5]
        np.testing.assert_allclose(out[i], window[:, :, ::-1] if flips[i] else window, rtol=1e-6)
    with pytest.raises(TransformError, match=r"has shape \(3, 9, 11\), the data is \(3, 8, 8\)"):
        t(np.zeros((1, 3, 8, 8), np.uint8))


@pytest.mark.parametrize("phase,crop", [("TRAIN", 0), ("TEST", 0), ("TEST", 5)])
def test_transformer_batch_window_equals_per_image_windows(tmp_path, phase, crop):
    """One window for the batch (no crop, TEST's centre crop) mirrors and subtracts
    the mean image by image as the per-image loop and the gathered (GPU) path do."""
    rng = np.random.default_rng(4)
    mean = rng.normal(100, 10, (1, 3, 9, 11)).astype(np.float32)
    caffe_io.write_blobproto(mean, tmp_path / "mean.binaryproto")
    batch = torch.from_numpy(rng.integers(0, 256, (6, 3, 9, 11), dtype=np.uint8))
    for fields in ({"mean_file": str(tmp_path / "mean.binaryproto")}, {"mean_value": [3, 4, 5]}, {}):
        t = _transformer(phase, crop_size=crop, mirror=True, scale=0.25, **fields)
        rows, cols, flips = t.draw(6, 9, 11)
        assert 0 < flips.sum() < 6
        out = t(batch, rows, cols, flips)
        h, w = (crop or 9), (crop or 11)
        per_image = torch.empty_like(out)
        for i, (r, c) in enumerate(zip(rows, cols)):  # Caffe's Transform, image by image
            window = batch[i, :, r:r + h, c:c + w].float()
            if t.mean is not None:
                window = window - t.mean[:, r:r + h, c:c + w]
            elif t.mean_values:
                window = window - torch.tensor([3.0, 4.0, 5.0]).view(-1, 1, 1)
            per_image[i] = (window.flip(-1) if flips[i] else window) * 0.25
        gathered = t._windows_gathered(batch, rows, cols, flips, h, w)
        if t.mean_values:
            gathered -= torch.tensor([3.0, 4.0, 5.0]).view(1, -1, 1, 1)
        torch.testing.assert_close(out, per_image, rtol=0, atol=0)
        torch.testing.assert_close(out, gathered * 0.25, rtol=0, atol=0)


def test_bad_data_input(tmp_path):
    with pytest.raises(DatabaseError, match="no LMDB database here"):
        DatumLMDB(tmp_path / "missing")
    with DatumDBWriter(tmp_path / "db") as writer:
        writer.put("a", encoded_datum(b"not an image", 1))
        writer.put_raw(b"b", b"\xff\xff garbage")
    db = DatumLMDB(tmp_path / "db")
    with pytest.raises(DatumError, match=r"record b'a': cannot decode the encoded image"):
        db.read(0)
    with pytest.raises(DatumError, match=r"record b'b': not a Caffe Datum"):
        db.read(1)
    with pytest.raises(TransformError, match="crop_size 50 is larger than the 9 x 11 images"):
        _transformer(crop_size=50)(np.zeros((1, 3, 9, 11), np.uint8))
    with pytest.raises(DatumError, match="holds neither data"):
        datum_to_array(pb.Datum(channels=1, height=1, width=1))


def test_failed_conversion_leaves_no_database(tmp_path):
    (tmp_path / "list.txt").write_text("missing.jpg 0\n")
    with pytest.raises(Exception, match="missing.jpg: cannot read the image"):
        convert_imageset(str(tmp_path), str(tmp_path / "list.txt"), tmp_path / "db", strict=True)
    assert not (tmp_path / "db").exists()
    # Without strict an unreadable image is skipped; with nothing readable it is still an error.
    with pytest.raises(Exception, match="none of the 1 listed images could be read"):
        convert_imageset(str(tmp_path), str(tmp_path / "list.txt"), tmp_path / "db")
    assert not (tmp_path / "db").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["list.txt"]


@needs_shared
def test_torch_dataset_matches_the_data_layer(monkeypatch):
    from ssdh_port.data.datum_dataset import DatumDataset

    monkeypatch.chdir(C_DATA)
    param = pb.TransformationParameter(crop_size=227, mean_file="mean_color256.binaryproto")
    dataset = DatumDataset("lmdb_color256", transform=DataTransformer(param, "TEST"))
    loader = torch.utils.data.DataLoader(dataset, batch_size=5, num_workers=2)
    data, labels = next(iter(loader))
    expected = np.load("d1_lmdb_color256_crop227_meanfile.npz")
    np.testing.assert_allclose(data.numpy(), expected["batch0/data"].astype(np.float32), atol=1e-6)
    assert labels.tolist() == [0, 1, 2, 3, 4]
    raw, label = DatumDataset("lmdb_color256")[11]
    assert raw.dtype == torch.uint8 and tuple(raw.shape) == (3, 256, 256) and label == 1


@pytest.mark.cuda
def test_gpu_transform_equals_cpu():
    rng = np.random.default_rng(2)
    batch = rng.integers(0, 256, (8, 3, 40, 40), dtype=np.uint8)
    t = _transformer("TRAIN", crop_size=32, mirror=True, mean_value=[10, 20, 30], scale=0.5)
    rows, cols, flips = t.draw(8, 40, 40)
    cpu = t(batch, rows, cols, flips)
    gpu = t(torch.from_numpy(batch).cuda(), rows, cols, flips)
    assert torch.equal(gpu.cpu(), cpu)


def _hdf5_net(tmp_path, shuffle, batch=4):
    import h5py

    files = []
    for index, rows in enumerate((5, 3)):
        path = tmp_path / f"part{index}.h5"
        with h5py.File(path, "w") as f:
            f["data"] = (100 * index + np.arange(rows, dtype=np.float32))[:, None]
            f["label"] = np.ones((rows, 2), dtype=np.float64)
        files.append(str(path))
    (tmp_path / "list.txt").write_text("\n".join(files) + "\n")
    text = (f'layer {{ name: "d" type: "HDF5Data" top: "data" top: "label" hdf5_data_param '
            f'{{ source: "{tmp_path / "list.txt"}" batch_size: {batch} shuffle: {str(shuffle).lower()} }} }}')
    return CaffeNet(caffe_io.parse_net_prototxt(text), phase="TRAIN")


def _hdf5_rows(net, batches):
    layer = net.layers[0]
    out = []
    for _ in range(batches):
        data, label = layer.forward()
        assert data.dtype == torch.float32 and label.shape == (4, 2)
        out += data[:, 0].int().tolist()
    return out


def test_hdf5_data_order_and_shuffle(tmp_path):
    # Without shuffle: file after file, wrapping around, as Caffe's HDF5Data.
    assert _hdf5_rows(_hdf5_net(tmp_path, False), 3) == [0, 1, 2, 3, 4, 100, 101, 102, 0, 1, 2, 3]
    # With shuffle: every epoch (8 rows) visits each row once; a seed fixes the order.
    net = _hdf5_net(tmp_path, True)
    net.layers[0].reseed(7)
    rows = _hdf5_rows(net, 4)
    assert sorted(rows[:8]) == sorted(rows[8:]) == [0, 1, 2, 3, 4, 100, 101, 102]
    assert rows != [0, 1, 2, 3, 4, 100, 101, 102] * 2
    again = _hdf5_net(tmp_path, True)
    again.layers[0].reseed(7)
    assert _hdf5_rows(again, 4) == rows
