"""Every net and solver definition in ../shared/data builds, in both phases.

Data layers need their databases, which Caffe would also open at set-up: each
data layer gets a small database of the right image size (the size of its mean
file where that file exists), written in the backend the prototxt names."""
import glob
import os

import numpy as np
import pytest

from ssdh_port.caffe import io as caffe_io
from ssdh_port.caffe.net import CaffeNet, layer_included
from ssdh_port.caffe.proto import caffe_pb2 as pb
from ssdh_port.caffe.solver import read_solver
from ssdh_port.data.db import DatumDBWriter
from ssdh_port.pipeline.recipe import latent_layer, remove_latent
from tests.shared_data import SHARED, needs_shared

PROTOTXTS = sorted(glob.glob(os.path.join(SHARED, "**", "*.prototxt"), recursive=True))
RECIPES = sorted(glob.glob(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                        "prototxt", "*", "*.prototxt")))
NETS = [p for p in PROTOTXTS if "base_lr" not in open(p).read()]
SOLVERS = [p for p in PROTOTXTS if "base_lr" in open(p).read()]


def _ids(paths):
    return [os.path.relpath(p, SHARED) for p in paths]


def _real_mean(mean_file, prototxt):
    for candidate in (mean_file, os.path.join(os.path.dirname(prototxt), mean_file),
                      mean_file.replace("/work/steering/shared/data", SHARED)):
        if os.path.isfile(candidate):
            return candidate
    return None


def _with_fixture_data(net, prototxt, folder):
    """Point every data layer of net at a fresh database (and mean file) in folder."""
    for index, layer in enumerate(net.layer):
        if layer.type not in ("Data", "ImageData", "HDF5Data"):
            continue
        if layer.type == "HDF5Data":
            _hdf5_fixture(layer, folder, index)
            continue
        transform = layer.transform_param
        shape = (1, 28, 28) if "mnist" in layer.data_param.source else (3, 32, 32)
        channels = _sliced_channels(net, layer.top[0])
        if channels:  # stacked images (DNNH triplets: 9 channels sliced into three streams)
            shape = (channels,) + shape[1:]
        if transform.crop_size > 32:
            shape = (3, 256, 256)  # ImageNet-style nets crop 224/227 out of 256
        if transform.mean_file:
            real = _real_mean(transform.mean_file, prototxt)
            if real:
                shape = caffe_io.read_blobproto(real).shape[1:]
                transform.mean_file = real
            else:
                transform.mean_file = os.path.join(folder, f"mean{index}.binaryproto")
                caffe_io.write_blobproto(np.full((1,) + shape, 100, np.float32), transform.mean_file)
        assert layer.type == "Data", f"{layer.name}: add a fixture for {layer.type}"
        backend = "lmdb" if layer.data_param.backend == pb.DataParameter.LMDB else "leveldb"
        source = os.path.join(folder, f"db{index}_{backend}")
        rng = np.random.default_rng(index)
        with DatumDBWriter(source, backend=backend) as writer:
            for k in range(3):
                writer.put_array(f"{k:08d}", rng.integers(0, 256, shape, dtype=np.uint8), label=k)
        layer.data_param.source = source
    return net


def _sliced_channels(net, top):
    """Channels of a data top that a Slice along the channels cuts into equal parts
    (slice points 3, 6 -> 9), else None."""
    for layer in net.layer:
        if layer.type == "Slice" and list(layer.bottom) == [top]:
            param = layer.slice_param
            axis = param.slice_dim if param.HasField("slice_dim") else param.axis
            points = list(param.slice_point)
            if axis == 1 and points:
                return points[-1] + points[0]
    return None


def _phases_with_data(net):
    """The phases in which some data or input layer is included: Caffe cannot build
    a net whose first bottom has no producer (a TEST-only data layer, TRAIN phase)."""
    sources = [layer for layer in net.layer if layer.type in ("Data", "ImageData", "HDF5Data", "Input",
                                                               "DummyData", "MemoryData")]
    if not sources or net.input:
        return ("TRAIN", "TEST")
    return tuple(phase for phase in ("TRAIN", "TEST")
                 if any(layer_included(layer, phase) for layer in sources))


def _hdf5_fixture(layer, folder, index):
    """Three rows of two-digit mosaics with signed multi-labels (the multi-label recipe)."""
    import h5py

    assert "pairs" in layer.hdf5_data_param.source, f"{layer.name}: add a fixture for this HDF5 source"
    path = os.path.join(folder, f"h5_{index}.h5")
    rng = np.random.default_rng(index)
    with h5py.File(path, "w") as f:
        f["data"] = rng.random((3, 1, 28, 56), dtype=np.float32)
        f["label"] = rng.choice([-1.0, 0.0, 1.0], (3, 10)).astype(np.float32)
    with open(os.path.join(folder, f"h5_{index}.txt"), "w") as f:
        f.write(path + "\n")
    layer.hdf5_data_param.source = os.path.join(folder, f"h5_{index}.txt")


def _assert_one_blob_per_param_name(net):
    """Layers whose param specs carry one name hold one blob (the DNNH streams)."""
    by_name = {}
    for module in net.layers:
        for i, spec in enumerate(module.param.param):
            if spec.name and i < len(module.blobs):
                by_name.setdefault(spec.name, []).append(module.blobs[i])
    for name, blobs in by_name.items():
        assert all(b is blobs[0] for b in blobs), name
    unique = {id(b) for m in net.layers for b in m.blobs}
    assert len(unique) == len(net.param_multipliers) == len(list(net.parameters()))


@needs_shared
@pytest.mark.parametrize("prototxt", NETS, ids=_ids(NETS))
def test_every_shared_net_builds_in_both_phases(prototxt, tmp_path, monkeypatch):
    net = caffe_io.read_net_prototxt(prototxt)
    has_data = any(layer.type in ("Data", "ImageData", "HDF5Data") for layer in net.layer)
    if "c_data" in prototxt or "e_solver" in prototxt:
        monkeypatch.chdir(os.path.dirname(prototxt))  # their own relative data
    elif has_data:
        net = _with_fixture_data(net, prototxt, str(tmp_path))
    phases = _phases_with_data(net)
    assert phases, f"{prototxt}: no phase includes a data layer"
    for phase in phases:
        built = CaffeNet(net, phase=phase)
        assert len(built.layers) > 0
        _assert_one_blob_per_param_name(built)
        small = sum(p.numel() for p in built.parameters()) < 5_000_000
        out = built() if small and not built.input_names else None  # ImageNet nets: too slow here
        if out is not None and phase == "TRAIN" and any(m.is_loss for m in built.layers):
            assert out.loss is not None and bool(out.loss.isfinite())


@pytest.mark.parametrize("prototxt", RECIPES, ids=[os.path.relpath(p, os.path.dirname(os.path.dirname(p)))
                                                   for p in RECIPES])
def test_every_recipe_builds_in_both_phases(prototxt, tmp_path):
    net = _with_fixture_data(caffe_io.read_net_prototxt(prototxt), prototxt, str(tmp_path))
    for phase in _phases_with_data(net):
        built = CaffeNet(net, phase=phase)
        assert len(built.layers) > 0
        _assert_one_blob_per_param_name(built)


TRAIN_VALS = [p for p in RECIPES if p.endswith("train_val.prototxt")]


@pytest.mark.parametrize("prototxt", TRAIN_VALS, ids=[os.path.basename(os.path.dirname(p)) for p in TRAIN_VALS])
def test_every_recipe_without_its_latent_layer(prototxt, tmp_path):
    """The backbone variant: no latent layer, no E2/E3, the classifier on the latent's input."""
    net = caffe_io.read_net_prototxt(prototxt)
    latent = latent_layer(net)
    latent_input = latent.bottom[0]
    sigmoid = next(layer.top[0] for layer in net.layer if layer.type == "Sigmoid" and layer.bottom[0] == latent.top[0])
    classifiers = [layer.name for layer in net.layer if layer.type == "InnerProduct" and sigmoid in layer.bottom]
    remove_latent(net)
    assert not any(layer.type in ("K1_EuclideanLoss", "K2_EuclideanLoss", "Sigmoid") or layer.name == latent.name
                   for layer in net.layer)
    for layer in net.layer:
        if layer.name in classifiers:
            assert list(layer.bottom) == [latent_input]
    built = CaffeNet(_with_fixture_data(net, prototxt, str(tmp_path)), phase="TRAIN")
    assert latent.top[0] not in built.blob_shapes and classifiers
    if sum(p.numel() for p in built.parameters()) < 5_000_000:
        assert bool(built().loss.isfinite())
    with pytest.raises(ValueError, match="no latent layer"):
        remove_latent(net)


@pytest.mark.parametrize("solver", sorted(glob.glob(os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "prototxt", "*", "solver.yaml"))))
def test_every_recipe_solver_parses(solver):
    param = read_solver(solver)
    assert param.base_lr > 0 and (param.net or param.train_net)


@needs_shared
@pytest.mark.parametrize("solver", SOLVERS, ids=_ids(SOLVERS))
def test_every_shared_solver_parses(solver):
    param = read_solver(solver)
    assert param.base_lr > 0 and (param.net or param.train_net)
