"""CaffeNet against blobs, gradients and shapes computed by the real BVLC Caffe
(../shared/data/caffe-oracle), plus the network-level semantics and errors."""
import json
import os

import numpy as np
import pytest
import torch

from ssdh_port.caffe import io as caffe_io
from ssdh_port.caffe.layers import LayerError
from ssdh_port.caffe.net import CaffeNet
from tests.shared_data import needs_shared, oracle, shared

TOL = dict(rtol=1e-5, atol=2e-5)


def _close(actual, expected, scale_tol=True):
    actual = actual.detach().numpy() if isinstance(actual, torch.Tensor) else actual
    atol = 1e-5 * max(1.0, float(np.abs(expected).max())) if scale_tol else 2e-5
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=atol)


def _layer_case(name):
    folder = oracle("a_layers", name)
    net = CaffeNet(f"{folder}/deploy.prototxt", weights=f"{folder}/weights.caffemodel")
    inputs = {k: torch.from_numpy(v) for k, v in np.load(f"{folder}/input.npz").items()}
    return folder, net, inputs


@needs_shared
@pytest.mark.parametrize("case", ["mini_alexnet_ssdh", "loss_layers"])
def test_forward_blobs_match_caffe(case):
    folder, net, inputs = _layer_case(case)
    out = net(**inputs)
    expected = np.load(f"{folder}/forward_blobs.npz")
    assert list(expected.keys()) == [k for k in out.keys() if k in expected]
    for name in expected.keys():
        assert tuple(out[name].shape) == expected[name].shape, name
        _close(out[name], expected[name])


@needs_shared
@pytest.mark.parametrize("case", ["mini_alexnet_ssdh", "loss_layers"])
def test_backward_matches_caffe(case):
    folder, net, inputs = _layer_case(case)
    first = net.input_names[0]
    inputs[first].requires_grad_(True)
    out = net(**inputs)
    ref = np.load(f"{folder}/backward.npz")
    tops = [k.split("/", 1)[1] for k in ref.keys() if k.startswith("topdiff/")]
    if tops:
        torch.autograd.backward([out[t] for t in tops],
                                [torch.from_numpy(ref[f"topdiff/{t}"]) for t in tops])
    else:  # losses seeded with their loss weights
        out.loss.backward()
    checked = 0
    for key in ref.keys():
        if key.startswith("paramdiff/"):
            _, layer, index = key.split("/")
            _close(net.layer(layer).blobs[int(index)].grad, ref[key])
            checked += 1
    if net.net_param.force_backward:  # otherwise Caffe leaves input diffs at 0
        _close(inputs[first].grad, ref[f"blobdiff/{first}"])
    assert checked > 0


@needs_shared
@pytest.mark.parametrize("name", ["alexnet_ssdh48", "vgg16_ssdh48", "vgg16_avg_ssdh48"])
def test_full_size_deploy_shapes_match_caffe(name):
    expected = json.load(open(oracle("b_fullsize_shapes", f"{name}.json")))
    net = CaffeNet(oracle("b_fullsize_shapes", f"{name}.deploy.prototxt"))
    assert [[m.name, m.type] for m in net.layers] == expected["layers"]
    for blob, shape in expected["blobs"].items():
        assert net.blob_shapes[blob] == tuple(shape), blob
    params = {k: [list(t.shape) for t in v] for k, v in net.caffe_params().items()}
    assert params == expected["params"]
    assert sum(t.numel() for v in net.caffe_params().values() for t in v) == expected["num_params_total"]


@needs_shared
def test_imagenet_mean_reads_like_caffe():
    info = json.load(open(oracle("b_fullsize_shapes", "imagenet_mean_binaryproto.json")))
    mean = caffe_io.read_blobproto(shared("ssdh-reference", "Caffe-DeepBinaryCode", "data",
                                          "ilsvrc12", "imagenet_mean.binaryproto"))
    assert list(mean.shape) == info["shape"]
    np.testing.assert_allclose(mean.mean(axis=(0, 2, 3)), info["channel_mean_BGR"], rtol=1e-6)


def _mnist_inputs():
    from ssdh_port.data import mnist

    images, labels = mnist.load_split("test")
    return torch.from_numpy(images).float().unsqueeze(1) * 0.00390625, labels


@needs_shared
@pytest.mark.parametrize("weights", ["lenet/lenet_iter_10000.caffemodel",
                                     "lenet/v1_everpeace_2014/lenet_iter_10000.caffemodel"])
def test_real_lenet_on_mnist(weights):
    folder = shared("caffe-models", "lenet")
    prototxt = f"{folder}/lenet.prototxt" if "v1" not in weights else f"{folder}/v1_everpeace_2014/lenet.prototxt"
    net = CaffeNet(prototxt, weights=shared("caffe-models", weights), input_shapes={"data": (100, 1, 28, 28)})
    data, labels = _mnist_inputs()
    with torch.no_grad():
        scores = torch.cat([net(data[i:i + 1000])["ip2"] for i in range(0, 10000, 1000)])
    predictions = scores.argmax(dim=1).numpy()
    if "v1" in weights:
        assert (predictions == labels).mean() > 0.98
        return
    ref = np.load(oracle("d_real_models", "lenet_v2_danielhers", "outputs.npz"))
    assert (predictions == ref["pred_all"]).all()
    assert (predictions == labels).mean() == pytest.approx(0.9906, abs=1e-9)
    _close(scores.numpy(), ref["scores_all"])


@needs_shared
def test_real_cifar10_quick_first_images():
    folder = shared("caffe-models", "cifar10_quick")
    net = CaffeNet(f"{folder}/cifar10_quick.prototxt", weights=f"{folder}/cifar10_quick_iter_4000.caffemodel")
    mean = caffe_io.read_blobproto(f"{folder}/mean.binaryproto")
    pixels = np.load(oracle("d_real_models", "inputs_first200.npz"))["cifar_test_rgb_uint8_first200"]
    with torch.no_grad():
        scores = net(torch.from_numpy(pixels.astype(np.float32) - mean))["ip2"].numpy()
    ref = np.load(oracle("d_real_models", "cifar10_quick_v2_iter4000", "outputs.npz"))
    _close(scores, ref["scores_all"][:200])
    assert (scores.argmax(axis=1) == ref["pred_all"][:200]).all()


@needs_shared
def test_hdf5_and_v1_caffemodels_load():
    folder = shared("caffe-models", "cifar10_quick")
    for weights in ("cifar10_quick_iter_5000.caffemodel.h5",
                    "v1_everpeace_2014/cifar10_quick_iter_4000.caffemodel"):
        net = CaffeNet(f"{folder}/cifar10_quick.prototxt", weights=f"{folder}/{weights}")
        assert net.load_report["loaded"] == ["conv1", "conv2", "conv3", "ip1", "ip2"]


@needs_shared
def test_caffemodel_round_trip(tmp_path):
    folder = oracle("a_layers", "mini_alexnet_ssdh")
    net = CaffeNet(f"{folder}/deploy.prototxt", weights=f"{folder}/weights.caffemodel")
    net.save_caffemodel(tmp_path / "copy.caffemodel")
    net.save_pt(tmp_path / "copy.pt")
    for path in ("copy.caffemodel", "copy.pt"):
        again = CaffeNet(f"{folder}/deploy.prototxt", weights=str(tmp_path / path))
        for a, b in zip(net.parameters(), again.parameters()):
            assert torch.equal(a, b)


@needs_shared
def test_v0_net_upgrades_padding_into_convolution():
    net = caffe_io.read_net_prototxt(shared(
        "ssdh-reference", "caffe-cvprw15", "examples", "cvprw15-cifar10", "train_CIFAR10_48.prototxt"))
    types = {layer.name: layer.type for layer in net.layer}
    assert "pad2" not in types and types["conv2"] == "Convolution"
    conv2 = next(layer for layer in net.layer if layer.name == "conv2")
    assert list(conv2.convolution_param.pad) == [2] and list(conv2.bottom) == ["norm1"]
    assert [p.lr_mult for p in conv2.param] == [1.0, 2.0]
    data = net.layer[0]
    assert data.type == "Data" and data.transform_param.crop_size == 227
    assert data.transform_param.mirror


@needs_shared
def test_v1_deploy_with_input_dim_builds():
    net = CaffeNet(shared("ssdh-reference", "caffe-cvprw15", "examples", "cvprw15-cifar10",
                          "KevinNet_CIFAR10_48_deploy.prototxt"))
    assert net.blob_shapes["data"] == (10, 3, 227, 227)
    assert net.layers[0].type == "Input"


# ---------------------------------------------------------------- semantics


NET = """
name: "tiny"
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 4 dim: 6 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "h"
  inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "sig" type: "Sigmoid" bottom: "h" top: "h" }
layer { name: "k1" type: "K1_EuclideanLoss" bottom: "h" bottom: "h" top: "loss: forcing-binary"
  propagate_down: 1 propagate_down: 0 loss_weight: 0.5 }
layer { name: "train_only" type: "Power" bottom: "h" top: "p" include { phase: TRAIN } }
"""


def test_phase_rules_loss_weight_and_odd_blob_names():
    test_net = CaffeNet(NET, phase="TEST")
    train_net = CaffeNet(NET, phase="TRAIN")
    assert "train_only" not in [m.name for m in test_net.layers]
    assert "train_only" in [m.name for m in train_net.layers]
    x = torch.randn(4, 6)
    out = test_net(x)
    from ssdh_port import ops

    expected = ops.forcing_binary_loss(out["h"])
    torch.testing.assert_close(out["loss: forcing-binary"], expected)
    torch.testing.assert_close(out.loss, 0.5 * expected)


@pytest.mark.parametrize("text, message", [
    ("layer { name: 'a' type: 'Input' top: 'x' input_param { shape { dim: 2 } }\nlayer {",
     r"<string>:2:\d+: malformed prototxt"),
    ("layer { name: 'a' type: 'Input' top: 'x' input_param { shape { dim: 2 } } }\n"
     "layer { name: 'b' type: 'Frobnicate' bottom: 'x' top: 'y' }",
     "layer 'b': unknown layer type 'Frobnicate'"),
    ("layer { name: 'b' type: 'ReLU' bottom: 'nowhere' top: 'y' }",
     "layer 'b': bottom 'nowhere' is not produced"),
    ("layer { name: 'a' type: 'Input' top: 'x' input_param { shape { dim: 2 dim: 3 } } }\n"
     "layer { name: 'b' type: 'Input' top: 'x' input_param { shape { dim: 2 dim: 3 } } }",
     "layer 'b': top 'x' is produced twice"),
    ("layer { name: 'a' type: 'Input' top: 'x' input_param { shape { dim: 2 dim: 3 } } }\n"
     "layer { name: 'b' type: 'Reshape' bottom: 'x' top: 'y' reshape_param { shape { dim: 5 dim: -1 } } }",
     r"layer 'b' \(Reshape\): cannot infer -1"),
])
def test_bad_net_definitions(text, message):
    with pytest.raises((LayerError, caffe_io.CaffeFileError), match=message):
        CaffeNet(text)


@needs_shared
def test_bad_weight_files(tmp_path):
    folder = oracle("a_layers", "mini_alexnet_ssdh")
    raw = open(f"{folder}/weights.caffemodel", "rb").read()
    truncated = tmp_path / "truncated.caffemodel"
    truncated.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(caffe_io.CaffeFileError, match="truncated.caffemodel: not a valid caffemodel"):
        CaffeNet(f"{folder}/deploy.prototxt", weights=str(truncated))
    lenet = shared("caffe-models", "lenet", "lenet_iter_10000.caffemodel")
    with pytest.raises(LayerError, match=r"weights for layer 'conv1': blob 0 has shape \(20, 1, 5, 5\), "
                                         r"the layer expects \(16, 3, 11, 11\)"):
        CaffeNet(f"{folder}/deploy.prototxt", weights=lenet)
    net = CaffeNet(f"{folder}/deploy.prototxt")
    report = net.copy_from(lenet, allow_shape_mismatch=True)
    assert report["loaded"] == [] and report["skipped"][0].startswith("conv1 (blob 0 has shape")
    assert "ip2" in report["unused"] and "fc6" in report["not_in_weights"]


def _cifar_test_images():
    """The authors' CIFAR-10 JPEG test set in canonical order (test/<i>.jpg is
    test image i-1), decoded by OpenCV and laid out RGB planar as Caffe's
    convert_cifar_data stores the binary set."""
    import tarfile

    import cv2

    images = np.zeros((10000, 3, 32, 32), np.uint8)
    with tarfile.open(CIFAR10_ARCHIVE) as tar:
        for member in tar:
            parts = member.name.split("/")
            if len(parts) > 2 and parts[-2] == "test" and parts[-1].endswith(".jpg"):
                index = int(parts[-1][:-4]) - 1
                data = np.frombuffer(tar.extractfile(member).read(), np.uint8)
                bgr = cv2.imdecode(data, cv2.IMREAD_COLOR)
                images[index] = bgr[:, :, ::-1].transpose(2, 0, 1)
    return images


CIFAR10_ARCHIVE = shared("ssdh-reference", "caffe-cvprw15", "cvprw15-cifar10-dataset-jpg.tar.gz")


@pytest.mark.slow
@needs_shared
@pytest.mark.skipif(not os.path.exists(CIFAR10_ARCHIVE), reason=f"{CIFAR10_ARCHIVE} not found")
def test_real_cifar10_quick_on_the_whole_test_set():
    import hashlib

    images = _cifar_test_images()
    info = json.load(open(oracle("d_real_models", "inputs_info.json")))
    assert hashlib.md5(images.tobytes()).hexdigest() == info["cifar_pixels_md5_all"]
    folder = shared("caffe-models", "cifar10_quick")
    net = CaffeNet(f"{folder}/cifar10_quick.prototxt", weights=f"{folder}/cifar10_quick_iter_4000.caffemodel")
    mean = torch.from_numpy(caffe_io.read_blobproto(f"{folder}/mean.binaryproto"))
    with torch.no_grad():
        scores = torch.cat([net(torch.from_numpy(images[i:i + 500]).float() - mean)["ip2"]
                            for i in range(0, 10000, 500)]).numpy()
    ref = np.load(oracle("d_real_models", "cifar10_quick_v2_iter4000", "outputs.npz"))
    labels = np.load(oracle("d_real_models", "inputs_first200.npz"))["cifar_test_labels_all"]
    assert (scores.argmax(axis=1) == ref["pred_all"]).all()
    assert (scores.argmax(axis=1) == labels).mean() == pytest.approx(0.6985, abs=1e-9)


@needs_shared
@pytest.mark.parametrize("model", [
    "caffe-models/lenet/lenet_iter_10000.caffemodel",
    "caffe-models/lenet/v1_everpeace_2014/lenet_iter_10000.caffemodel",
    "caffe-models/cifar10_quick/cifar10_quick_iter_4000.caffemodel",
    "caffe-oracle/a_layers/mini_alexnet_ssdh/weights.caffemodel",
])
def test_streaming_reader_equals_protobuf(model):
    from ssdh_port.caffe import wire

    path = shared(*model.split("/"))
    streamed = wire.read_blobs(path)
    parsed = caffe_io.read_caffemodel(path)
    expected = {layer.name: [caffe_io.blob_to_array(b) for b in layer.blobs] for layer in parsed.layer}
    assert list(streamed) == list(expected)
    for name, blobs in expected.items():
        assert len(streamed[name]) == len(blobs)
        for a, b in zip(streamed[name], blobs):
            assert a.shape == b.shape and np.array_equal(a, b)


def test_multilabel_layers_against_numpy():
    text = """
    layer { name: "in" type: "Input" top: "s" top: "y" input_param { shape { dim: 3 dim: 4 } } }
    layer { name: "loss" type: "MultiLabelSigmoidLoss" bottom: "s" bottom: "y" top: "loss" }
    layer { name: "acc" type: "MultiLabelAccuracy" bottom: "s" bottom: "y" top: "acc" top: "sens" top: "spec" }
    """
    net = CaffeNet(text)
    s = np.array([[2.0, -1.0, 0.5, -3.0], [-0.2, 0.3, 1.0, 4.0], [0.0, -2.0, 3.0, -1.0]], np.float32)
    y = np.array([[1, -1, 0, 1], [-1, 1, -1, 0], [1, 0, 1, -1]], np.float32)
    out = net(s=torch.from_numpy(s), y=torch.from_numpy(y))
    known, t = y != 0, (y > 0)
    ce = -(t * np.log(1 / (1 + np.exp(-s))) + (1 - t) * np.log(1 - 1 / (1 + np.exp(-s))))
    assert float(out["loss"]) == pytest.approx((ce * known).sum() / 3, rel=1e-5)
    predicted = s > 0
    assert float(out["acc"]) == pytest.approx(((predicted == t) & known).sum() / known.sum())
    assert float(out["sens"]) == pytest.approx((predicted & (y > 0)).sum() / (y > 0).sum())
    assert float(out["spec"]) == pytest.approx((~predicted & (y < 0)).sum() / (y < 0).sum())
    assert out.loss == out["loss"]


def test_label_database_must_be_in_step(tmp_path, monkeypatch):
    from ssdh_port.data.datum import float_datum
    from ssdh_port.data.db import DatumDBWriter

    monkeypatch.chdir(tmp_path)
    with DatumDBWriter("images") as w:
        for k in range(4):
            w.put_array(f"{k:04d}", np.full((1, 2, 2), k, np.uint8), 0)
    with DatumDBWriter("labels") as w:
        for k in range(4):
            w.put(f"{k:04d}", float_datum([k % 2, 1 - k % 2, -1]))
    text = """
    layer { name: "d" type: "Data" top: "data" data_param { source: "images" batch_size: 2 backend: LMDB } }
    layer { name: "l" type: "Data" top: "label" data_param { source: "%s" batch_size: 2 backend: LMDB } }
    """
    out = CaffeNet(text % "labels")()
    assert out["label"].shape == (2, 3, 1, 1) and out["label"].reshape(2, 3).tolist() == [[0, 1, -1], [1, 0, -1]]
    with DatumDBWriter("shifted") as w:
        for k in range(4):
            w.put(f"{k + 1:04d}", float_datum([0, 1, 0]))
    with pytest.raises(LayerError, match="out of step with images at record 0: key b'0001' vs b'0000'"):
        CaffeNet(text % "shifted")
