"""Caffe's net semantics beyond single layers: weight sharing by param name,
lr_mult 0 (frozen blobs), force_backward. References are written from Caffe's
rules (net.cpp AppendParam / Init; docs/SPEC.md section 3) in plain PyTorch."""
import logging

import numpy as np
import pytest
import torch

from ssdh_port.caffe.layers import LayerError
from ssdh_port.caffe.net import CaffeNet
from ssdh_port.caffe.proto import caffe_pb2 as pb
from ssdh_port.caffe.solver import Solver


def _siamese(second_param="", share_mode="", lr_a="", lr_b="", outputs_b=3, extra=""):
    """Two InnerProducts on two inputs sharing their weight and bias by name."""
    mode = f"share_mode: {share_mode}" if share_mode else ""
    return f"""
name: "siamese"
{extra}
layer {{ name: "in" type: "Input" top: "a" top: "b"
        input_param {{ shape {{ dim: 4 dim: 6 }} shape {{ dim: 4 dim: 6 }} }} }}
layer {{ name: "ip_a" type: "InnerProduct" bottom: "a" top: "fa"
        param {{ name: "w" {lr_a} }} param {{ name: "bias" }}
        inner_product_param {{ num_output: 3 weight_filler {{ type: "gaussian" std: 0.5 }}
                               bias_filler {{ type: "gaussian" std: 0.5 }} }} }}
layer {{ name: "ip_b" type: "InnerProduct" bottom: "b" top: "fb"
        param {{ name: "w" {mode} {lr_b} }} param {{ name: "bias" {second_param} }}
        inner_product_param {{ num_output: {outputs_b} }} }}
layer {{ name: "loss" type: "EuclideanLoss" bottom: "fa" bottom: "fb" top: "loss" }}
"""


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)


def test_shared_blobs_are_one_parameter_and_gradients_add():
    torch.manual_seed(0)
    net = CaffeNet(_siamese())
    a, b = net.layer("ip_a"), net.layer("ip_b")
    assert a.blobs[0] is b.blobs[0] and a.blobs[1] is b.blobs[1]
    assert len(list(net.parameters())) == 2  # torch.optim users update each blob once
    assert net.param_owner == {("ip_b", 0): ("ip_a", 0), ("ip_b", 1): ("ip_a", 1)}
    x, y = _inputs()
    out = net(a=x, b=y)
    out.loss.backward()
    # Reference: one weight and one bias used by both branches.
    w = a.blobs[0].detach().clone().requires_grad_(True)
    bias = a.blobs[1].detach().clone().requires_grad_(True)
    ref = (((x @ w.T + bias) - (y @ w.T + bias)) ** 2).sum() / (2 * 4)
    ref.backward()
    torch.testing.assert_close(out.loss, ref)
    torch.testing.assert_close(a.blobs[0].grad, w.grad)
    # The biases cancel in the loss: their gradients from the two users add to 0.
    torch.testing.assert_close(a.blobs[1].grad, torch.zeros(3), atol=1e-6, rtol=0)


def test_solver_updates_a_shared_blob_once():
    param = pb.SolverParameter(base_lr=0.1, lr_policy="fixed", momentum=0.0, max_iter=1, display=0)
    text = _siamese().replace(
        'layer { name: "in" type: "Input" top: "a" top: "b"\n        input_param { shape { dim: 4 dim: 6 } '
        'shape { dim: 4 dim: 6 } } }',
        'layer { name: "in" type: "DummyData" top: "a" top: "b" dummy_data_param { '
        'shape { dim: 4 dim: 6 } shape { dim: 4 dim: 6 } data_filler { type: "constant" value: 0.5 } '
        'data_filler { type: "uniform" min: -1 max: 1 } } }')
    param.net_param.CopyFrom(CaffeNet(text).net_param)
    solver = Solver(param, log=lambda line: None)
    assert [lp.key for lp in solver.params] == ["ip_a/0", "ip_a/1"]
    before = solver.net.layer("ip_a").blobs[0].detach().clone()
    solver.step(1)
    weight = solver.net.layer("ip_a").blobs[0]
    # One SGD step with the summed gradient of both users, applied once.
    torch.testing.assert_close(weight.detach(), before - 0.1 * weight.grad)
    assert solver.net.layer("ip_b").blobs[0] is weight


def test_shared_blobs_in_caffemodels_and_pt(tmp_path, caplog):
    torch.manual_seed(1)
    net = CaffeNet(_siamese())
    net.save_caffemodel(tmp_path / "m.caffemodel")
    net.save_pt(tmp_path / "m.pt")
    from ssdh_port.caffe.net import load_weights

    stored = load_weights(str(tmp_path / "m.caffemodel"))
    # The file repeats the blob under every layer that uses it, as Caffe writes it.
    np.testing.assert_array_equal(stored["ip_a"][0], stored["ip_b"][0])
    for path in ("m.caffemodel", "m.pt"):
        again = CaffeNet(_siamese(), weights=str(tmp_path / path))
        assert again.layer("ip_a").blobs[0] is again.layer("ip_b").blobs[0]
        torch.testing.assert_close(again.layer("ip_b").blobs[0], net.layer("ip_a").blobs[0])
    # Copies that disagree: Caffe's order decides (the later layer's copy), with a warning.
    params = pb.NetParameter()
    for name in ("ip_a", "ip_b"):
        layer = params.layer.add(name=name, type="InnerProduct")
        for value in ((1.0 if name == "ip_a" else 2.0), 0.0):
            blob = layer.blobs.add()
            shape = (3, 6) if len(layer.blobs) == 1 else (3,)
            blob.shape.dim.extend(shape)
            blob.data.extend([value] * int(np.prod(shape)))
    with caplog.at_level(logging.WARNING, logger="ssdh_port"):
        mixed = CaffeNet(_siamese(), weights=params)
    assert "differ between layer 'ip_a' and layer 'ip_b'" in caplog.text
    assert bool((mixed.layer("ip_a").blobs[0] == 2.0).all())


def test_sharing_checks_shapes_and_multipliers():
    with pytest.raises(LayerError, match=r"cannot share param 'w' owned by layer 'ip_a' with layer 'ip_b': "
                                         r"shape mismatch \(owner shape \(3, 6\), sharing layer expects \(2, 6\)"):
        CaffeNet(_siamese(outputs_b=2))
    with pytest.raises(LayerError, match="shared param 'w': lr_mult 2 in layer 'ip_b' differs from 1 in its "
                                         "owner layer 'ip_a'"):
        CaffeNet(_siamese(lr_a="lr_mult: 1", lr_b="lr_mult: 2"))
    # One given alone is adopted for the shared blob.
    net = CaffeNet(_siamese(lr_b="lr_mult: 3 decay_mult: 0"))
    assert net.param_multipliers[("ip_a", 0)] == (3.0, 0.0)


def test_permissive_sharing_views_a_blob_of_the_same_count():
    text = _siamese(share_mode="PERMISSIVE", outputs_b=3)
    # Same count, other shape: the second layer reads the 3 x 6 weight transposed-stored as 6 x 3.
    text = text.replace("inner_product_param { num_output: 3 }",
                        "inner_product_param { num_output: 3 transpose: true }")
    with pytest.raises(LayerError, match="shape mismatch"):
        CaffeNet(text.replace("share_mode: PERMISSIVE", ""))
    net = CaffeNet(text)
    a, b = net.layer("ip_a"), net.layer("ip_b")
    assert a.blobs[0] is b.blobs[0] and b.blob(0).shape == (6, 3)
    x, y = _inputs(2)
    out = net(a=x, b=y)
    expected = y @ a.blobs[0].detach().reshape(6, 3) + a.blobs[1].detach()
    torch.testing.assert_close(out["fb"], expected)
    out.loss.backward()
    assert a.blobs[0].grad is not None and a.blobs[0].grad.shape == (3, 6)


FROZEN = """
name: "frozen"
layer { name: "in" type: "Input" top: "x" top: "t" input_param { shape { dim: 5 dim: 4 } shape { dim: 5 dim: 2 } } }
layer { name: "ip1" type: "InnerProduct" bottom: "x" top: "h" param { lr_mult: 0 } param { lr_mult: 0 }
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 1 } } }
layer { name: "ip2" type: "InnerProduct" bottom: "h" top: "y"
        inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 1 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "y" bottom: "t" top: "loss" }
"""


def test_lr_mult_zero_freezes_a_blob():
    torch.manual_seed(3)
    net = CaffeNet(FROZEN)
    frozen = net.layer("ip1").blobs
    assert not frozen[0].requires_grad and not frozen[1].requires_grad
    g = torch.Generator().manual_seed(4)
    out = net(x=torch.randn(5, 4, generator=g), t=torch.randn(5, 2, generator=g))
    out.loss.backward()
    assert frozen[0].grad is None and net.layer("ip2").blobs[0].grad is not None


def test_frozen_blobs_add_nothing_to_the_clipped_norm():
    text = FROZEN.replace(
        'layer { name: "in" type: "Input" top: "x" top: "t" input_param { shape { dim: 5 dim: 4 } '
        'shape { dim: 5 dim: 2 } } }',
        'layer { name: "in" type: "DummyData" top: "x" top: "t" dummy_data_param { shape { dim: 5 dim: 4 } '
        'shape { dim: 5 dim: 2 } data_filler { type: "constant" value: 1 } '
        'data_filler { type: "constant" value: 3 } } }')
    param = pb.SolverParameter(base_lr=1.0, lr_policy="fixed", momentum=0.0, max_iter=1, display=0,
                               clip_gradients=0.01, weight_decay=0.1, random_seed=5)
    param.net_param.CopyFrom(CaffeNet(text).net_param)
    solver = Solver(param, log=lambda line: None)
    # Caffe keeps frozen blobs among the learnable ones (their history is saved), with lr 0.
    assert [(lp.key, lp.lr_mult) for lp in solver.params] == [
        ("ip1/0", 0.0), ("ip1/1", 0.0), ("ip2/0", 1.0), ("ip2/1", 1.0)]
    frozen = [lp.tensor.detach().clone() for lp in solver.params[:2]]
    trainable = [lp.tensor.detach().clone() for lp in solver.params[2:]]
    solver.step(1)
    for before, lp in zip(frozen, solver.params[:2]):
        assert torch.equal(lp.tensor.detach(), before)  # never changed, weight decay included
    grads = [lp.tensor.grad for lp in solver.params[2:]]
    norm = torch.sqrt(sum((g.double() ** 2).sum() for g in grads))
    assert norm > 0.01  # clipping applies, to the trainable gradients' norm alone
    for before, lp, grad in zip(trainable, solver.params[2:], grads):
        expected = before - (grad * (0.01 / norm) + 0.1 * before)
        torch.testing.assert_close(lp.tensor.detach(), expected.float(), rtol=1e-5, atol=1e-7)


def test_force_backward_gives_every_input_a_gradient():
    net_text = FROZEN.replace('name: "frozen"', 'name: "frozen" force_backward: true')
    for text, expected in ((FROZEN, False), (net_text, True)):
        net = CaffeNet(text)
        g = torch.Generator().manual_seed(6)
        out = net(x=torch.randn(5, 4, generator=g), t=torch.randn(5, 2, generator=g))
        out.loss.backward()
        assert (out["x"].grad is not None) == expected
        assert (out["h"].grad is not None) == expected
        if expected:
            # dL/dx through the frozen layer: W1^T (W2^T dL/dy).
            w1, w2 = (net.layer(n).blobs[0].detach() for n in ("ip1", "ip2"))
            dy = (out["y"] - out["t"]).detach() / 5
            torch.testing.assert_close(out["x"].grad, dy @ w2 @ w1)


def test_bare_legacy_input_is_dropped():
    from ssdh_port.caffe import io as caffe_io

    net = caffe_io.parse_net_prototxt('name: "n" input: "data"\n'
                                      'layer { name: "d" type: "DummyData" top: "x" '
                                      'dummy_data_param { shape { dim: 2 dim: 3 } } }')
    assert [layer.type for layer in net.layer] == ["DummyData"] and not net.input
    built = CaffeNet(net)
    assert built.input_names == [] and "data" not in built.blob_shapes


def test_v0_upgrade_moves_window_data_and_infogain_fields():
    from ssdh_port.caffe import io as caffe_io

    net = caffe_io.parse_net_prototxt("""
name: "v0"
layers { layer { name: "win" type: "window_data" source: "windows.txt" batchsize: 8 cropsize: 227
                 det_fg_threshold: 0.6 det_bg_threshold: 0.4 det_fg_fraction: 0.3 det_context_pad: 16
                 det_crop_mode: "square" } top: "data" top: "label" }
layers { layer { name: "gain" type: "infogain_loss" source: "H.binaryproto" } bottom: "data" bottom: "label" }
""")
    window = net.layer[0]
    assert window.type == "WindowData" and window.window_data_param.source == "windows.txt"
    p = window.window_data_param
    assert (p.fg_threshold, p.bg_threshold, p.context_pad, p.crop_mode) == (pytest.approx(0.6),
                                                                          pytest.approx(0.4), 16, "square")
    assert p.fg_fraction == pytest.approx(0.3) and window.transform_param.crop_size == 227
    gain = net.layer[1]
    assert gain.type == "InfogainLoss" and gain.infogain_loss_param.source == "H.binaryproto"


# ---------------------------------------------------------------- DNNH's triplet loss

def _triplet_net(loss_weight=1.0, legacy=True, dim=3, margin=2.0):
    flag = "" if legacy else "legacy_gradient_scale: false"
    return CaffeNet(f"""
name: "triplet"
force_backward: true
layer {{ name: "in" type: "Input" top: "q" top: "s" top: "d"
        input_param {{ shape {{ dim: 4 dim: {dim} }} }} }}
layer {{ name: "loss" type: "TripletRankingHingeLoss" bottom: "q" bottom: "s" bottom: "d" top: "loss"
        loss_weight: {loss_weight} triplet_ranking_hinge_loss_param {{ dim: {dim} margin: {margin} {flag} }} }}
""")


def _triplet_reference(q, s, d, margin):
    """docs/SPEC.md section 1 (DNNH): l_n = max(0, margin + |q-s|^2 - |q-d|^2), top = sum / N;
    backward only where l_n > 0: dq = (d - s) 4/N, ds = (s - q) 4/N, dd = (q - d) 4/N."""
    n = q.shape[0]
    hinge = margin + ((q - s) ** 2).sum(1) - ((q - d) ** 2).sum(1)
    active = (hinge > 0).double()[:, None]
    loss = (hinge * (hinge > 0)).sum() / n
    return loss, (d - s) * active * 4 / n, (s - q) * active * 4 / n, (q - d) * active * 4 / n


def _triplets():
    g = torch.Generator().manual_seed(7)
    q, s, d = (torch.randn(4, 3, generator=g, dtype=torch.float64) for _ in range(3))
    # Sample 0: a hinge of exactly 0 (2 + |s|^2 - |d|^2 = 2 + 1 - 3); sample 1: clearly inactive.
    q[0], s[0], d[0] = torch.zeros(3), torch.tensor([1.0, 0, 0]), torch.tensor([1.0, 1, 1])
    q[1], s[1], d[1] = torch.zeros(3), torch.zeros(3), torch.full((3,), 5.0)
    return q, s, d


@pytest.mark.parametrize("loss_weight", [1.0, 0.5])
def test_triplet_loss_backward_is_the_public_layers(loss_weight):
    q, s, d = _triplets()
    loss, *grads = _triplet_reference(q, s, d, 2.0)
    net = _triplet_net(loss_weight).double()
    inputs = [t.clone().requires_grad_(True) for t in (q, s, d)]
    out = net(q=inputs[0], s=inputs[1], d=inputs[2])
    torch.testing.assert_close(out["loss"], loss)
    out.loss.backward()
    for tensor, expected in zip(inputs, grads):
        # The layer ignores its top diff: the same gradient whatever the loss weight.
        torch.testing.assert_close(tensor.grad, expected)
    assert inputs[0].grad[0].abs().sum() == 0 and inputs[0].grad[1].abs().sum() == 0


def test_triplet_loss_true_gradient_option():
    q, s, d = _triplets()
    _, *grads = _triplet_reference(q, s, d, 2.0)
    net = _triplet_net(0.5, legacy=False).double()
    inputs = [t.clone().requires_grad_(True) for t in (q, s, d)]
    net(q=inputs[0], s=inputs[1], d=inputs[2]).loss.backward()
    for tensor, expected in zip(inputs, grads):
        torch.testing.assert_close(tensor.grad, expected / 2 * 0.5)  # 2/N, times the loss weight
    # Away from the kink the true gradient is autograd's.
    q, s, d = (t[2:].clone() for t in _triplets())
    from ssdh_port.caffe.layers import _TripletHinge

    assert torch.autograd.gradcheck(lambda a, b, c: _TripletHinge.apply(a, b, c, 2.0, False),
                                    tuple(t.requires_grad_(True) for t in (q, s, d)))
