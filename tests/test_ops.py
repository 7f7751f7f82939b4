"""The native SSDH operators against the references of tests/reference.py,
gradcheck, opcheck, the bit layout, and the errors on bad input."""
import pytest
import torch

from ssdh_port import ops
from tests import reference

DTYPES = [torch.float32, torch.float64]
SIZES = [(n, k) for n in (1, 7, 256) for k in (1, 12, 48, 64, 65, 1024)]
UPSTREAM = 0.37  # a loss_weight-like upstream gradient, to check it is honoured


def _tol(dtype):
    return dict(rtol=1e-5, atol=1e-7) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-13)


def _activations(n, k, dtype, seed=0):
    g = torch.Generator().manual_seed(seed + 1000 * n + k)
    return torch.rand(n, k, generator=g, dtype=dtype)


def _value_and_grad(fn, *inputs):
    x = inputs[0].clone().requires_grad_(True)
    loss = fn(x, *inputs[1:])
    (grad,) = torch.autograd.grad(loss * UPSTREAM, x)
    return loss.detach(), grad


def _multilabel(n, m, seed=0):
    g = torch.Generator().manual_seed(seed + 7 * n + m)
    scores = torch.randn(n, m, generator=g, dtype=torch.float64) * 1.5 + 0.5
    labels = (torch.rand(n, m, generator=g) < 0.3).to(torch.float64)
    mask = (torch.rand(n, m, generator=g) < 0.7).to(torch.float64)
    return scores, labels, mask


# ---------------------------------------------------------------- reference


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("n,k", SIZES)
def test_forcing_binary_matches_reference(n, k, p, dtype):
    a = _activations(n, k, dtype)
    loss, grad = _value_and_grad(ops.forcing_binary_loss, a, p)
    ref_loss, ref_grad = reference.forcing_binary(a, p)
    assert loss.dtype == dtype and loss.shape == ()
    torch.testing.assert_close(loss.double(), ref_loss, **_tol(dtype))
    torch.testing.assert_close(grad.double(), UPSTREAM * ref_grad, **_tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("n,k", SIZES)
def test_fire_rate_matches_reference(n, k, p, dtype):
    a = _activations(n, k, dtype, seed=1)
    loss, grad = _value_and_grad(ops.fire_rate_loss, a, p)
    ref_loss, ref_grad = reference.fire_rate(a, p)
    torch.testing.assert_close(loss.double(), ref_loss, **_tol(dtype))
    torch.testing.assert_close(grad.double(), UPSTREAM * ref_grad, **_tol(dtype))


def _fused(x, p, weights=(0.7, -1.3)):
    """SSDH's beta * E2 + gamma * E3 through the fused op (two different weights)."""
    terms = ops.latent_losses(x, p)
    return weights[0] * terms[0] + weights[1] * terms[1]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("n,k", SIZES)
def test_fused_latent_losses_match_reference(n, k, p, dtype):
    a = _activations(n, k, dtype, seed=2)
    terms = ops.latent_losses(a, p)
    e2, g2 = reference.forcing_binary(a, p)
    e3, g3 = reference.fire_rate(a, p)
    assert terms.dtype == dtype and terms.shape == (2,)
    torch.testing.assert_close(terms.double(), torch.stack([e2, e3]), **_tol(dtype))
    loss, grad = _value_and_grad(_fused, a, p)
    torch.testing.assert_close(loss.double(), 0.7 * e2 - 1.3 * e3, **_tol(dtype))
    torch.testing.assert_close(grad.double(), UPSTREAM * (0.7 * g2 - 1.3 * g3), **_tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("n,m", SIZES)
@pytest.mark.parametrize("form", ["binary", "binary+mask", "signed"])
def test_max_margin_matches_reference(n, m, p, dtype, form):
    scores, labels, mask = _multilabel(n, m)
    scores = scores.to(dtype)
    if form == "binary":
        args, kwargs = (labels,), {}
        mask = torch.ones_like(mask)
    elif form == "binary+mask":
        args, kwargs = (labels,), {"mask": mask}
    else:
        args, kwargs = ((2 * labels - 1) * mask,), {"label_format": "signed"}
    positive = (labels == 1) & (mask == 1)
    negative = (labels == 0) & (mask == 1)

    def loss_fn(s, y):
        return ops.max_margin_loss(s, y, p, **kwargs)

    loss, grad = _value_and_grad(loss_fn, scores, *args)
    ref_loss, ref_grad = reference.max_margin(scores, positive, negative, p)
    torch.testing.assert_close(loss.double(), ref_loss, **_tol(dtype))
    torch.testing.assert_close(grad.double(), UPSTREAM * ref_grad, **_tol(dtype))


def test_max_margin_margins_are_exact():
    # A positive at exactly 1 and a negative at exactly 0 cost nothing.
    scores = torch.tensor([[1.0, 0.0, 0.99, 0.01]], dtype=torch.float64)
    labels = torch.tensor([[1.0, 0.0, 1.0, 0.0]], dtype=torch.float64)
    loss = ops.max_margin_loss(scores, labels, p=2)
    torch.testing.assert_close(loss, torch.tensor(0.5 * (0.01**2 + 0.01**2), dtype=torch.float64))


def test_dont_care_labels_give_no_loss_and_no_gradient():
    scores = torch.tensor([[-3.0, 5.0], [2.0, -1.0]], requires_grad=True)
    signed = torch.tensor([[0.0, 0.0], [1.0, -1.0]])
    loss = ops.max_margin_loss(scores, signed, p=2)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.count_nonzero(scores.grad) == 0
    # The same labels in 0/1 + mask form give the same result.
    scores2 = scores.detach().clone().requires_grad_(True)
    loss2 = ops.max_margin_loss(
        scores2, torch.tensor([[1.0, 0.0], [1.0, 0.0]]), mask=torch.tensor([[0, 0], [1, 1]])
    )
    assert loss2.item() == 0.0


def test_label_formats_agree():
    scores, labels, mask = _multilabel(9, 13)
    a = ops.max_margin_loss(scores, labels, mask=mask)
    b = ops.max_margin_loss(scores, (2 * labels - 1) * mask)  # auto: has -1 -> signed
    c = ops.max_margin_loss(scores, labels.bool(), mask=mask.bool())
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, c)


@pytest.mark.parametrize("p", [1, 2])
def test_non_contiguous_inputs(p):
    base = _activations(64, 96, torch.float64)
    a = base.t()[:, ::2]  # 96 x 32, neither contiguous nor dense
    assert not a.is_contiguous()
    for fn, ref in ((ops.forcing_binary_loss, reference.forcing_binary),
                    (ops.fire_rate_loss, reference.fire_rate)):
        loss, grad = _value_and_grad(fn, a, p)
        ref_loss, ref_grad = ref(a.contiguous(), p)
        torch.testing.assert_close(loss, ref_loss)
        torch.testing.assert_close(grad, UPSTREAM * ref_grad)
    scores, labels, mask = _multilabel(40, 30)
    s_nc, y_nc, m_nc = scores.t(), labels.t(), mask.t()
    torch.testing.assert_close(
        ops.max_margin_loss(s_nc, y_nc, p, mask=m_nc),
        ops.max_margin_loss(s_nc.contiguous(), y_nc.contiguous(), p, mask=m_nc.contiguous()),
    )


def test_modules_apply_loss_weight():
    a = _activations(8, 48, torch.float64).requires_grad_(True)
    beta, gamma = 0.25, 3.0
    total = ops.ForcingBinaryLoss(beta)(a) + ops.FireRateLoss(gamma)(a)
    expected = beta * ops.forcing_binary_loss(a) + gamma * ops.fire_rate_loss(a)
    torch.testing.assert_close(total, expected)
    total.backward()
    ref_grad = beta * reference.forcing_binary(a.detach(), 2)[1] + gamma * reference.fire_rate(
        a.detach(), 2
    )[1]
    torch.testing.assert_close(a.grad, ref_grad)
    scores, labels, mask = _multilabel(5, 6)
    module = ops.MaxMarginMultiLabelLoss(loss_weight=2.0, p=1)
    torch.testing.assert_close(
        module(scores, labels, mask), 2.0 * ops.max_margin_loss(scores, labels, 1, mask=mask)
    )
    assert "loss_weight=2.0" in repr(module)


def test_forcing_binary_value_is_the_caffe_log_sign():
    # The Caffe logs show "loss: forcing-binary = -0.12..." near saturation.
    a = torch.tensor([[0.0, 1.0, 0.01, 0.99]])
    loss = ops.forcing_binary_loss(a)
    assert loss.item() < 0
    assert abs(loss.item() - (-(0.25 * 2 + 0.49**2 * 2) / 8)) < 1e-7


# ---------------------------------------------------------------- gradcheck


@pytest.mark.parametrize("p", [1, 2])
def test_gradcheck(p):
    a = _activations(5, 9, torch.float64, seed=3).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: ops.forcing_binary_loss(x, p), (a,))
    assert torch.autograd.gradcheck(lambda x: ops.fire_rate_loss(x, p), (a,))
    assert torch.autograd.gradcheck(lambda x: ops.latent_losses(x, p), (a,))
    scores, labels, mask = _multilabel(6, 7, seed=3)
    scores.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda s: ops.max_margin_loss(s, labels, p, mask=mask), (scores,))
    signed = (2 * labels - 1) * mask
    assert torch.autograd.gradcheck(lambda s: ops.max_margin_loss(s, signed, p), (scores,))


# ---------------------------------------------------------------- opcheck


def _opcheck_samples():
    a = _activations(6, 10, torch.float64, seed=4).requires_grad_(True)
    scores, labels, mask = _multilabel(6, 10, seed=4)
    scores.requires_grad_(True)
    signed = (2 * labels - 1) * mask
    lrn_x = torch.randn(2, 7, 3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    fc_x, fc_w = torch.randn(5, 19), torch.randn(11, 19)
    return [
        (torch.ops.ssdh.forcing_binary_loss.default, (a, 2)),
        (torch.ops.ssdh.forcing_binary_loss.default, (a, 1)),
        (torch.ops.ssdh.fire_rate_loss.default, (a, 2)),
        (torch.ops.ssdh.fire_rate_loss.default, (a.float().detach().requires_grad_(True), 1)),
        (torch.ops.ssdh.latent_losses.default, (a, 2)),
        (torch.ops.ssdh.latent_losses.default, (a.float().detach().requires_grad_(True), 1)),
        (torch.ops.ssdh.max_margin_loss.default, (scores, labels, mask, 2, False)),
        (torch.ops.ssdh.max_margin_loss.default, (scores, signed, None, 1, True)),
        (torch.ops.ssdh.pack_bits.default, (a.detach(), 0.5)),
        (torch.ops.ssdh.unpack_bits.default, (ops.pack_bits(a.detach()), 10)),
        # LRN's autograd is a Python Function over the two ops (ops.lrn_across_channels).
        (torch.ops.ssdh.lrn_across_channels.default, (lrn_x, 5, 0.3, 0.75, 2.0)),
        (torch.ops.ssdh._lrn_across_channels_backward.default,
         (torch.randn_like(lrn_x), lrn_x, *torch.ops.ssdh.lrn_across_channels(lrn_x, 5, 0.3, 0.75, 2.0), 5, 0.3, 0.75)),
        # Forward-only kernels under a Python Function too (ops.linear_small_batch).
        (torch.ops.ssdh.linear_small_batch.default, (fc_x, fc_w)),
        (torch.ops.ssdh.linear_small_batch_input_grad.default, (torch.randn(5, 11), fc_w)),
        # and ops.max_pool2d_with_mask.
        (torch.ops.ssdh.max_pool2d_with_mask.default, (lrn_x, [2, 3], [1, 2], [1, 1], [4, 2])),
        (torch.ops.ssdh._max_pool2d_with_mask_backward.default,
         (torch.randn(2, 7, 4, 2, dtype=torch.float64),
          torch.ops.ssdh.max_pool2d_with_mask(lrn_x, [2, 3], [1, 2], [1, 1], [4, 2])[1], [3, 4])),
        # and ops.channel_scale.
        (torch.ops.ssdh.channel_scale.default, (lrn_x.view(2, 7, 12), lrn_x[0, :, 0, 0], lrn_x[1, :, 0, 0])),
        (torch.ops.ssdh.channel_scale.default, (fc_x.view(5, 19, 1), fc_w[0], None)),
        (torch.ops.ssdh._channel_scale_backward.default,
         (torch.randn(2, 7, 12, dtype=torch.float64), lrn_x.view(2, 7, 12), lrn_x[0, :, 0, 0])),
        # and ops.dropout.
        (torch.ops.ssdh.dropout.default, (lrn_x, 0.4, 12345)),
        (torch.ops.ssdh._dropout_backward.default, (lrn_x, torch.ops.ssdh.dropout(lrn_x, 0.4, 7)[1], 0.4)),
        # and ops.im2col / ops.col2im.
        (torch.ops.ssdh.im2col.default, (lrn_x, [2, 3], [1, 2], [1, 0], [1, 1])),
        (torch.ops.ssdh.col2im.default, (torch.randn(7 * 6, 2 * 4 * 1, dtype=torch.float64), [2, 7, 3, 4],
                                         [2, 3], [1, 2], [1, 0], [1, 1])),
        # and ops.conv_weight_grad.
        (torch.ops.ssdh.conv_weight_grad.default, (lrn_x, torch.randn(2, 3, 4, 2, dtype=torch.float64), [2, 3],
                                                   [1, 0])),
    ]


@pytest.mark.parametrize("index", range(len(_opcheck_samples())))
def test_opcheck(index):
    op, args = _opcheck_samples()[index]
    torch.library.opcheck(op, args)


# ---------------------------------------------------------------- bits


@pytest.mark.parametrize("k", [1, 7, 8, 12, 48, 64, 65, 1024])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_pack_bits_layout(k, dtype):
    a = _activations(33, k, torch.float32, seed=5).to(dtype)
    packed = ops.pack_bits(a)
    assert packed.dtype == torch.uint8 and packed.shape == (33, (k + 7) // 8)
    assert torch.equal(packed, reference.pack_bits(a.float()))
    assert torch.equal(ops.unpack_bits(packed, k), (a > 0.5).to(torch.uint8))


def test_pack_bits_threshold_equal_gives_zero_and_padding_is_zero():
    a = torch.tensor([[0.5, 0.50001, 0.49999, 1.0, 0.0, 0.5, 0.7, 0.2, 0.9, 0.5]])
    packed = ops.pack_bits(a)
    # bits: 0 1 0 1 0 0 1 0 | 1 0 -> byte0 = 0b01001010, byte1 = 0b00000001
    assert packed.tolist() == [[0b01001010, 0b00000001]]
    assert ops.pack_bits(a, threshold=0.0).tolist() == [[0b11101111, 0b00000011]]


def test_pack_bits_bool_and_uint8_codes():
    bits = torch.randint(0, 2, (20, 70), dtype=torch.uint8)
    assert torch.equal(ops.pack_bits(bits), reference.pack_bits(bits.float()))
    assert torch.equal(ops.pack_bits(bits.bool()), ops.pack_bits(bits))
    # Little-endian words: 8 bytes read as uint64 hold bits 0..63 in order.
    word = ops.pack_bits(bits[:, :64]).view(torch.int64)[:, 0]
    expected = sum(bits[:, j].to(torch.int64) << j for j in range(64))
    assert torch.equal(word, expected)


# ---------------------------------------------------------------- bad input


BAD_INPUTS = [
    (lambda: ops.forcing_binary_loss(torch.rand(2, 3, 4)), ValueError, "a must be a 2-D"),
    (lambda: ops.forcing_binary_loss(torch.rand(5)), ValueError, "a must be a 2-D"),
    (lambda: ops.fire_rate_loss(torch.ones(2, 3, dtype=torch.int64)), TypeError, "floating-point"),
    (lambda: ops.fire_rate_loss(torch.rand(0, 48)), ValueError, "must not be empty"),
    (lambda: ops.forcing_binary_loss(torch.rand(2, 3), p=3), ValueError, "p must be 1 or 2"),
    (lambda: ops.fire_rate_loss(torch.rand(2, 3), p=0), ValueError, "p must be 1 or 2"),
    (lambda: ops.latent_losses(torch.rand(2, 3), p=3), ValueError, "latent_losses: p must be 1 or 2"),
    (lambda: ops.latent_losses(torch.rand(2, 3, 1)), ValueError, "latent_losses: a must be a 2-D"),
    (lambda: ops.forcing_binary_loss([[0.1]]), TypeError, "must be a torch.Tensor"),
    (lambda: ops.max_margin_loss(torch.rand(4, 5), torch.ones(4, 6)), ValueError,
     r"labels must have the shape of scores \(4, 5\)"),
    (lambda: ops.max_margin_loss(torch.rand(4, 5), torch.ones(4, 5), mask=torch.ones(5, 4)),
     ValueError, "mask must have the shape"),
    (lambda: ops.max_margin_loss(torch.ones(4, 5, dtype=torch.int32), torch.ones(4, 5)),
     TypeError, "scores must be a floating-point"),
    (lambda: ops.max_margin_loss(torch.rand(2, 2), torch.tensor([[1.0, 2.0], [0.0, 1.0]])),
     RuntimeError, r"label \[0, 1\] = 2 is outside the convention"),
    (lambda: ops.max_margin_loss(torch.rand(2, 2), torch.tensor([[1.0, -1.0], [0.0, 0.5]])),
     RuntimeError, r"label \[1, 1\] = 0.5 is outside the convention: signed labels"),
    (lambda: ops.max_margin_loss(torch.rand(2, 2), torch.tensor([[1.0, -1.0], [0.0, 1.0]]),
                                 label_format="binary"),
     RuntimeError, r"label \[0, 1\] = -1 is outside the convention: labels must be 0 or 1"),
    (lambda: ops.max_margin_loss(torch.rand(2, 2), torch.ones(2, 2), mask=torch.full((2, 2), 2.0)),
     RuntimeError, "with mask 2"),
    (lambda: ops.max_margin_loss(torch.rand(2, 2), torch.ones(2, 2), mask=torch.ones(2, 2),
                                 label_format="signed"), ValueError, "a mask goes with 0/1"),
    (lambda: ops.max_margin_loss(torch.rand(2, 2), torch.ones(2, 2), label_format="pm1"),
     ValueError, "label_format must be one of"),
    (lambda: ops.max_margin_loss(torch.rand(2, 2), torch.ones(2, 2, device="meta")),
     ValueError, "labels is on meta but scores is on cpu"),
    (lambda: ops.pack_bits(torch.rand(3)), ValueError, "a must be a 2-D"),
    (lambda: ops.unpack_bits(torch.zeros(3, 2, dtype=torch.uint8), 17), ValueError,
     r"does not fit codes of 2 bytes"),
    (lambda: ops.unpack_bits(torch.zeros(3, 2), 16), TypeError, "packed must be uint8"),
    (lambda: ops.ForcingBinaryLoss(p=4), ValueError, "p must be 1 or 2"),
]


@pytest.mark.parametrize("index", range(len(BAD_INPUTS)))
def test_bad_input_is_a_clear_error(index):
    call, error, message = BAD_INPUTS[index]
    with pytest.raises(error, match=message):
        call()


def test_native_kernels_check_too():
    # Direct torch.ops calls bypass the Python checks; the kernels still refuse.
    with pytest.raises(RuntimeError, match="p must be 1 or 2"):
        torch.ops.ssdh.forcing_binary_loss(torch.rand(2, 2), 5)
    with pytest.raises(RuntimeError, match="must be a 2-D N x K tensor"):
        torch.ops.ssdh.fire_rate_loss(torch.rand(2, 2, 2), 2)
    a = torch.rand(3, 4)
    _, row_mean = torch.ops.ssdh.latent_losses(a, 2)
    with pytest.raises(RuntimeError, match="grad must hold 2 value"):
        torch.ops.ssdh._latent_losses_backward(torch.ones(()), a, row_mean, 2)
    with pytest.raises(RuntimeError, match="one mean per row of a"):
        torch.ops.ssdh._latent_losses_backward(torch.ones(2), a, row_mean[:2], 2)
    with pytest.raises(RuntimeError, match="labels must have the dtype of scores"):
        torch.ops.ssdh.max_margin_loss(torch.rand(2, 2), torch.ones(2, 2, dtype=torch.float64),
                                       None, 2, False)


def test_stale_build_is_reported(tmp_path, monkeypatch):
    from ssdh_port import _native

    (tmp_path / "changed.cpp").write_text("// not what was built\n")
    monkeypatch.setattr(_native, "_CSRC_DIR", str(tmp_path))
    with pytest.raises(ImportError, match="stale.*make build"):
        _native._check_fresh()


# ---------------------------------------------------------------- CUDA


cuda = pytest.mark.cuda


@cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("n,k", SIZES)
def test_cuda_matches_cpu(n, k, p, dtype):
    a = _activations(n, k, dtype, seed=6)
    scores, labels, mask = _multilabel(n, k, seed=6)
    scores = scores.to(dtype)
    tol = dict(rtol=1e-4, atol=1e-6) if dtype == torch.float32 else _tol(dtype)
    cases = [
        (ops.forcing_binary_loss, (a, p), {}),
        (ops.fire_rate_loss, (a, p), {}),
        (_fused, (a, p), {}),
        (ops.max_margin_loss, (scores, labels, p), {"mask": mask}),
        (ops.max_margin_loss, (scores, (2 * labels - 1) * mask, p), {}),
    ]
    for fn, args, kwargs in cases:
        cpu_loss, cpu_grad = _value_and_grad(lambda x, *r: fn(x, *r, **kwargs), *args)
        dev_args = [t.cuda() if isinstance(t, torch.Tensor) else t for t in args]
        dev_kwargs = {key: v.cuda() for key, v in kwargs.items()}
        dev_loss, dev_grad = _value_and_grad(lambda x, *r: fn(x, *r, **dev_kwargs), *dev_args)
        torch.testing.assert_close(dev_loss.cpu(), cpu_loss, **tol)
        torch.testing.assert_close(dev_grad.cpu(), cpu_grad, **tol)
    packed = ops.pack_bits(a.cuda())
    assert torch.equal(packed.cpu(), ops.pack_bits(a))
    assert torch.equal(ops.unpack_bits(packed, k).cpu(), ops.unpack_bits(ops.pack_bits(a), k))


@cuda
def test_cuda_bad_labels_give_nan_and_device_mix_is_refused():
    scores = torch.rand(2, 2, device="cuda")
    assert torch.isnan(ops.max_margin_loss(scores, torch.tensor([[1.0, 2.0], [0, 1]], device="cuda")))
    with pytest.raises(ValueError, match="labels is on cpu but scores is on cuda"):
        ops.max_margin_loss(scores, torch.ones(2, 2))


@cuda
def test_cuda_opcheck():
    for op, args in _opcheck_samples():
        if not torch._C._dispatch_has_kernel_for_dispatch_key(op.name(), "CUDA"):
            continue  # a CPU-only op (the Caffe layers' kernels)
        cuda_args = tuple(
            t.detach().cuda().requires_grad_(t.requires_grad) if isinstance(t, torch.Tensor) else t
            for t in args
        )
        torch.library.opcheck(op, cuda_args)
