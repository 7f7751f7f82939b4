"""The faster paths keep Caffe's numbers: LRN's own backward (gradcheck and the
formula autograd would differentiate), BatchNorm through torch's fused kernel
(the blobs' running sums as Caffe keeps them, one value per channel), and the
opt-in bf16 encoding (close to float32, not equal)."""
import numpy as np
import pytest
import torch
from torch.nn import functional as F

from ssdh_port.caffe.layers import _LRNAcrossChannels
from ssdh_port.caffe.net import CaffeNet


def lrn_by_formula(x, n, alpha, beta, k):
    pre = (n - 1) // 2
    sq = F.pad(x * x, (0, 0, 0, 0, pre, n - 1 - pre))
    window = sum(sq[:, i:i + x.shape[1]] for i in range(n))
    return x * (k + alpha / n * window) ** -beta


@pytest.mark.parametrize("n", [1, 3, 5, 9])
@pytest.mark.parametrize("beta", [0.75, 0.6])
def test_native_lrn_is_the_formula(n, beta):
    """ops.lrn_across_channels (the CPU path of the LRN layer) against autograd on the
    formula, channels fewer than the window too; gradcheck; float32 close to float64."""
    from ssdh_port import ops

    x = torch.randn(3, 7, 5, 6, dtype=torch.double, requires_grad=True)
    grad = torch.randn(3, 7, 5, 6, dtype=torch.double)
    ours = ops.lrn_across_channels(x, n, 0.3, beta, 2.0)
    theirs = lrn_by_formula(x, n, 0.3, beta, 2.0)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(torch.autograd.grad(ours, x, grad)[0], torch.autograd.grad(theirs, x, grad)[0],
                               rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(lambda t: ops.lrn_across_channels(t, n, 0.3, beta, 2.0), (x,))
    single = ops.lrn_across_channels(x.detach().float(), n, 0.3, beta, 2.0)
    torch.testing.assert_close(single.double(), theirs.detach(), rtol=1e-5, atol=1e-6)
    with pytest.raises(Exception, match="size must be odd"):
        ops.lrn_across_channels(x, 4, 0.3, beta, 2.0)


@pytest.mark.parametrize("n", [1, 3, 5])
def test_lrn_backward_is_the_formulas(n):
    x = torch.randn(2, 7, 3, 4, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: _LRNAcrossChannels.apply(t, n, 0.3, 0.75, 2.0), (x,))
    grad = torch.randn(2, 7, 3, 4, dtype=torch.double)
    ours = torch.autograd.grad(_LRNAcrossChannels.apply(x, n, 0.3, 0.75, 2.0), x, grad)[0]
    theirs = torch.autograd.grad(lrn_by_formula(x, n, 0.3, 0.75, 2.0), x, grad)[0]
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)


BN = """
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: %d dim: 3 dim: %d dim: %d } } }
layer { name: "bn" type: "BatchNorm" bottom: "data" top: "bn" batch_norm_param { moving_average_fraction: 0.9 } }
"""


@pytest.mark.parametrize("shape", [(4, 3, 5, 6), (1, 3, 1, 1)])
def test_batch_norm_statistics_as_caffe_keeps_them(shape):
    n, _, h, w = shape
    net = CaffeNet(BN % (n, h, w), "TRAIN")
    x = torch.randn(*shape, dtype=torch.float64) * 3 + 1
    net.double()
    for step in range(2):
        top = net(data=x)["bn"]
    m = n * h * w
    mean = x.mean(dim=(0, 2, 3))
    var = x.var(dim=(0, 2, 3), unbiased=False)
    correction = m / (m - 1) if m > 1 else 1.0
    blobs = net.layer("bn").blobs
    torch.testing.assert_close(blobs[2], torch.tensor([1.9], dtype=torch.float64))   # 0.9 * 1 + 1
    torch.testing.assert_close(blobs[0], 1.9 * mean)
    torch.testing.assert_close(blobs[1], 1.9 * correction * var)
    expected = (x - mean.view(1, -1, 1, 1)) / torch.sqrt(var.view(1, -1, 1, 1) + 1e-5)
    torch.testing.assert_close(top, expected)


def test_bf16_encoding_is_close_to_float32():
    from tests.shared_data import shared

    import os
    prototxt = shared("caffe-models", "lenet", "lenet.prototxt")
    if not os.path.isfile(prototxt):
        pytest.skip("the real LeNet model is not at hand")
    from ssdh_port.data import mnist
    from ssdh_port.pipeline.features import extract, load_net

    net = load_net(prototxt, shared("caffe-models", "lenet", "lenet_iter_10000.caffemodel"), 50)
    images, labels = mnist.load_split("test")
    x = torch.from_numpy(images[:200, None].astype(np.float32) / 256)

    def batches():
        return ((x[i:i + 50], labels[i:i + 50]) for i in range(0, 200, 50))

    full, _ = extract(net, ["ip1"], batches(), progress=False)
    half, _ = extract(net, ["ip1"], batches(), progress=False, precision="bf16")
    error = np.abs(full["ip1"] - half["ip1"]).max() / np.abs(full["ip1"]).max()
    assert 0 < error < 0.02   # bf16 keeps 8 bits of mantissa: close, and not the same numbers
