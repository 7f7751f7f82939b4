"""The layers Caffe's upgrade names that real nets use: InfogainLoss,
MultinomialLogisticLoss, MVN, MemoryData, HDF5Output, Pooling's argmax mask,
Convolution over several bottoms. Each
against a reference written from Caffe's layer code (loops over the elements)."""
import math

import numpy as np
import pytest
import torch

from ssdh_port.caffe import io as caffe_io
from ssdh_port.caffe.layers import LayerError
from ssdh_port.caffe.net import CaffeNet


def _net(body, inputs):
    shapes = "".join(f" shape {{ {' '.join(f'dim: {d}' for d in shape)} }}" for shape in inputs.values())
    tops = "".join(f' top: "{name}"' for name in inputs)
    return CaffeNet(f'name: "t" force_backward: true\nlayer {{ name: "in" type: "Input"{tops} '
                    f'input_param {{{shapes} }} }}\n{body}')


def test_max_pooling_mask_is_caffes_argmax():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 4, (2, 3, 7, 6), generator=g).float()  # many ties
    net = _net('layer { name: "p" type: "Pooling" bottom: "x" top: "y" top: "mask" '
               'pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 } }', {"x": (2, 3, 7, 6)})
    out = net(x=x)
    oh, ow = out["y"].shape[-2:]
    for n in range(2):
        for c in range(3):
            for i in range(oh):
                for j in range(ow):
                    # Caffe: the window clipped to the image, scanned row-major, strict >.
                    h0, w0 = max(i * 2 - 1, 0), max(j * 2 - 1, 0)
                    h1, w1 = min(i * 2 - 1 + 3, 7), min(j * 2 - 1 + 3, 6)
                    best, where = -math.inf, -1
                    for h in range(h0, h1):
                        for w in range(w0, w1):
                            if x[n, c, h, w] > best:
                                best, where = float(x[n, c, h, w]), h * 6 + w
                    assert out["y"][n, c, i, j] == best and out["mask"][n, c, i, j] == where
    with pytest.raises(LayerError, match="argmax mask\\) needs MAX pooling|needs MAX pooling"):
        _net('layer { name: "p" type: "Pooling" bottom: "x" top: "y" top: "m" '
             'pooling_param { pool: AVE kernel_size: 2 } }', {"x": (1, 1, 4, 4)})


def test_convolution_over_several_bottoms_shares_its_weights():
    net = _net('layer { name: "c" type: "Convolution" bottom: "a" bottom: "b" top: "ya" top: "yb" '
               'convolution_param { num_output: 2 kernel_size: 3 weight_filler { type: "gaussian" std: 1 } } }',
               {"a": (1, 2, 5, 5), "b": (1, 2, 5, 5)})
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(1, 2, 5, 5, generator=g), torch.randn(1, 2, 5, 5, generator=g)
    out = net(a=a, b=b)
    conv = net.layer("c")
    for x, name in ((a, "ya"), (b, "yb")):
        torch.testing.assert_close(out[name], torch.nn.functional.conv2d(x, conv.blobs[0], conv.blobs[1]))
    with pytest.raises(LayerError, match="all bottoms must have one shape"):
        _net('layer { name: "c" type: "Convolution" bottom: "a" bottom: "b" top: "ya" top: "yb" '
             'convolution_param { num_output: 2 kernel_size: 3 } }', {"a": (1, 2, 5, 5), "b": (1, 2, 6, 5)})


@pytest.mark.parametrize("across, variance", [(False, True), (True, True), (False, False)])
def test_mvn(across, variance):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64) * 3 + 1
    net = _net(f'layer {{ name: "m" type: "MVN" bottom: "x" top: "y" mvn_param {{ across_channels: {str(across).lower()} '
               f'normalize_variance: {str(variance).lower()} }} }}', {"x": (2, 3, 4, 5)}).double()
    y = net(x=x)["y"].detach()
    data = x.numpy()
    for n in range(2):
        groups = [data[n]] if across else list(data[n])
        outs = [y[n].numpy()] if across else list(y[n].numpy())
        for group, out in zip(groups, outs):
            centred = group - group.mean()
            expected = centred / (np.sqrt((centred ** 2).mean()) + 1e-9) if variance else centred
            np.testing.assert_allclose(out, expected, rtol=1e-10, atol=1e-12)


def test_multinomial_logistic_loss():
    prob = torch.tensor([[0.2, 0.7, 0.1], [0.5, 0.5, 0.0], [0.1, 0.1, 0.8]], dtype=torch.float64)
    label = torch.tensor([1.0, 2.0, 2.0], dtype=torch.float64)
    net = _net('layer { name: "l" type: "MultinomialLogisticLoss" bottom: "p" bottom: "y" top: "loss" '
               'loss_weight: 2 }', {"p": (3, 3), "y": (3,)}).double()
    p = prob.clone().requires_grad_(True)
    out = net(p=p, y=label)
    expected = -(math.log(0.7) + math.log(1e-20) + math.log(0.8)) / 3
    torch.testing.assert_close(out["loss"], torch.tensor(expected, dtype=torch.float64))
    out.loss.backward()
    grad = torch.zeros(3, 3, dtype=torch.float64)
    for n, (k, value) in enumerate(((1, 0.7), (2, 1e-20), (2, 0.8))):
        grad[n, k] = -2 / 3 / max(value, 1e-20)  # -top_diff / N / max(p, threshold), the loss weight 2
    torch.testing.assert_close(p.grad, grad)


def _infogain_reference(scores, labels, h, ignore=None):
    """BVLC master's InfogainLoss, element by element: (loss, gradient for a top diff of 1)."""
    prob = torch.softmax(scores, 1).numpy()
    n, c = prob.shape
    loss, count = 0.0, 0
    grad = np.zeros_like(prob)
    for i in range(n):
        label = int(labels[i])
        if label == ignore:
            continue
        for k in range(c):
            loss -= h[label, k] * math.log(max(prob[i, k], 1e-20))
            grad[i, k] = prob[i, k] * h[label].sum() - h[label, k]
        count += 1
    return loss / max(count, 1), grad / max(count, 1)


def test_infogain_loss_from_a_bottom_and_from_a_file(tmp_path):
    g = torch.Generator().manual_seed(3)
    scores = torch.randn(5, 4, generator=g, dtype=torch.float64)
    labels = torch.tensor([0.0, 3.0, 1.0, 1.0, 2.0], dtype=torch.float64)
    h = np.abs(np.random.default_rng(4).normal(size=(4, 4)))
    loss, grad = _infogain_reference(scores, labels, h)
    net = _net('layer { name: "l" type: "InfogainLoss" bottom: "s" bottom: "y" bottom: "H" top: "loss" top: "prob" }',
               {"s": (5, 4), "y": (5,), "H": (1, 1, 4, 4)}).double()
    s = scores.clone().requires_grad_(True)
    out = net(s=s, y=labels, H=torch.from_numpy(h).reshape(1, 1, 4, 4))
    torch.testing.assert_close(out["loss"], torch.tensor(loss, dtype=torch.float64))
    torch.testing.assert_close(out["prob"], torch.softmax(scores, 1))
    out.loss.backward()
    torch.testing.assert_close(s.grad, torch.from_numpy(grad))
    # H from infogain_loss_param.source, an ignored label.
    caffe_io.write_blobproto(h.reshape(1, 1, 4, 4).astype(np.float32), tmp_path / "H.binaryproto")
    net = _net(f'layer {{ name: "l" type: "InfogainLoss" bottom: "s" bottom: "y" top: "loss" '
               f'infogain_loss_param {{ source: "{tmp_path / "H.binaryproto"}" }} loss_param {{ ignore_label: 1 }} }}',
               {"s": (5, 4), "y": (5,)}).double()
    loss, grad = _infogain_reference(scores, labels, h.astype(np.float32).astype(np.float64), ignore=1)
    s = scores.clone().requires_grad_(True)
    out = net(s=s, y=labels)
    torch.testing.assert_close(out["loss"], torch.tensor(loss, dtype=torch.float64))
    out.loss.backward()
    torch.testing.assert_close(s.grad, torch.from_numpy(grad))
    with pytest.raises(LayerError, match="third bottom or infogain_loss_param.source"):
        _net('layer { name: "l" type: "InfogainLoss" bottom: "s" bottom: "y" top: "loss" }', {"s": (5, 4), "y": (5,)})


def test_memory_data_feeds_arrays_in_batches():
    net = CaffeNet('name: "m" layer { name: "mem" type: "MemoryData" top: "data" top: "label" '
                   'memory_data_param { batch_size: 2 channels: 1 height: 2 width: 3 } }')
    assert net.blob_shapes["data"] == (2, 1, 2, 3) and net.blob_shapes["label"] == (2,)
    with pytest.raises(LayerError, match="call reset"):
        net()
    data = np.arange(4 * 6, dtype=np.float32).reshape(4, 1, 2, 3)
    net.layer("mem").reset(data, [5, 6, 7, 8])
    batches = [net() for _ in range(3)]
    np.testing.assert_array_equal(batches[0]["data"].numpy(), data[:2])
    np.testing.assert_array_equal(batches[1]["label"].numpy(), [7, 8])
    np.testing.assert_array_equal(batches[2]["data"].numpy(), data[:2])  # wraps around
    with pytest.raises(LayerError, match="multiple of the batch size 2"):
        net.layer("mem").reset(data[:3], [1, 2, 3])


def test_hdf5_output_writes_its_bottoms(tmp_path):
    import h5py

    path = tmp_path / "out.h5"
    net = _net(f'layer {{ name: "o" type: "HDF5Output" bottom: "x" bottom: "y" '
               f'hdf5_output_param {{ file_name: "{path}" }} }}', {"x": (2, 3), "y": (2,)})
    rows = [np.arange(6, dtype=np.float32).reshape(2, 3) + k for k in range(2)]
    for k, x in enumerate(rows):
        net(x=x, y=np.array([k, k + 10], np.float32))
    net.layer("o").close()
    with h5py.File(path) as f:
        np.testing.assert_array_equal(f["data"][()], np.concatenate(rows))
        np.testing.assert_array_equal(f["label"][()], [0, 10, 1, 11])


POOL_CASES = [  # (input H x W, kernel, stride, pad, ceil) with odd sizes, last windows cut off, pads up to k - 1
    ((7, 6), (3, 3), (2, 2), (0, 0), True), ((7, 6), (3, 3), (2, 2), (1, 1), True), ((8, 8), (2, 2), (2, 2), (0, 0), True),
    ((13, 13), (3, 3), (2, 2), (0, 0), True), ((5, 9), (3, 2), (1, 2), (1, 0), True), ((6, 6), (3, 3), (3, 3), (2, 2), True),
    ((9, 7), (4, 4), (3, 3), (3, 1), True), ((7, 7), (3, 3), (2, 2), (1, 1), False), ((4, 4), (4, 4), (1, 1), (0, 0), True),
    ((10, 11), (5, 3), (2, 3), (2, 1), True), ((3, 3), (2, 2), (2, 2), (1, 1), True),
]


@pytest.mark.parametrize("size,kernel,stride,pad,ceil", POOL_CASES)
@pytest.mark.parametrize("method", ["MAX", "AVE"])
def test_pooling_is_caffes_loop(size, kernel, stride, pad, ceil, method):
    """Both ways to pool (torch's kernel where it accepts the padding, the padded copy
    everywhere) against Caffe's loop; forward, mask and gradients."""
    from ssdh_port.caffe.layers import caffe_max_pool_with_mask, caffe_pool, caffe_pool_padded
    from tests.reference import caffe_pooling
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, 5, (2, 3) + size, generator=g).double()  # ties everywhere
    want, want_mask = caffe_pooling(x.numpy(), method, kernel, stride, pad, ceil)
    grads = []
    for pool in (caffe_pool, caffe_pool_padded):
        leaf = x.clone().requires_grad_(True)
        top = pool(leaf, method, kernel, stride, pad, ceil)
        np.testing.assert_allclose(top.detach().numpy(), want, rtol=1e-12, err_msg=pool.__name__)
        top.backward(torch.arange(top.numel(), dtype=torch.float64).reshape(top.shape))
        grads.append(leaf.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=0)
    if method == "MAX":
        top, mask = caffe_max_pool_with_mask(x, kernel, stride, pad, ceil)
        np.testing.assert_array_equal(mask.long().numpy(), want_mask)


@pytest.mark.parametrize("spec,axis,num_axes", [("dim: 0 dim: -1", 0, -1), ("dim: 0 dim: 1 dim: 1 dim: -1", 0, -1),
                                                  ("dim: 2 dim: -1", 1, 1), ("dim: -1", 1, -1), ("dim: 2 dim: 0 dim: 2", 2, 2)])
def test_reshape_follows_the_batch_of_each_call(spec, axis, num_axes):
    """Caffe's Reshape: 0 copies the bottom's axis, -1 is inferred, axes outside
    [axis, axis + num_axes) are kept; resolved again for another batch size."""
    net = _net(f'layer {{ name: "r" type: "Reshape" bottom: "x" top: "y" reshape_param {{ shape {{ {spec} }} '
               f'axis: {axis} num_axes: {num_axes} }} }}', {"x": (2, 6, 4, 3)})
    for batch in (2, 5):
        x = torch.arange(batch * 72, dtype=torch.float32).reshape(batch, 6, 4, 3)
        dims = [int(d) for d in spec.replace("dim:", "").split()]
        shape = list(x.shape)
        end = len(shape) if num_axes == -1 else axis + num_axes
        middle = [shape[axis + i] if d == 0 else d for i, d in enumerate(dims)]
        want = x.numpy().reshape(shape[:axis] + middle + shape[end:])
        np.testing.assert_array_equal(net(x=x)["y"].detach().numpy(), want)
