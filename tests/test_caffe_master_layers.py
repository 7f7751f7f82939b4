"""The layer types of Caffe master the SSDH nets do not use (Crop, Reduction, Tile,
SPP, Embed, Clip, Swish, Parameter, BatchReindex, Filter, Im2col, LSTMUnit, RNN,
LSTM), the two-bottom layers on bottoms of one count and different shapes, and a
fully convolutional net given inputs of other sizes after construction: forward
blobs, input gradients and weight gradients against real BVLC Caffe's
(tests/caffe_refs, made by make_refs.py there), plus NumPy references and the
errors Caffe's checks give."""
import json
import os

import numpy as np
import pytest
import torch

from ssdh_port.caffe.layers import LayerError
from ssdh_port.caffe.net import CaffeNet

REFS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "caffe_refs")
with open(os.path.join(REFS, "cases.json")) as _f:
    CASES = json.load(_f)


def _load(case):
    z = np.load(os.path.join(REFS, f"{case}.npz"))
    return {k: z[k] for k in z.files}


def _params(net, ref):
    with torch.no_grad():
        for key, value in ref.items():
            if key.startswith("param/"):
                _, layer, i = key.split("/")
                net.layer(layer).blobs[int(i)].copy_(torch.from_numpy(value))


def _check_pass(net, ref, prefix, case):
    """Forward the inputs of ref (under prefix), compare every blob, then backward
    from the stored top diffs and compare the inputs' and the weights' gradients."""
    inputs = {k[len(prefix) + 6:]: torch.from_numpy(v) for k, v in ref.items() if k.startswith(prefix + "input/")}
    forced = net.net_param.force_backward
    feeds = {k: v.clone().requires_grad_(forced) for k, v in inputs.items()}
    out = net(**feeds)
    for key, expected in ref.items():
        if not key.startswith(prefix + "blob/"):
            continue
        name = key[len(prefix) + 5:]
        assert name in out, f"{case}: blob {name} missing"
        got = out[name].detach().numpy()
        assert got.shape == expected.shape, f"{case}: blob {name} shape {got.shape}, Caffe {expected.shape}"
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=2e-6, err_msg=f"{case}: blob {name}")
    total = sum((out[k[len(prefix) + 8:]] * torch.from_numpy(v)).sum()
                for k, v in ref.items() if k.startswith(prefix + "topdiff/"))
    params = [(key, blob) for key, blob in
              ((f"{m.name}/{i}", b) for m in net.layers for i, b in enumerate(m.blobs)) if blob.requires_grad]
    wrt = [v for v in feeds.values() if v.requires_grad] + [b for _, b in params]
    if not wrt or not torch.is_tensor(total) or not total.requires_grad:
        return out
    grads = torch.autograd.grad(total, wrt, allow_unused=True)
    grads = dict(zip([f"diff/{k}" for k, v in feeds.items() if v.requires_grad] + [f"paramdiff/{k}" for k, _ in params],
                     grads))
    for key, expected in ref.items():
        if not (key.startswith(prefix + "diff/") or key.startswith(prefix + "paramdiff/")):
            continue
        short = key[len(prefix):]
        if short.startswith("diff/") and not forced:
            continue  # Caffe computes no gradient for a net input without force_backward
        got = grads.get(short)
        got = np.zeros_like(expected) if got is None else got.numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5, err_msg=f"{case}: {short}")
    return out


@pytest.mark.parametrize("case", sorted(c for c in CASES if "window_file" not in CASES[c]))
def test_matches_real_caffe(case):
    ref = _load(case)
    net = CaffeNet(CASES[case]["prototxt"], "TEST")
    _params(net, ref)
    _check_pass(net, ref, "", case)
    if any(k.startswith("again/") for k in ref):
        # The recurrent layers start the next forward from the last one's final state.
        out = net(**{k[6:]: torch.from_numpy(v) for k, v in ref.items() if k.startswith("again/")
                     and k[6:] in net.input_names})
        for key, expected in ref.items():
            if key.startswith("again/"):
                np.testing.assert_allclose(out[key[6:]].detach().numpy(), expected, rtol=1e-5, atol=2e-6)
    k = 0
    while any(key.startswith(f"reshaped/{k}/") for key in ref):
        _check_pass(net, ref, f"reshaped/{k}/", f"{case} reshaped {k}")
        k += 1


def _window_net(case, tmp_path=None, **fields):
    text = CASES[case]["prototxt"]
    root = os.path.join(REFS, "window_data")
    text = text.replace("{source}", os.path.join(root, CASES[case]["window_file"])).replace("{root}", root)
    for old, new in fields.items():
        text = text.replace(old, new)
    return CaffeNet('name: "w"\n' + text, "TRAIN")


@pytest.mark.parametrize("case", sorted(c for c in CASES if "window_file" in CASES[c] and c != "window_mirror"))
def test_window_data_matches_real_caffe(case):
    """One foreground and one background window: batches that do not depend on
    the random draws (background items first, as Caffe fills them)."""
    ref = _load(case)
    net = _window_net(case)
    assert net.blob_shapes["data"] == ref["batch/0/data"].shape and net.blob_shapes["label"] == (6,)
    for k in range(2):
        out = net()
        np.testing.assert_array_equal(out["label"].numpy(), ref[f"batch/{k}/label"])
        # cv2.resize is Caffe's own OpenCV call: the same pixels, up to float rounding of the mean.
        np.testing.assert_allclose(out["data"].numpy(), ref[f"batch/{k}/data"], rtol=0, atol=2e-4)


def test_window_data_mirror_draws_both_ways():
    ref = _load("window_mirror")
    caffe_items = [ref[f"batch/{k}/data"][i] for k in range(2) for i in range(6)]
    net = _window_net("window_mirror")
    net.layer("win").reseed(5)
    seen = set()
    for _ in range(4):
        out = net()["data"].numpy()
        for item in out:
            matches = [j for j, c in enumerate(caffe_items) if np.array_equal(item, c)]
            assert matches, "an item that Caffe's batch of the same windows does not have"
            seen.add(item.tobytes())
    assert len(seen) >= 3  # mirrored and plain, foreground and background
    net.layer("win").reseed(5)
    again = net()["data"]
    net.layer("win").reseed(5)
    torch.testing.assert_close(net()["data"], again)


@pytest.mark.parametrize("old, new, message", [
    ("batch_size: 6", "batch_size: 0", "batch_size must be positive"),
    ("crop_size: 16", "crop_size: 0", "crop_size must be positive"),
    ("fg_threshold: 0.7", "fg_threshold: 0.95", "0 foreground and 1 background"),
    ("window_warp.txt", "missing.txt", "cannot open window file"),
])
def test_window_data_errors(old, new, message):
    case = "window_warp"
    text = CASES[case]["prototxt"].replace("{source}", os.path.join(REFS, "window_data", CASES[case]["window_file"]))
    text = text.replace("{root}", os.path.join(REFS, "window_data")).replace(old, new)
    with pytest.raises(LayerError, match=f"layer 'win' \\(WindowData\\): .*{message}"):
        CaffeNet('name: "w"\n' + text, "TRAIN")


def _net(body, **inputs):
    shapes = "".join(f" shape {{ {' '.join(f'dim: {d}' for d in s)} }}" for s in inputs.values())
    tops = "".join(f' top: "{n}"' for n in inputs)
    return CaffeNet(f'name: "t" force_backward: true\nlayer {{ name: "in" type: "Input"{tops} '
                    f'input_param {{{shapes} }} }}\n{body}')


# ------------------------------------------------------------ NumPy references


def test_crop_by_hand():
    x = torch.arange(2 * 3 * 6 * 7, dtype=torch.float32).reshape(2, 3, 6, 7)
    net = _net('layer { name: "c" type: "Crop" bottom: "x" bottom: "r" top: "y" crop_param { offset: 1 offset: 2 } }',
               x=(2, 3, 6, 7), r=(9, 9, 4, 5))
    y = net(x=x, r=torch.zeros(9, 9, 4, 5))["y"].detach()
    np.testing.assert_array_equal(y.numpy(), x.numpy()[:, :, 1:5, 2:7])


def test_reduction_tile_by_hand():
    x = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
    net = _net('layer { name: "r" type: "Reduction" bottom: "x" top: "r" reduction_param { operation: SUMSQ axis: 1 '
               'coeff: 0.5 } }\nlayer { name: "t" type: "Tile" bottom: "x" top: "t" tile_param { axis: 1 tiles: 2 } }',
               x=(2, 3, 4))
    out = net(x=torch.from_numpy(x))
    np.testing.assert_allclose(out["r"].detach().numpy(), 0.5 * (x ** 2).reshape(2, -1).sum(1), rtol=1e-6)
    np.testing.assert_array_equal(out["t"].detach().numpy(), np.concatenate([x, x], 1))


def test_batch_reindex_adds_the_gradients_of_repeats():
    net = _net('layer { name: "b" type: "BatchReindex" bottom: "x" bottom: "i" top: "y" }', x=(3, 2), i=(4,))
    x = torch.randn(3, 2, requires_grad=True)
    y = net(x=x, i=torch.tensor([2.0, 0.0, 2.0, 2.0]))["y"]
    np.testing.assert_array_equal(y.detach().numpy(), x.detach().numpy()[[2, 0, 2, 2]])
    diff = torch.arange(8, dtype=torch.float32).reshape(4, 2)
    (grad,) = torch.autograd.grad((y * diff).sum(), x)
    np.testing.assert_array_equal(grad.numpy(), [[2, 3], [0, 0], [0 + 4 + 6, 1 + 5 + 7]])
    with pytest.raises(LayerError, match="'b'.*indices must lie in \\[0, 3\\)"):
        net(x=x, i=torch.tensor([3.0, 0.0, 0.0, 0.0]))


def test_filter_routes_gradients_to_the_selected_items():
    net = _net('layer { name: "f" type: "Filter" bottom: "x" bottom: "s" top: "y" }', x=(4, 2), s=(4, 1))
    assert net.blob_shapes["y"] == (4, 2)  # Caffe's first reshape keeps the batch
    x = torch.randn(4, 2, requires_grad=True)
    y = net(x=x, s=torch.tensor([[0.0], [2.0], [0.0], [-1.0]]))["y"]
    np.testing.assert_array_equal(y.detach().numpy(), x.detach().numpy()[[1, 3]])
    (grad,) = torch.autograd.grad(y.sum() * 3, x)
    np.testing.assert_array_equal(grad.numpy(), [[0, 0], [3, 3], [0, 0], [3, 3]])
    assert net(x=x, s=torch.zeros(4, 1))["y"].shape == (0, 2)


def test_embed_checks_its_indices():
    net = _net('layer { name: "e" type: "Embed" bottom: "i" top: "y" embed_param { input_dim: 3 num_output: 2 } }',
               i=(2,))
    with pytest.raises(LayerError, match="'e'.*whole numbers"):
        net(i=torch.tensor([0.5, 1.0]))
    with pytest.raises(LayerError, match="'e'.*\\[0, 3\\)"):
        net(i=torch.tensor([3.0, 1.0]))


def test_lstm_unit_backward_is_caffes_with_a_fractional_cont():
    """With cont outside {0, 1} Caffe's forget-gate gradient, c_prev f (1 - f) with
    f = cont * sigmoid, is not the textbook one; the port gives Caffe's."""
    from ssdh_port.caffe.recurrent import lstm_unit

    g = torch.Generator().manual_seed(3)
    c_prev = torch.randn(1, 2, 3, generator=g, dtype=torch.float64)
    gates = torch.randn(1, 2, 12, generator=g, dtype=torch.float64, requires_grad=True)
    cont = torch.tensor([[0.5, 0.0]], dtype=torch.float64)
    c, h = lstm_unit(c_prev, gates, cont)
    (grad,) = torch.autograd.grad(c.sum(), gates)
    s = torch.sigmoid(gates[..., 3:6]).detach()
    f = 0.5 * s[0, 0]
    np.testing.assert_allclose(grad[0, 0, 3:6].numpy(), (c_prev[0, 0] * f * (1 - f)).numpy(), rtol=1e-12)
    np.testing.assert_array_equal(grad[0, 1, 3:6].numpy(), 0)


@pytest.mark.parametrize("kind", ["RNN", "LSTM"])
def test_recurrent_gradcheck(kind):
    """The unrolled steps' gradients (cont in {0, 1}) by finite differences."""
    net = _net(f'layer {{ name: "r" type: "{kind}" bottom: "x" bottom: "c" bottom: "s" top: "y" '
               'recurrent_param { num_output: 3 weight_filler { type: "gaussian" std: 0.5 } } }',
               x=(3, 2, 4), c=(3, 2), s=(2, 2)).double()
    g = torch.Generator().manual_seed(4)
    x = torch.randn(3, 2, 4, generator=g, dtype=torch.float64, requires_grad=True)
    s = torch.randn(2, 2, generator=g, dtype=torch.float64, requires_grad=True)
    cont = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0]], dtype=torch.float64)

    def run(x, s):
        net.layer("r").reset_state()
        return net(x=x, c=cont, s=s)["y"]
    assert torch.autograd.gradcheck(run, (x, s))


# ------------------------------------------------------------ Caffe's checks


@pytest.mark.parametrize("body, inputs, message", [
    ('layer { name: "c" type: "Crop" bottom: "x" bottom: "r" top: "y" crop_param { offset: 3 } }',
     {"x": (1, 1, 5, 5), "r": (1, 1, 3, 3)}, "'c'.*invalid crop in axis 2"),
    ('layer { name: "c" type: "Crop" bottom: "x" bottom: "r" top: "y" crop_param { offset: 1 offset: 1 } }',
     {"x": (1, 3, 5, 5), "r": (1, 3, 3)}, "'c'.*same number of axes"),
    ('layer { name: "c" type: "Crop" bottom: "x" bottom: "r" top: "y" crop_param { axis: 1 offset: 1 offset: 1 } }',
     {"x": (1, 3, 5, 5), "r": (1, 1, 3, 3)}, "'c'.*2 offsets for the 3 axes"),
    ('layer { name: "s" type: "SPP" bottom: "x" top: "y" spp_param { pyramid_height: 3 } }',
     {"x": (1, 2, 3, 5)}, "'s'.*level 2.*pad"),
    ('layer { name: "t" type: "Tile" bottom: "x" top: "y" tile_param { tiles: 0 } }',
     {"x": (1, 2)}, "'t'.*tiles must be positive"),
    ('layer { name: "b" type: "BatchReindex" bottom: "x" bottom: "i" top: "y" }',
     {"x": (3, 2), "i": (2, 1)}, "'b'.*index bottom must be 1-D"),
    ('layer { name: "f" type: "Filter" bottom: "x" bottom: "s" top: "y" }',
     {"x": (3, 2), "s": (3, 2)}, "'f'.*selector must be N"),
    ('layer { name: "f" type: "Filter" bottom: "x" bottom: "s" top: "y" }',
     {"x": (4, 2), "s": (3,)}, "'f'.*selector's 3 items"),
    ('layer { name: "u" type: "LSTMUnit" bottom: "c" bottom: "g" bottom: "k" top: "c1" top: "h1" }',
     {"c": (1, 2, 3), "g": (1, 2, 11), "k": (1, 2)}, "'u'.*4 x 3 expected"),
    ('layer { name: "r" type: "LSTM" bottom: "x" bottom: "k" top: "y" recurrent_param { num_output: 2 } }',
     {"x": (3, 2, 4), "k": (2, 3)}, "'r'.*cont must be T x N = 3 x 2"),
    ('layer { name: "r" type: "RNN" bottom: "x" bottom: "k" top: "y" top: "h" recurrent_param { num_output: 2 } }',
     {"x": (3, 2, 4), "k": (3, 2)}, "'r'.*makes 1 top"),
    ('layer { name: "cl" type: "Clip" bottom: "x" top: "y" clip_param { min: 1 max: 0 } }',
     {"x": (2,)}, "'cl'.*min 1 is above max 0"),
    ('layer { name: "l" type: "EuclideanLoss" bottom: "a" bottom: "b" top: "l" }',
     {"a": (6, 2), "b": (6, 3)}, "'l'.*6 x 2.*6 x 3|'l'.*\\(6, 2\\).*\\(6, 3\\)"),
    ('layer { name: "e" type: "Eltwise" bottom: "a" bottom: "b" top: "y" }',
     {"a": (2, 6), "b": (2, 3, 2)}, "'e'.*same shape"),
])
def test_caffes_shape_checks_are_clear_errors(body, inputs, message):
    with pytest.raises(LayerError, match=message):
        _net(body, **inputs)


def _caffe_positions():
    folder = os.path.join(REFS, "parse_errors")
    with open(os.path.join(folder, "caffe_positions.txt")) as f:
        return [(os.path.join(folder, line.split()[0] + ".prototxt"), line.split()[1]) for line in f if line.strip()]


@pytest.mark.parametrize("path, position", _caffe_positions())
def test_prototxt_errors_name_caffes_line_and_column(path, position):
    from ssdh_port.caffe import io as caffe_io

    with pytest.raises(caffe_io.CaffeFileError) as err:
        CaffeNet(path)
    assert str(err.value).startswith(f"{path}:{position}: malformed prototxt: ")


# ------------------------------------------------------------ the schema and the layer list

with open(os.path.join(REFS, "master_schema.json")) as _f:
    MASTER = json.load(_f)


def _our_schema():
    from ssdh_port.caffe.proto import caffe_pb2
    from tests.caffe_refs.schema import describe

    return describe(caffe_pb2)


def test_every_message_and_field_of_caffe_master_parses():
    ours = _our_schema()
    for name, fields in MASTER["messages"].items():
        assert name in ours, f"message {name} missing"
        for field, spec in fields.items():
            assert ours[name].get(field) == spec, f"{name}.{field}: ours {ours[name].get(field)}, Caffe's {spec}"
    additions = {name: sorted(set(fields) - set(MASTER["messages"].get(name, {}))) for name, fields in ours.items()}
    additions = {k: v for k, v in additions.items() if v}
    assert additions == {
        "LayerParameter": ["max_margin_multilabel_loss_param", "ssdh_loss_param", "triplet_ranking_hinge_loss_param"],
        "MaxMarginMultiLabelLossParameter": ["p"], "SSDHLossParameter": ["p"],
        "TripletRankingHingeLossParameter": ["dim", "legacy_gradient_scale", "margin"]}


def test_every_layer_type_of_caffe_master_but_python_is_registered_and_listed_in_the_readme():
    from ssdh_port.caffe.layers import LAYERS

    master = set(MASTER["layer_types"]) - {"Python"}
    assert master <= set(LAYERS), sorted(master - set(LAYERS))
    with open(os.path.join(os.path.dirname(REFS), "..", "README.md")) as f:
        readme = f.read()
    section = readme[readme.index("## Caffe compatibility"):]
    section = section[:section.index("\n## ", 3)]
    listed = section[section.index("Layers:"):section.index(";", section.index("Layers:"))]
    names = {n.strip(" .\n") for n in listed[len("Layers:"):].split(",")}
    assert names == master
    assert "Python" in section


@pytest.mark.parametrize("kind", ["RNN", "LSTM"])
def test_recurrent_caffemodels_load(kind):
    """Weights written by Caffe itself load into the port's blob order."""
    case = f"{kind.lower()}_static"
    ref = _load(case)
    net = CaffeNet(CASES[case]["prototxt"], "TEST", weights=os.path.join(REFS, f"{case}.caffemodel"))
    for key, value in ref.items():
        if key.startswith("param/"):
            _, layer, i = key.split("/")
            np.testing.assert_array_equal(net.layer(layer).blobs[int(i)].detach().numpy(), value)
    out = net(**{k[6:]: torch.from_numpy(v) for k, v in ref.items() if k.startswith("input/")})
    np.testing.assert_allclose(out["y"].detach().numpy(), ref["blob/y"], rtol=1e-5, atol=2e-6)


def test_triplet_loss_takes_same_count_bottoms_flat():
    from ssdh_port.caffe.layers import LAYERS  # noqa: F401

    net = _net('layer { name: "t" type: "TripletRankingHingeLoss" bottom: "q" bottom: "s" bottom: "d" top: "l" '
               'triplet_ranking_hinge_loss_param { dim: 6 margin: 1 } }', q=(4, 6), s=(4, 6, 1, 1), d=(4, 3, 2))
    g = torch.Generator().manual_seed(9)
    q, s, d = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)
    loss = net(q=q, s=s.reshape(4, 6, 1, 1), d=d.reshape(4, 3, 2))["l"]
    expected = torch.clamp(1 + ((q - s) ** 2).sum(1) - ((q - d) ** 2).sum(1), min=0).mean()
    torch.testing.assert_close(loss, expected)
    with pytest.raises(LayerError, match="'t'.*one count per item"):
        _net('layer { name: "t" type: "TripletRankingHingeLoss" bottom: "q" bottom: "s" bottom: "d" top: "l" '
             'triplet_ranking_hinge_loss_param { dim: 6 } }', q=(4, 6), s=(4, 5), d=(4, 6))


@pytest.mark.parametrize("body, inputs, message", [
    ('layer { name: "s" type: "Scale" bottom: "x" bottom: "m" top: "y" }',
     {"x": (2, 3, 4), "m": (4, 3)}, "'s'.*operand of shape \\(4, 3\\) must equal the bottom's axes from 1 on, \\(3, 4\\)"),
    ('layer { name: "s" type: "Scale" bottom: "x" bottom: "m" top: "y" }',
     {"x": (2, 3, 4), "m": (3, 1)}, "'s'.*operand of shape \\(3, 1\\)"),
    ('layer { name: "b" type: "Bias" bottom: "x" bottom: "m" top: "y" }',
     {"x": (2, 3, 4), "m": (12,)}, "'b'.*operand of shape \\(12,\\)"),
    ('layer { name: "c" type: "Concat" bottom: "a" bottom: "b" top: "y" }',
     {"a": (2, 3, 4), "b": (2, 3, 5)}, "'c'.*same shape except on axis 1"),
    ('layer { name: "l" type: "SoftmaxWithLoss" bottom: "x" bottom: "t" top: "l" }',
     {"x": (4, 5), "t": (5,)}, "'l'.*5 labels for 4 predictions"),
    ('layer { name: "l" type: "SigmoidCrossEntropyLoss" bottom: "x" bottom: "t" top: "l" }',
     {"x": (4, 5), "t": (4, 4)}, "'l'.*same count"),
    ('layer { name: "l" type: "ContrastiveLoss" bottom: "a" bottom: "b" bottom: "s" top: "l" }',
     {"a": (4, 3), "b": (4, 2), "s": (4,)}, "'l'.*features N x C"),
    ('layer { name: "l" type: "HingeLoss" bottom: "x" bottom: "t" top: "l" }',
     {"x": (4, 5), "t": (4, 2)}, "'l'.*one label per item"),
    ('layer { name: "l" type: "MultinomialLogisticLoss" bottom: "x" bottom: "t" top: "l" }',
     {"x": (4, 5), "t": (4, 5)}, "'l'.*one label per item"),
])
def test_multi_bottom_layers_refuse_shapes_caffe_refuses(body, inputs, message):
    with pytest.raises(LayerError, match=message):
        net = _net(body, **inputs)
        net(**{k: torch.rand(v) for k, v in inputs.items()})


def test_reshaping_keeps_caffes_errors_and_the_reshape_layer_follows():
    net = _net('layer { name: "r" type: "Reshape" bottom: "x" top: "y" reshape_param { shape { dim: 0 dim: -1 } } }\n'
               'layer { name: "ip" type: "InnerProduct" bottom: "x" top: "z" inner_product_param { num_output: 2 } }',
               x=(2, 3, 4, 5))
    with pytest.raises(LayerError, match="'ip' \\(InnerProduct\\): input size incompatible with inner product "
                                         "parameters: the bottom \\(2, 3, 4, 6\\) has 72 values"):
        net.reshape(x=(2, 3, 4, 6))
    assert net.blob_shapes["y"] == (2, 60)  # a failed reshape leaves the net as it was
    net2 = _net('layer { name: "r" type: "Reshape" bottom: "x" top: "y" reshape_param { shape { dim: 0 dim: -1 } } }',
                x=(2, 3, 4, 5))
    assert net2.reshape(x=(6,)).blob_shapes["y"] == (6, 1)  # built for 4 axes, given 1
    assert net2(x=torch.arange(6.0))["y"].shape == (6, 1)
    assert net2(x=torch.zeros(2, 3, 4, 5))["y"].shape == (2, 60)
    with pytest.raises(LayerError, match="cannot reshape \\['nope'\\]: not inputs"):
        net2.reshape(nope=(1,))
