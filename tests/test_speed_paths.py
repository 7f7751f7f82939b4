"""The faster paths keep Caffe's numbers: LRN's own backward (gradcheck and the
formula autograd would differentiate), BatchNorm through torch's fused kernel
(the blobs' running sums as Caffe keeps them, one value per channel), InnerProduct
at small batch (the weight read once per pass) with Caffe's diffs accumulated in
place, MAX pooling through the separable native kernel (Caffe's scan order, mask and
backward), Scale's three gradients in one pass, Dropout's counter-based mask, the
image convolutions' backward by im2col + GEMM, and the opt-in bf16 encoding (close to float32, not equal)."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from ssdh_port import ops
from ssdh_port.caffe import layers
from ssdh_port.caffe.layers import _LRNFormula
from ssdh_port.caffe.net import CaffeNet
from ssdh_port.errors import SSDHError


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
    assert torch.autograd.gradcheck(lambda t: _LRNFormula.apply(t, n, 0.3, 0.75, 2.0), (x,))
    grad = torch.randn(2, 7, 3, 4, dtype=torch.double)
    ours = torch.autograd.grad(_LRNFormula.apply(x, n, 0.3, 0.75, 2.0), x, grad)[0]
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


# ------------------------------------------------------- InnerProduct, small batch

LINEAR_SHAPES = [(1, 1, 1), (1, 5, 3), (3, 17, 9), (4, 8, 3), (5, 19, 11), (8, 520, 37), (13, 1031, 8),
                 (16, 2048, 50)]


@pytest.mark.parametrize("m, k, n", LINEAR_SHAPES)
def test_small_batch_linear_kernels_are_the_products(m, k, n):
    """Both kernels against float64 products, at sizes off every block (4 rows x 3
    weights, 8-float vectors, 512-column chunks, 8 weight rows); differentiable once."""
    gen = torch.Generator().manual_seed(m * 1000 + k + n)
    x, w, g = (torch.randn(*shape, generator=gen) for shape in ((m, k), (n, k), (m, n)))
    y = ops.linear_small_batch(x, w)
    assert y.shape == (m, n) and y.dtype == torch.float32
    torch.testing.assert_close(y.double(), x.double() @ w.double().t(), rtol=1e-5, atol=1e-5 * k ** 0.5)
    dx = ops.linear_small_batch_input_grad(g, w)
    torch.testing.assert_close(dx.double(), g.double() @ w.double(), rtol=1e-5, atol=1e-5 * n ** 0.5)
    xr, wr = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
    ops.linear_small_batch(xr, wr).backward(g)
    torch.testing.assert_close(xr.grad, dx)
    torch.testing.assert_close(wr.grad.double(), g.double().t() @ x.double(), rtol=1e-5, atol=1e-5 * m ** 0.5)


def test_small_batch_linear_kernels_on_strided_inputs_and_errors():
    x, w = torch.randn(6, 40), torch.randn(30, 20)
    torch.testing.assert_close(ops.linear_small_batch(x[:, ::2], w), x[:, ::2] @ w.t(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ops.linear_small_batch_input_grad(x[:, :30], w), x[:, :30] @ w, rtol=1e-5, atol=1e-5)
    with pytest.raises(SSDHError, match="linear_small_batch: x has 40 columns, the weight takes 20"):
        ops.linear_small_batch(x, w)
    with pytest.raises(SSDHError, match="expected a 2-D float32 CPU weight, got torch.float64"):
        ops.linear_small_batch(x[:, :20], w.double())
    with pytest.raises(SSDHError, match="linear_small_batch_input_grad: grad has 40 columns, the weight takes 30"):
        ops.linear_small_batch_input_grad(x, w)


PORTABLE_BUILDS = [
    ("SSDH_CPU_LINEAR", "small_batch_linear_kernels or inner_product",
     "o.linear_small_batch(torch.ones(1, 1), torch.ones(1, 1))"),
    ("SSDH_CPU_LAYERS",
     "max_pool or pooling or channel_scale or scale_layer or dropout or im2col or image_conv or conv_weight_grad",
     "o.max_pool2d_with_mask(torch.ones(1, 1, 2, 2), 2, 2, 0, 1)"),
]


@pytest.mark.slow
@pytest.mark.parametrize("variable, tests, call", PORTABLE_BUILDS, ids=["linear", "pool"])
def test_portable_builds(variable, tests, call):
    """The loops a CPU without AVX2 / FMA runs, through the same tests; a bad name."""
    env = dict(os.environ, **{variable: "generic"})
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__,
                             "-k", f"({tests}) and not portable"], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert " passed" in result.stdout
    env[variable] = "sse9"
    code = f"import torch, ssdh_port.ops as o; {call}"
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode != 0 and f"{variable} must be generic or avx2, got 'sse9'" in result.stderr


IP_NET = """
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: %d dim: 3 dim: 4 dim: 5 } } }
layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc"
        inner_product_param { num_output: 7 weight_filler { type: "gaussian" std: 0.3 }
                              bias_filler { type: "gaussian" std: 0.3 } %s } }
layer { name: "fc2" type: "InnerProduct" bottom: "fc" top: "fc2" param { name: "shared" }
        inner_product_param { num_output: 7 weight_filler { type: "gaussian" std: 0.3 } bias_term: false } }
layer { name: "fc3" type: "InnerProduct" bottom: "fc2" top: "fc3" param { name: "shared" }
        inner_product_param { num_output: 7 bias_term: false } }
"""


def _ip_net(batch, extra=""):
    from ssdh_port.caffe import io as caffe_io
    torch.manual_seed(0)
    return CaffeNet(caffe_io.parse_net_prototxt(IP_NET % (batch, extra)), phase="TRAIN")


def _plain_inner_products(net, x):
    """The same net by F.linear on the blobs (the reference)."""
    fc, fc2 = net.layer("fc"), net.layer("fc2")
    top = F.linear(x.flatten(1), fc.blobs[0], fc.blobs[1])
    return F.linear(F.linear(top, fc2.blobs[0]), fc2.blobs[0])


@pytest.mark.parametrize("batch", [1, 6, 17, 32, 40])
def test_inner_product_layer_is_linear_at_every_batch(batch):
    """The layer (native kernels up to 32 rows, mm beyond) against F.linear: tops and
    every gradient, the shared weight's two uses summed."""
    net = _ip_net(batch)
    x = torch.randn(batch, 3, 4, 5, requires_grad=True)
    top = net(data=x)["fc3"]
    g = torch.randn_like(top)
    grads = torch.autograd.grad(top, [x, *net.parameters()], g)
    ref_x = x.detach().clone().requires_grad_(True)
    ref = _plain_inner_products(net, ref_x)
    ref_grads = torch.autograd.grad(ref, [ref_x, *net.parameters()], g)
    torch.testing.assert_close(top, ref, rtol=1e-5, atol=1e-5)
    for ours, theirs in zip(grads, ref_grads):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("batch", [4, 40])
def test_inner_product_diffs_accumulate_in_place(batch):
    """accumulate_diffs: the weight gradient is added into the existing .grad (same
    memory), twice over two passes, shared weights included; a blob without a .grad
    gets autograd's; a frozen weight (lr_mult 0) gets none; bf16 autocast keeps F.linear."""
    net = _ip_net(batch).accumulate_diffs()
    x = torch.randn(batch, 3, 4, 5)
    g = torch.randn(batch, 7)
    net(data=x)["fc3"].backward(g)
    first = {name: p.grad.clone() for name, p in net.named_parameters()}
    memory = {name: p.grad.data_ptr() for name, p in net.named_parameters()}
    net(data=x)["fc3"].backward(g)
    for name, p in net.named_parameters():
        assert p.grad.data_ptr() == memory[name], name
        torch.testing.assert_close(p.grad, 2 * first[name], rtol=1e-5, atol=1e-5)
    ref_x = x.clone()
    ref = _plain_inner_products(net, ref_x)
    expected = torch.autograd.grad(ref, list(net.parameters()), g)
    for (name, _), e in zip(net.named_parameters(), expected):
        torch.testing.assert_close(first[name], e, rtol=1e-5, atol=1e-5)

    frozen = _ip_net(batch, "").accumulate_diffs()
    frozen.layer("fc").frozen_blobs.add(0)
    frozen(data=x)["fc3"].backward(g)
    assert frozen.layer("fc").blobs[0].grad is None and frozen.layer("fc").blobs[1].grad is not None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert net(data=x)["fc"].dtype == torch.bfloat16


def test_inner_product_function_gradcheck():
    x = torch.randn(3, 6, dtype=torch.double, requires_grad=True)
    w = torch.randn(4, 6, dtype=torch.double, requires_grad=True)
    b = torch.randn(4, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *t: layers._InnerProductFunction.apply(*t, None), (x, w, b))


# ---------------------------------------------------------------- MAX pooling


# (map h, w), kernel, stride, pad: the built sizes (3 x 3 and 2 x 2 at strides 1 and
# 2) at odd widths, rectangular and runtime sizes, pad, a whole-map window, strides
# above the kernel (windows past the map).
POOL_GEOMETRIES = [
    ((7, 9), (3, 3), (2, 2), (0, 0)),
    ((8, 19), (3, 3), (2, 2), (1, 1)),
    ((8, 8), (3, 3), (1, 1), (1, 1)),
    ((6, 21), (2, 2), (2, 2), (0, 0)),
    ((9, 10), (3, 2), (2, 3), (1, 1)),
    ((11, 13), (4, 3), (3, 1), (2, 1)),
    ((5, 5), (5, 5), (1, 1), (0, 0)),
    ((5, 7), (1, 2), (3, 4), (0, 0)),
    ((1, 30), (1, 3), (1, 2), (0, 1)),
]


@pytest.mark.parametrize("size, kernel, stride, pad", POOL_GEOMETRIES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_max_pool_kernel_is_caffes_scan(size, kernel, stride, pad, dtype):
    """ops.max_pool2d_with_mask against Caffe's loops (tests/reference.py): ties (small
    integers: the first maximum in row-major order), NaN and -inf that never win,
    windows of nothing but NaN or past the map (lowest value, mask -1); the backward
    against Caffe's scatter, which skips mask -1."""
    from ssdh_port.caffe.layers import caffe_pool_size
    from tests.reference import caffe_max_pool_backward, caffe_pooling

    g = torch.Generator().manual_seed(sum(size) + sum(kernel))
    x = torch.randint(-2, 3, (2, 3, *size), generator=g).to(dtype)
    flat = x.view(-1)
    flat[torch.randperm(flat.numel(), generator=g)[:5]] = float("nan")
    flat[torch.randperm(flat.numel(), generator=g)[:3]] = float("-inf")
    x[1, 2] = float("nan")  # a map of NaN: every window empty of winners
    out_size = tuple(caffe_pool_size(n, k, s, p) for n, k, s, p in zip(size, kernel, stride, pad))
    x.requires_grad_(True)
    top, mask = ops.max_pool2d_with_mask(x, kernel, stride, pad, out_size)
    expected_top, expected_mask = (torch.from_numpy(a) for a in caffe_pooling(x.detach().numpy(), "MAX", kernel,
                                                                               stride, pad))
    assert torch.equal(mask, expected_mask.to(torch.int32))
    assert torch.equal(top.detach(), expected_top.to(dtype))
    assert (mask[1, 2] == -1).all() and (top[1, 2] == torch.finfo(dtype).min).all()
    assert mask.dtype == torch.int32 and not mask.requires_grad
    grad = torch.randn(top.shape, dtype=dtype, generator=g)
    (got,) = torch.autograd.grad(top, x, grad)
    expected = torch.from_numpy(caffe_max_pool_backward(grad.numpy(), expected_mask.numpy(), size))
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_max_pool_kernel_gradcheck_and_threads():
    x = torch.randn(2, 3, 9, 11, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: ops.max_pool2d_with_mask(t, 3, 2, 1, (5, 6))[0], (x,))
    big = torch.randn(4, 16, 37, 41)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = ops.max_pool2d_with_mask(big, 3, 2, 0, (18, 20))
        torch.set_num_threads(2)
        two = ops.max_pool2d_with_mask(big, 3, 2, 0, (18, 20))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one[0], two[0]) and torch.equal(one[1], two[1])


def test_max_pool_kernel_errors():
    x = torch.randn(1, 2, 5, 5)
    with pytest.raises(SSDHError, match="expected an N x C x H x W float32 / float64 CPU tensor, got torch.int64"):
        ops.max_pool2d_with_mask(x.long(), 2, 2, 0, (3, 3))
    with pytest.raises(SSDHError, match="kernel takes an int or two"):
        ops.max_pool2d_with_mask(x, (2, 2, 2), 2, 0, (3, 3))
    with pytest.raises(RuntimeError, match=r"pad \[2, 2\] must be non-negative and smaller than the kernel"):
        ops.max_pool2d_with_mask(x, 2, 2, 2, (3, 3))
    with pytest.raises(RuntimeError, match="out_size must be positive"):
        ops.max_pool2d_with_mask(x, 2, 2, 0, (0, 3))
    _, mask = ops.max_pool2d_with_mask(x, 2, 2, 0, (3, 3))
    bad = mask.clone()
    bad[0, 1, 2, 2] = 25
    with pytest.raises(RuntimeError, match=r"indices outside the 5 x 5 map \(expected -1 or 0 .. 24\)"):
        torch.ops.ssdh._max_pool2d_with_mask_backward(torch.ones(1, 2, 3, 3), bad, [5, 5])
    with pytest.raises(RuntimeError, match="the mask must be int32"):
        torch.ops.ssdh._max_pool2d_with_mask_backward(torch.ones(1, 2, 3, 3), mask.long(), [5, 5])


POOL_NET = """
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 4 dim: 13 dim: 12 } } }
layer { name: "pool" type: "Pooling" bottom: "data" top: "pool" %s
  pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: %d } }
"""


@pytest.mark.parametrize("pad", [0, 1, 2])
@pytest.mark.parametrize("mask_top", [False, True])
def test_pooling_layer_native_and_torch_paths_agree(pad, mask_top):
    """The Pooling layer takes the native kernel for contiguous CPU float maps and
    torch's max_pool2d elsewhere (channels-last here): the same tops and gradients on
    maps without NaN (pad 2 goes through torch's padded copy)."""
    net = CaffeNet(POOL_NET % ('top: "mask"' if mask_top else "", pad), "TRAIN")
    x = torch.randn(2, 4, 13, 12, requires_grad=True)
    x_last = x.detach().to(memory_format=torch.channels_last).requires_grad_(True)
    assert layers._native_max_pool(x) and not layers._native_max_pool(x_last)
    native, torch_path = net(data=x), net(data=x_last)
    for name in ("pool", "mask") if mask_top else ("pool",):
        assert torch.equal(native[name].detach(), torch_path[name].detach().contiguous())
    grad = torch.randn(native["pool"].shape)
    (a,) = torch.autograd.grad(native["pool"], x, grad)
    (b,) = torch.autograd.grad(torch_path["pool"], x_last, grad)
    torch.testing.assert_close(a, b.contiguous(), rtol=0, atol=0)


# ---------------------------------------------------------------- Scale


@pytest.mark.parametrize("shape", [(3, 5, 37), (1, 4, 16), (2, 3, 1), (4, 6, 200)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_channel_scale_is_the_product_and_its_sums(shape, with_bias):
    """ops.channel_scale against float64 sums: inner sizes off the 16-lane blocks,
    inner 1, one outer row; float32 close, float64 to rounding."""
    g = torch.Generator().manual_seed(sum(shape))
    for dtype, tol in ((torch.float32, 1e-5), (torch.float64, 1e-12)):
        x = torch.randn(shape, dtype=dtype, generator=g, requires_grad=True)
        scale = torch.randn(shape[1], dtype=dtype, generator=g, requires_grad=True)
        bias = torch.randn(shape[1], dtype=dtype, generator=g, requires_grad=True) if with_bias else None
        top = ops.channel_scale(x, scale, bias)
        x64, s64 = x.detach().double(), scale.detach().double()
        expected = x64 * s64[:, None] + (bias.detach().double()[:, None] if with_bias else 0)
        torch.testing.assert_close(top.double(), expected, rtol=tol, atol=tol)
        grad = torch.randn(shape, dtype=dtype, generator=g)
        wrt = (x, scale, bias) if with_bias else (x, scale)
        got = torch.autograd.grad(top, wrt, grad)
        g64 = grad.double()
        wanted = [g64 * s64[:, None], (g64 * x64).sum((0, 2)), g64.sum((0, 2))][:len(wrt)]
        for a, b in zip(got, wanted):
            torch.testing.assert_close(a.double(), b, rtol=tol, atol=tol * shape[0] * shape[2])


def test_channel_scale_gradcheck_threads_and_errors():
    x = torch.randn(2, 3, 21, dtype=torch.float64, requires_grad=True)
    s = torch.randn(3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(ops.channel_scale, (x, s, b))
    big, scale, grad = torch.randn(4, 64, 999), torch.randn(64), torch.randn(4, 64, 999)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = torch.ops.ssdh._channel_scale_backward(grad, big, scale)
        torch.set_num_threads(2)
        two = torch.ops.ssdh._channel_scale_backward(grad, big, scale)
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(a, b) for a, b in zip(one, two))
    with pytest.raises(SSDHError, match=r"expected x outer x C x inner and C-vectors, got x \(2, 3, 21\), scale \(4,\)"):
        ops.channel_scale(x, torch.ones(4, dtype=torch.float64))
    with pytest.raises(SSDHError, match="must share a dtype"):
        ops.channel_scale(x, torch.ones(3))
    with pytest.raises(SSDHError, match="bias is torch.int64"):
        ops.channel_scale(x, s, torch.ones(3, dtype=torch.long))


SCALE_NET = """
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 6 dim: 5 dim: 7 } } }
layer { name: "scale" type: "Scale" bottom: "data" top: "scaled"
  scale_param { axis: %d num_axes: %d bias_term: %s filler { type: "gaussian" std: 1 }
                bias_filler { type: "gaussian" std: 1 } } }
"""


@pytest.mark.parametrize("axis, num_axes, bias", [(1, 1, "true"), (1, 2, "false"), (2, 1, "true"), (0, 1, "true")])
def test_scale_layer_native_and_torch_paths_agree(axis, num_axes, bias):
    """The Scale layer's native path (contiguous CPU float maps) and its broadcast
    product (channels-last here) give the same top and the same three gradients."""
    net = CaffeNet(SCALE_NET % (axis, num_axes, bias), "TRAIN")
    x = torch.randn(2, 6, 5, 7, requires_grad=True)
    x_last = x.detach().to(memory_format=torch.channels_last).requires_grad_(True)
    layer = net.layer("scale")
    scale = layer.blob(0)
    assert layer._native(x, scale, None) and not layer._native(x_last, scale, None)
    grad = torch.randn(2, 6, 5, 7)
    results = []
    for inp in (x, x_last):
        top = net(data=inp)["scaled"]
        results.append((top.detach().contiguous(),
                        *(t.contiguous() for t in torch.autograd.grad(top, [inp, *layer.blobs], grad))))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- Dropout


@pytest.mark.parametrize("ratio", [0.5, 0.1, 0.9, 0.0])
def test_dropout_keeps_one_minus_ratio_and_scales(ratio):
    """ops.dropout: top = x * mask / (1 - ratio) exactly, the backward the same
    product; the fraction kept within 5 standard deviations of 1 - ratio, and pairs
    of neighbours (the two halves of one draw) and of far elements kept together as
    often as independent draws would be."""
    x = torch.randn(7, 33, 101, dtype=torch.float64, requires_grad=True)
    top, mask = ops.dropout(x, ratio)
    assert mask.dtype == torch.uint8 and set(mask.unique().tolist()) <= {0, 1}
    keep = 1.0 - ratio
    torch.testing.assert_close(top.detach(), x.detach() * mask * (1.0 / keep), rtol=0, atol=0)
    grad = torch.randn_like(top)
    (got,) = torch.autograd.grad(top, x, grad)
    torch.testing.assert_close(got, grad * mask * (1.0 / keep), rtol=0, atol=0)
    m = mask.flatten().double()
    n = m.numel() // 2 * 2
    m = m[:n]
    sd = (keep * (1 - keep) / n) ** 0.5
    assert abs(m.mean().item() - keep) <= 5 * sd + 1e-12
    for a, b in ((m[0::2], m[1::2]), (m[: n // 2], m[n // 2:])):
        both = (a * b).mean().item()
        sd_pair = (keep ** 2 * (1 - keep ** 2) / a.numel()) ** 0.5
        assert abs(both - keep ** 2) <= 5 * sd_pair + 1e-12


def test_dropout_repeats_under_a_seed_and_any_thread_count():
    x = torch.randn(3, 50, 77)
    before = torch.get_num_threads()
    try:
        torch.manual_seed(5)
        torch.set_num_threads(1)
        one = ops.dropout(x, 0.5)[1]
        torch.manual_seed(5)
        torch.set_num_threads(2)
        two = ops.dropout(x, 0.5)[1]
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, two)
    assert not torch.equal(two, ops.dropout(x, 0.5)[1])  # the next draw: another mask
    g = torch.Generator().manual_seed(3)
    a = ops.dropout(x, 0.5, generator=g)[1]
    assert torch.equal(a, ops.dropout(x, 0.5, generator=torch.Generator().manual_seed(3))[1])
    with pytest.raises(SSDHError, match=r"the ratio must be in \[0, 1\), got 1.0"):
        ops.dropout(x, 1.0)
    with pytest.raises(SSDHError, match="expected a float32 / float64 CPU tensor, got torch.int64"):
        ops.dropout(x.long(), 0.5)
    with pytest.raises(RuntimeError, match="expected a uint8 mask shaped as grad"):
        torch.ops.ssdh._dropout_backward(x, one.bool(), 0.5)


DROPOUT_NET = """
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 4 dim: 300 } } }
layer { name: "drop" type: "Dropout" bottom: "data" top: "data" dropout_param { dropout_ratio: 0.3 } }
"""


def test_dropout_layer_trains_with_the_native_mask_and_passes_in_test():
    x = torch.randn(4, 300, requires_grad=True)
    torch.manual_seed(8)
    train = CaffeNet(DROPOUT_NET, "TRAIN")(data=x)["data"]
    torch.manual_seed(8)
    _, mask = ops.dropout(x.detach(), 0.3)
    torch.testing.assert_close(train.detach(), x.detach() * mask * (1 / (1 - 0.3)), rtol=0, atol=0)
    assert torch.equal(CaffeNet(DROPOUT_NET, "TEST")(data=x)["data"], x)


# ---------------------------------------------------------------- im2col / image convolutions

IM2COL_GEOMETRIES = [  # N, C, H, W, kernel, stride, pad, dilation
    (2, 3, 11, 13, (3, 3), (2, 2), (1, 1), (1, 1)),
    (3, 1, 9, 8, (5, 2), (1, 3), (0, 1), (1, 1)),
    (1, 2, 12, 10, (3, 3), (1, 1), (2, 1), (2, 3)),
]


@pytest.mark.parametrize("n, c, h, w, kernel, stride, pad, dilation", IM2COL_GEOMETRIES)
def test_im2col_is_unfold_with_samples_side_by_side(n, c, h, w, kernel, stride, pad, dilation):
    x = torch.randn(n, c, h, w, dtype=torch.float64, requires_grad=True)
    col = ops.im2col(x, kernel, stride, pad, dilation)
    unfold = F.unfold(x, kernel, dilation, pad, stride)  # N x (C kh kw) x L
    torch.testing.assert_close(col, unfold.transpose(0, 1).reshape(col.shape[0], -1), rtol=0, atol=0)
    other = torch.randn_like(col)
    folded = ops.col2im(other, x.shape, kernel, stride, pad, dilation)
    expected = F.fold(other.view(col.shape[0], n, -1).transpose(0, 1), (h, w), kernel, dilation, pad, stride)
    torch.testing.assert_close(folded, expected, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(lambda t: ops.im2col(t, kernel, stride, pad, dilation), (x,))
    assert torch.autograd.gradcheck(lambda t: ops.col2im(t, x.shape, kernel, stride, pad, dilation),
                                    (other.requires_grad_(True),))


def test_im2col_errors():
    x = torch.randn(1, 2, 5, 5)
    with pytest.raises(RuntimeError, match=r"does not fit the padded 5 x 5 map"):
        ops.im2col(x, 7, 1, 0, 1)
    with pytest.raises(RuntimeError, match=r"col2im: expected a 18 x 4 col for shape \[1, 2, 5, 5\], got \[18, 8\]"):
        ops.col2im(torch.zeros(18, 8), (1, 2, 5, 5), 3, 2, 0, 1)
    with pytest.raises(SSDHError, match="im2col: stride takes an int or two"):
        ops.im2col(x, 3, (1, 1, 1), 0, 1)
    with pytest.raises(SSDHError, match="expected a float32 / float64 CPU x, got torch.int64"):
        ops.im2col(x.long(), 3)


CONV_WEIGHT_GRAD_GEOMETRIES = [  # N, C, H, W, O, kernel, pad: whole 8-column chunks and tails, kernels 1-16 wide
    (4, 1, 28, 28, 20, (5, 5), (0, 0)),
    (3, 1, 9, 11, 4, (3, 3), (1, 1)),
    (2, 2, 12, 20, 3, (2, 7), (1, 3)),
    (5, 4, 6, 9, 6, (1, 1), (0, 0)),
    (2, 1, 7, 40, 2, (4, 16), (2, 0)),
    (1, 3, 5, 5, 5, (5, 5), (2, 2)),
]


@pytest.mark.parametrize("n, c, h, w, o, kernel, pad", CONV_WEIGHT_GRAD_GEOMETRIES)
def test_conv_weight_grad_is_autograds(n, c, h, w, o, kernel, pad):
    """ops.conv_weight_grad against autograd on F.conv2d (float64), float32 within
    rounding, and the same bits at any thread count."""
    x = torch.randn(n, c, h, w, dtype=torch.float64)
    weight = torch.randn(o, c, *kernel, dtype=torch.float64, requires_grad=True)
    top = F.conv2d(x, weight, None, 1, pad)
    grad = torch.randn_like(top)
    expected, = torch.autograd.grad(top, weight, grad)
    torch.testing.assert_close(ops.conv_weight_grad(x, grad, kernel, pad), expected, rtol=1e-12, atol=1e-12)
    got = ops.conv_weight_grad(x.float(), grad.float(), kernel, pad)
    assert got.dtype == torch.float32 and got.shape == expected.shape
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        alone = ops.conv_weight_grad(x.float(), grad.float(), kernel, pad)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(alone, got)


def test_conv_weight_grad_errors():
    x, grad = torch.randn(2, 1, 8, 8), torch.randn(2, 3, 6, 6)
    with pytest.raises(RuntimeError, match=r"a \[3, 3\] kernel with pad \[1, 1\] on x \[2, 1, 8, 8\] gives grad "
                                           r"N x O x 8 x 8, got \[2, 3, 6, 6\]"):
        ops.conv_weight_grad(x, grad, 3, 1)
    with pytest.raises(RuntimeError, match="kernel sides must be 1 to 16 wide"):
        ops.conv_weight_grad(torch.randn(1, 1, 4, 40), torch.randn(1, 1, 4, 24), (1, 17))
    with pytest.raises(SSDHError, match="conv_weight_grad: grad must be torch.float32 on cpu like x, got torch.float64"):
        ops.conv_weight_grad(x, grad.double(), 3)
    with pytest.raises(SSDHError, match=r"expected N x C x H x W x and N x O x OH x OW grad, got \(8, 8\)"):
        ops.conv_weight_grad(x[0, 0], grad, 3)


@pytest.mark.parametrize("channels, kernel, stride, pad, dilation, bias",
                         [(1, (5, 5), (1, 1), (0, 0), (1, 1), True), (1, (3, 17), (1, 1), (1, 2), (1, 1), False),
                          (3, (11, 11), (4, 4), (0, 0), (1, 1), True),
                          (3, (7, 5), (2, 3), (3, 1), (1, 2), False), (2, (3, 3), (2, 2), (1, 1), (1, 1), True)])
@pytest.mark.parametrize("wanted", ["all", "weights", "input"])
def test_image_convolution_backward_is_torchs(monkeypatch, channels, kernel, stride, pad, dilation, bias, wanted):
    """The image layers' backward (GEMM + col2im; for one channel the direct weight
    gradient at stride 1 and kernels up to 16 wide, im2col + GEMM otherwise) in chunks
    of two samples against autograd on F.conv2d, float64."""
    monkeypatch.setattr(layers, "_COL_ELEMENTS", 2 * channels * kernel[0] * kernel[1] * 64)
    x = torch.randn(5, channels, 37, 41, dtype=torch.float64, requires_grad=wanted != "weights")
    w = torch.randn(6, channels, *kernel, dtype=torch.float64, requires_grad=wanted != "input")
    b = torch.randn(6, dtype=torch.float64, requires_grad=wanted != "input") if bias else None
    ours = layers._ImageConvolution.apply(x, w, b, stride, pad, dilation)
    theirs = F.conv2d(x, w, b, stride, pad, dilation)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    grad = torch.randn_like(ours)
    wrt = [t for t in (x, w, b) if t is not None and t.requires_grad]
    for a, e in zip(torch.autograd.grad(ours, wrt, grad), torch.autograd.grad(theirs, wrt, grad)):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10)


def test_convolution_layer_takes_the_image_backward_for_few_channels():
    net = CaffeNet("""
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 19 dim: 19 } } }
layer { name: "c1" type: "Convolution" bottom: "data" top: "c1"
  convolution_param { num_output: 5 kernel_size: 3 stride: 2 weight_filler { type: "gaussian" std: 1 } } }
layer { name: "c2" type: "Convolution" bottom: "c1" top: "c2"
  convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "gaussian" std: 1 } } }
""", "TRAIN")
    x = torch.randn(2, 3, 19, 19, requires_grad=True)
    out = net(data=x)
    assert type(out["c1"].grad_fn).__name__ == "_ImageConvolutionBackward"
    assert type(out["c2"].grad_fn).__name__ != "_ImageConvolutionBackward"  # 5 input channels
    with torch.no_grad():
        assert net(data=x)["c1"].grad_fn is None
