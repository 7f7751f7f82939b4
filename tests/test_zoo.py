"""Public nets nobody here wrote (tests/zoo: FCN-8s, HED, LRCN captioning, CaffeNet
with SPP; each file names its source), built by the port with their default
weights: every blob and weight shape as real Caffe gives it (tests/zoo/shapes.json,
made by make_shapes.py there), at the declared inputs and after reshaping them, and
the fully convolutional nets run on images of two sizes."""
import glob
import json
import os

import pytest
import torch

from ssdh_port.caffe.layers import LayerError
from ssdh_port.caffe.net import CaffeNet

ZOO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "zoo")
with open(os.path.join(ZOO, "shapes.json")) as _f:
    SHAPES = json.load(_f)
NETS = sorted(os.path.basename(p)[:-len(".prototxt")] for p in glob.glob(os.path.join(ZOO, "*.prototxt")))


def _check(net, expected, where):
    split = [n for n in expected["blobs"] if "_split_" in n]
    ours = {name: list(shape) for name, shape in net.blob_shapes.items()}
    theirs = {name: shape for name, shape in expected["blobs"].items() if name not in split}
    assert ours == theirs, f"{where}: blob shapes differ"
    assert sorted(split) == sorted(a for aliases in net.split_names.values() for a in aliases), where
    params = {m.name: [list(b.shape) for b in m.blobs] for m in net.layers if len(m.blobs)}
    assert params == expected["params"], f"{where}: weight shapes differ"


def test_every_collected_net_has_shapes():
    assert NETS == sorted(SHAPES)


@pytest.mark.parametrize("name", NETS)
def test_zoo_net_shapes_match_caffe(name):
    net = CaffeNet(os.path.join(ZOO, f"{name}.prototxt"))
    _check(net, SHAPES[name]["declared"], f"{name} as declared")
    for k, reshaped in enumerate(SHAPES[name]["reshaped"]):
        net.reshape(**{blob: tuple(shape) for blob, shape in reshaped["inputs"].items()})
        _check(net, reshaped, f"{name} reshaped to {reshaped['inputs']}")


@pytest.mark.parametrize("name, output", [("fcn8s_voc.deploy", "score"), ("hed.deploy", "sigmoid-fuse")])
def test_fully_convolutional_nets_run_on_two_sizes(name, output):
    net = CaffeNet(os.path.join(ZOO, f"{name}.prototxt"))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in net.layers:
            for blob in module.blobs:
                blob.normal_(0, 0.01, generator=g)
        for reshaped in SHAPES[name]["reshaped"]:
            shape = tuple(reshaped["inputs"]["data"])
            out = net(data=torch.rand(shape, generator=g))[output]
            assert list(out.shape) == reshaped["blobs"][output]
            assert out.shape[-2:] == shape[-2:] and torch.isfinite(out).all() and out.std() > 0


def test_recurrent_nets_keep_their_time_steps():
    net = CaffeNet(os.path.join(ZOO, "lrcn_word_to_preds.deploy.prototxt"))
    with pytest.raises(LayerError, match="'lstm1' \\(LSTM\\): the number of time steps changed: built for 1"):
        net.reshape(cont_sentence=(3, 2), input_sentence=(3, 2), image_features=(2, 1000))
    # A failed reshape leaves the net as it was.
    assert net.blob_shapes["lstm2"] == (1, 1000, 1000)
