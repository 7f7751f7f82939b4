"""Python entry points of the native SSDH operators (torch.ops.ssdh.*).

Losses (docs/SPEC.md section 1; a is the N x K output of the latent sigmoid):

* ``forcing_binary_loss(a, p)`` -- E2 exactly as the original ``K1_EuclideanLoss``
  reports it: ``-(1 / (2*N*K)) * sum (a - 0.5)^2`` for p = 2 and
  ``-(1 / (N*K)) * sum |a - 0.5|`` for p = 1. The value is *negative*: minimising it
  drives activations away from 0.5. The paper's objective ``alpha*E1 - beta*E2 +
  gamma*E3`` (E2 there being the positive distance) is therefore, in this library
  as in the Caffe logs, ``alpha*E1 + beta*forcing_binary_loss + gamma*fire_rate_loss``;
  the module wrappers below carry the weights as ``loss_weight``.
* ``fire_rate_loss(a, p)`` -- E3 (``K2_EuclideanLoss`` after the 1 x K average
  pooling): with m_n the mean of row n, ``(1 / (2*N)) * sum (m_n - 0.5)^2`` (p = 2)
  or ``(1 / N) * sum |m_n - 0.5|`` (p = 1).
* ``latent_losses(a, p)`` -- E2 and E3 fused, as a 2-element tensor: one pass over a
  forward, one kernel backward (the values of the two ops above, summed in another
  order). ``beta * t[0] + gamma * t[1]`` is SSDH's latent-layer objective.
* ``max_margin_loss(scores, labels, p, mask)`` -- multi-label max-margin loss on raw
  scores, ``0.5 * |y - s|^p`` outside the margins (positives want s >= 1, negatives
  s <= 0), summed over labels and averaged over the N samples.

Label forms of the max-margin loss:

* ``label_format="binary"``: labels are 1 (positive) / 0 (negative); an optional
  ``mask`` of the same shape holds 1 where the label counts and 0 for don't care.
* ``label_format="signed"``: the Caffe multi-label convention of the authors' fork,
  +1 positive, -1 negative, 0 don't care (no mask).
* ``label_format="auto"`` (default): "binary" if a mask is given or no label is
  negative, else "signed". A signed label tensor with no -1 in it is ambiguous (0
  would read as negative): name the format explicitly in that case.

Codes: ``pack_bits(a, threshold)`` packs the N x K bits ``a > threshold`` (a value
equal to the threshold gives 0) into an N x ceil(K/8) uint8 tensor. Bit k of a code
is bit ``k % 8`` (least significant first) of byte ``k // 8``; the unused high bits of
the last byte are 0. This is the layout of numpy's ``packbits(bitorder="little")``
and of faiss binary vectors, and on a little-endian machine 8 consecutive bytes read
as one uint64 hold bits 0..63 in order. ``unpack_bits(packed, k)`` inverts it.

Layers: ``lrn_across_channels(x, size, alpha, beta, k)`` -- Caffe's LRN across channels
on an N x C x H x W tensor (float32 / float64, CPU), with Caffe's own backward
(differentiable once). ``linear_small_batch(x, weight)`` -- x . weight^T for a few
rows x (M x K) against a large weight (N x K), float32 on the CPU, reading the weight
once per pass (differentiable once; ``linear_small_batch_input_grad(grad, weight)`` is
its input gradient, grad . weight). Caffe's InnerProduct uses them at small batch.
``max_pool2d_with_mask(x, kernel, stride, pad, out_size)`` -- Caffe's MAX pooling of an
N x C x H x W tensor (float32 / float64, CPU): windows clipped to the map, the first
maximum in row-major order (strict >; NaN never wins), and the mask of its flat
indices h * W + w (int32, -1 where no value beat the lowest float); differentiable
once, with Caffe's backward (each top gradient added at its mask index).
``channel_scale(x, scale, bias=None)`` -- Caffe's Scale layer (with its bias) on x
viewed as outer x C x inner: ``x * scale[c] (+ bias[c])``, float32 / float64 on the CPU,
the backward's three gradients in one pass over the top gradient and x.
``dropout(x, ratio)`` -- Caffe's Dropout in training (``x * mask / (1 - ratio)``),
float32 / float64 on the CPU, the mask drawn by a counter-based generator seeded from
torch's (one uint8 per element, the same at any thread count); returns (top, mask).
``im2col(x, kernel, stride, pad, dilation)`` / ``col2im(col, shape, ...)`` -- Caffe's
im2col_cpu and col2im_cpu for a whole N x C x H x W batch, the samples side by side in
the columns ((C * kh * kw) x (N * OH * OW)); each is the other's gradient.
``conv_weight_grad(x, grad, kernel, pad)`` -- the weight gradient of a stride-1
convolution computed directly, without the im2col matrix (the one-channel image layers).
"""
import torch
from torch import Tensor, nn

from ssdh_port import _native  # noqa: F401  (registers torch.ops.ssdh)
from ssdh_port.errors import SSDHError

__all__ = [
    "forcing_binary_loss",
    "fire_rate_loss",
    "latent_losses",
    "max_margin_loss",
    "pack_bits",
    "unpack_bits",
    "hamming_topk",
    "hamming_radius",
    "hamming_distance",
    "hamming_set_distance",
    "hamming_rank_stats",
    "lrn_across_channels",
    "linear_small_batch",
    "linear_small_batch_input_grad",
    "max_pool2d_with_mask",
    "channel_scale",
    "dropout",
    "im2col",
    "col2im",
    "conv_weight_grad",
    "ForcingBinaryLoss",
    "FireRateLoss",
    "MaxMarginMultiLabelLoss",
]

_LABEL_FORMATS = ("auto", "binary", "signed")


def _check_p(p, op):
    if p not in (1, 2) or isinstance(p, bool):
        raise SSDHError(f"{op}: p must be 1 or 2, got {p!r}")


def _check_tensor(t, op, name):
    if not isinstance(t, Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")


def _check_batch(t, op, name, floating=True):
    """t must be a non-empty 2-D N x K tensor (floating-point unless told)."""
    _check_tensor(t, op, name)
    if t.dim() != 2:
        raise SSDHError(
            f"{op}: {name} must be a 2-D N x K tensor, got {t.dim()}-D with shape "
            f"{tuple(t.shape)}"
        )
    if floating and not t.is_floating_point():
        raise TypeError(f"{op}: {name} must be a floating-point tensor, got {t.dtype}")
    if t.shape[0] == 0 or t.shape[1] == 0:
        raise SSDHError(f"{op}: {name} must not be empty, got shape {tuple(t.shape)}")


def _check_companion(t, ref, op, name, ref_name):
    """t must match ref's shape and device (its dtype is converted, not checked)."""
    _check_tensor(t, op, name)
    if t.shape != ref.shape:
        raise SSDHError(
            f"{op}: {name} must have the shape of {ref_name} {tuple(ref.shape)}, got "
            f"{tuple(t.shape)}"
        )
    if t.device != ref.device:
        raise SSDHError(
            f"{op}: {name} is on {t.device} but {ref_name} is on {ref.device}; "
            "put both on the same device"
        )


def forcing_binary_loss(a: Tensor, p: int = 2) -> Tensor:
    """E2, the forcing-binary loss (negative, as the original reports it)."""
    _check_p(p, "forcing_binary_loss")
    _check_batch(a, "forcing_binary_loss", "a")
    return torch.ops.ssdh.forcing_binary_loss(a, p)


def fire_rate_loss(a: Tensor, p: int = 2) -> Tensor:
    """E3, the 50%-fire-rate loss on the per-sample mean over the K units."""
    _check_p(p, "fire_rate_loss")
    _check_batch(a, "fire_rate_loss", "a")
    return torch.ops.ssdh.fire_rate_loss(a, p)[0]


def latent_losses(a: Tensor, p: int = 2) -> Tensor:
    """E2 and E3 in one fused op: a 2-element tensor (forcing_binary_loss(a, p),
    fire_rate_loss(a, p)), differentiable in both."""
    _check_p(p, "latent_losses")
    _check_batch(a, "latent_losses", "a")
    return torch.ops.ssdh.latent_losses(a, p)[0]


def _resolve_label_format(labels, mask, label_format):
    if label_format not in _LABEL_FORMATS:
        raise SSDHError(
            f"max_margin_loss: label_format must be one of {_LABEL_FORMATS}, got "
            f"{label_format!r}"
        )
    if label_format == "signed" and mask is not None:
        raise SSDHError(
            "max_margin_loss: a mask goes with 0/1 labels; signed (+1/-1/0) labels "
            "mark don't care with 0"
        )
    if label_format != "auto":
        return label_format
    if mask is not None or labels.dtype == torch.bool:
        return "binary"
    return "signed" if bool((labels < 0).any()) else "binary"


def max_margin_loss(
    scores: Tensor,
    labels: Tensor,
    p: int = 2,
    mask: Tensor | None = None,
    label_format: str = "auto",
) -> Tensor:
    """Multi-label max-margin loss with don't-care labels (see the module doc)."""
    op = "max_margin_loss"
    _check_p(p, op)
    _check_batch(scores, op, "scores")
    _check_companion(labels, scores, op, "labels", "scores")
    if mask is not None:
        _check_companion(mask, scores, op, "mask", "scores")
        mask = mask.to(scores.dtype)
    signed = _resolve_label_format(labels, mask, label_format) == "signed"
    return torch.ops.ssdh.max_margin_loss(scores, labels.to(scores.dtype), mask, p, signed)


def pack_bits(a: Tensor, threshold: float = 0.5) -> Tensor:
    """N x K values -> N x ceil(K/8) uint8 codes of ``a > threshold``."""
    _check_batch(a, "pack_bits", "a", floating=False)
    if a.is_complex():
        raise TypeError(f"pack_bits: a must be real, got {a.dtype}")
    return torch.ops.ssdh.pack_bits(a, float(threshold))


def unpack_bits(packed: Tensor, k: int) -> Tensor:
    """N x ceil(k/8) uint8 codes -> N x k uint8 tensor of 0/1 bits."""
    _check_tensor(packed, "unpack_bits", "packed")
    if packed.dtype != torch.uint8:
        raise TypeError(f"unpack_bits: packed must be uint8, got {packed.dtype}")
    if packed.dim() != 2:
        raise SSDHError(
            f"unpack_bits: packed must be a 2-D N x B tensor, got shape {tuple(packed.shape)}"
        )
    if not isinstance(k, int) or k < 1 or (k + 7) // 8 != packed.shape[1]:
        raise SSDHError(
            f"unpack_bits: k = {k!r} does not fit codes of {packed.shape[1]} bytes "
            f"(k must satisfy ceil(k / 8) == {packed.shape[1]})"
        )
    return torch.ops.ssdh.unpack_bits(packed, k)


class _WeightedLoss(nn.Module):
    """A loss term with Caffe's loss_weight (its contribution to the objective)."""

    def __init__(self, loss_weight: float = 1.0, p: int = 2):
        super().__init__()
        _check_p(p, type(self).__name__)
        self.loss_weight = float(loss_weight)
        self.p = p

    def extra_repr(self):
        return f"loss_weight={self.loss_weight}, p={self.p}"


class ForcingBinaryLoss(_WeightedLoss):
    """loss_weight * E2 (the original layer K1_EuclideanLoss; its value is <= 0)."""

    def forward(self, a: Tensor) -> Tensor:
        return self.loss_weight * forcing_binary_loss(a, self.p)


class FireRateLoss(_WeightedLoss):
    """loss_weight * E3 (the original layer K2_EuclideanLoss on the row means)."""

    def forward(self, a: Tensor) -> Tensor:
        return self.loss_weight * fire_rate_loss(a, self.p)


class MaxMarginMultiLabelLoss(_WeightedLoss):
    """loss_weight * the multi-label max-margin loss (E1 for multi-label data)."""

    def __init__(self, loss_weight: float = 1.0, p: int = 2, label_format: str = "auto"):
        super().__init__(loss_weight, p)
        if label_format not in _LABEL_FORMATS:
            raise SSDHError(
                f"MaxMarginMultiLabelLoss: label_format must be one of {_LABEL_FORMATS}, "
                f"got {label_format!r}"
            )
        self.label_format = label_format

    def forward(self, scores: Tensor, labels: Tensor, mask: Tensor | None = None) -> Tensor:
        return self.loss_weight * max_margin_loss(
            scores, labels, self.p, mask=mask, label_format=self.label_format
        )


# Shapes for tracing (torch.compile, export, opcheck's fake-tensor checks).
@torch.library.register_fake("ssdh::forcing_binary_loss")
def _(a, p):
    return a.new_empty(())


@torch.library.register_fake("ssdh::_forcing_binary_loss_backward")
def _(grad, a, p):
    return torch.empty_like(a, memory_format=torch.contiguous_format)


@torch.library.register_fake("ssdh::fire_rate_loss")
def _(a, p):
    return a.new_empty(()), a.new_empty((a.shape[0],))


@torch.library.register_fake("ssdh::_fire_rate_loss_backward")
def _(grad, row_mean, k, p):
    return row_mean.new_empty((row_mean.shape[0], k))


@torch.library.register_fake("ssdh::latent_losses")
def _(a, p):
    return a.new_empty((2,)), a.new_empty((a.shape[0],))


@torch.library.register_fake("ssdh::_latent_losses_backward")
def _(grad, a, row_mean, p):
    return torch.empty_like(a, memory_format=torch.contiguous_format)


@torch.library.register_fake("ssdh::max_margin_loss")
def _(scores, labels, mask, p, signed_labels):
    return scores.new_empty(())


@torch.library.register_fake("ssdh::_max_margin_loss_backward")
def _(grad, scores, labels, mask, p, signed_labels):
    return torch.empty_like(scores, memory_format=torch.contiguous_format)


@torch.library.register_fake("ssdh::pack_bits")
def _(a, threshold):
    return a.new_empty((a.shape[0], (a.shape[1] + 7) // 8), dtype=torch.uint8)


@torch.library.register_fake("ssdh::unpack_bits")
def _(packed, k):
    return packed.new_empty((packed.shape[0], k))


# ---------------------------------------------------------------- Hamming search


def _check_codes(queries, database, op):
    for name, t in (("queries", queries), ("database", database)):
        _check_tensor(t, op, name)
        if t.dtype != torch.uint8 or t.dim() != 2:
            raise TypeError(
                f"{op}: {name} must be 2-D uint8 packed codes (ssdh_port.ops.pack_bits), got "
                f"{t.dtype} with shape {tuple(t.shape)}")
    if queries.shape[1] != database.shape[1]:
        raise SSDHError(
            f"{op}: queries have {queries.shape[1]} bytes per code, the database {database.shape[1]}")
    if queries.device != database.device:
        raise SSDHError(f"{op}: queries are on {queries.device}, the database on {database.device}")


def hamming_topk(queries: Tensor, database: Tensor, k: int):
    """Exact k nearest database codes of each query by Hamming distance.

    queries Q x B and database N x B are packed codes (pack_bits layout). Returns
    (distances int32 Q x k, indices int64 Q x k), sorted by distance with ties in
    database order (the original evaluation's stable sort)."""
    _check_codes(queries, database, "hamming_topk")
    if not isinstance(k, int) or not 1 <= k <= database.shape[0]:
        raise SSDHError(
            f"hamming_topk: k must be an int between 1 and the database size {database.shape[0]}, "
            f"got {k!r}")
    return torch.ops.ssdh.hamming_topk(queries, database, k)


def hamming_radius(queries: Tensor, database: Tensor, radius: int):
    """All database codes within Hamming distance radius of each query.

    Returns (lims int64 Q+1, distances int32 M, indices int64 M): query q's
    results are [lims[q], lims[q+1]), sorted by distance, ties in database order
    (faiss's range-search layout)."""
    _check_codes(queries, database, "hamming_radius")
    if not isinstance(radius, int) or radius < 0:
        raise SSDHError(f"hamming_radius: radius must be an int >= 0, got {radius!r}")
    return torch.ops.ssdh.hamming_radius(queries, database, radius)


def hamming_distance(queries: Tensor, database: Tensor) -> Tensor:
    """All Q x N Hamming distances (int32) between packed codes."""
    _check_codes(queries, database, "hamming_distance")
    return torch.ops.ssdh.hamming_distance(queries, database)


def hamming_set_distance(queries: Tensor, database: Tensor, segments: Tensor) -> Tensor:
    """Spatial search's set distance (Razavian et al., SSDH TPAMI section 4.11) on packed
    codes: database rows grouped by image, image i owning rows [segments[i],
    segments[i + 1]); returns, per image, the sum over the query rows of the
    minimum Hamming distance to the image's rows (int64; divide by the number of
    query rows for the mean)."""
    _check_codes(queries, database, "hamming_set_distance")
    return torch.ops.ssdh.hamming_set_distance(queries, database, segments)


@torch.library.register_fake("ssdh::hamming_set_distance")
def _(queries, database, segments):
    return queries.new_empty((segments.shape[0] - 1,), dtype=torch.int64)


@torch.library.register_fake("ssdh::hamming_topk")
def _(queries, database, k):
    return (queries.new_empty((queries.shape[0], k), dtype=torch.int32),
            queries.new_empty((queries.shape[0], k), dtype=torch.int64))


@torch.library.register_fake("ssdh::hamming_radius")
def _(queries, database, radius):
    total = torch.library.get_ctx().new_dynamic_size()
    return (queries.new_empty((queries.shape[0] + 1,), dtype=torch.int64),
            queries.new_empty((total,), dtype=torch.int32),
            queries.new_empty((total,), dtype=torch.int64))


@torch.library.register_fake("ssdh::hamming_distance")
def _(queries, database):
    return queries.new_empty((queries.shape[0], database.shape[0]), dtype=torch.int32)


def hamming_rank_stats(queries: Tensor, database: Tensor, query_labels: Tensor,
                       database_labels: Tensor, k: int, exact: bool):
    """Retrieval statistics of the Hamming ranking (CPU or CUDA), ties in
    database order, without sorting: the counting passes of docs/DESIGN.md.

    Relevance comes from label words, int64 rows of equal width W (Q x W and
    N x W): with exact=True an item is relevant when its words equal the
    query's (class ids: W = 1), otherwise when some word shares a bit (multi-hot
    labels packed 64 per word). ssdh_port.hashing.metrics.label_words builds them.
    Returns (ap float64 Q: AP@k as precision.m defines it, hits_at_rank int64 k:
    cumulative hits at ranks 1..k summed over the queries, hist_all int64
    Q x (bits+1): codes per distance, hist_relevant int64 Q x (bits+1): relevant
    codes per distance)."""
    _check_codes(queries, database, "hamming_rank_stats")
    if not isinstance(k, int) or not 1 <= k <= database.shape[0]:
        raise SSDHError(
            f"hamming_rank_stats: k must be an int between 1 and the database size "
            f"{database.shape[0]}, got {k!r}")
    for name, words, rows in (("query_labels", query_labels, queries.shape[0]),
                              ("database_labels", database_labels, database.shape[0])):
        if words.dtype != torch.int64 or words.dim() != 2 or words.shape[0] != rows:
            raise SSDHError(
                f"hamming_rank_stats: {name} must be int64 label words with {rows} rows "
                f"(Q x W / N x W), got {words.dtype} {tuple(words.shape)}")
        if words.device != queries.device:
            raise SSDHError(f"hamming_rank_stats: the codes are on {queries.device}, {name} on "
                             f"{words.device}")
    return torch.ops.ssdh.hamming_rank_stats(queries, database, query_labels, database_labels,
                                             k, bool(exact))


@torch.library.register_fake("ssdh::hamming_rank_stats")
def _(queries, database, query_labels, database_labels, k, exact):
    buckets = 8 * queries.shape[1] + 1
    return (queries.new_empty((queries.shape[0],), dtype=torch.float64),
            queries.new_empty((k,), dtype=torch.int64),
            queries.new_empty((queries.shape[0], buckets), dtype=torch.int64),
            queries.new_empty((queries.shape[0], buckets), dtype=torch.int64))


# ---------------------------------------------------------------- layers


class _NativeLRN(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, size, alpha, beta, k):
        top, scale = torch.ops.ssdh.lrn_across_channels(x, size, alpha, beta, k)
        ctx.save_for_backward(x, top, scale)
        ctx.constants = size, alpha, beta
        return top

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, top, scale = ctx.saved_tensors
        size, alpha, beta = ctx.constants
        return torch.ops.ssdh._lrn_across_channels_backward(grad, x, top, scale, size, alpha, beta), \
            None, None, None, None


def lrn_across_channels(x: Tensor, size: int, alpha: float, beta: float, k: float) -> Tensor:
    """Caffe's cross-channel LRN (LRNLayer, ACROSS_CHANNELS): top = x * (k + alpha /
    size * sum of x^2 over the size channels centred on each)^-beta, and Caffe's
    backward; N x C x H x W float32 / float64 on the CPU."""
    if x.dim() != 4 or x.dtype not in (torch.float32, torch.float64) or x.device.type != "cpu":
        raise SSDHError(f"lrn_across_channels: expected an N x C x H x W float32 / float64 CPU tensor, got "
                        f"{x.dtype} {tuple(x.shape)} on {x.device}")
    if size < 1 or size % 2 == 0:
        raise SSDHError(f"lrn_across_channels: size must be odd and positive, got {size}")
    return _NativeLRN.apply(x, int(size), float(alpha), float(beta), float(k))


@torch.library.register_fake("ssdh::lrn_across_channels")
def _(x, size, alpha, beta, k):
    return torch.empty_like(x, memory_format=torch.contiguous_format), \
        torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.register_fake("ssdh::_lrn_across_channels_backward")
def _(grad, x, top, scale, size, alpha, beta):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


class _LinearSmallBatch(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight):
        ctx.save_for_backward(x, weight)
        return torch.ops.ssdh.linear_small_batch(x, weight)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad_x = torch.ops.ssdh.linear_small_batch_input_grad(grad, weight) if ctx.needs_input_grad[0] else None
        grad_weight = grad.t().mm(x) if ctx.needs_input_grad[1] else None
        return grad_x, grad_weight


def _check_linear(a, weight, columns, op, name):
    for label, t in ((name, a), ("weight", weight)):
        if t.dim() != 2 or t.dtype != torch.float32 or t.device.type != "cpu":
            raise SSDHError(f"{op}: expected a 2-D float32 CPU {label}, got {t.dtype} {tuple(t.shape)} on {t.device}")
    if a.shape[1] != columns:
        raise SSDHError(f"{op}: {name} has {a.shape[1]} columns, the weight takes {columns}")


def linear_small_batch(x: Tensor, weight: Tensor) -> Tensor:
    """x . weight^T (M x N) for x M x K and weight N x K, float32 on the CPU: every
    weight value is read once and used for all M rows (meant for M of up to a few
    dozen: fully connected layers at small batch). Differentiable once."""
    _check_linear(x, weight, weight.shape[1] if weight.dim() == 2 else -1, "linear_small_batch", "x")
    return _LinearSmallBatch.apply(x, weight)


def linear_small_batch_input_grad(grad: Tensor, weight: Tensor) -> Tensor:
    """grad . weight (M x K) for grad M x N and weight N x K, float32 on the CPU: the
    input gradient of linear_small_batch, reading the weight once."""
    _check_linear(grad, weight, weight.shape[0] if weight.dim() == 2 else -1, "linear_small_batch_input_grad",
                  "grad")
    return torch.ops.ssdh.linear_small_batch_input_grad(grad, weight)


@torch.library.register_fake("ssdh::linear_small_batch")
def _(x, weight):
    return x.new_empty((x.shape[0], weight.shape[0]))


@torch.library.register_fake("ssdh::linear_small_batch_input_grad")
def _(grad, weight):
    return grad.new_empty((grad.shape[0], weight.shape[1]))


def _geometry(op, **pairs):
    out = []
    for name, value in pairs.items():
        pair = (value, value) if isinstance(value, int) else tuple(value)
        if len(pair) != 2 or not all(isinstance(v, int) for v in pair):
            raise SSDHError(f"{op}: {name} takes an int or two (height, width), got {value!r}")
        out.append(pair)
    return out


class _WithMask(torch.autograd.Function):
    """An op giving (top, mask) whose backward needs only the mask and constants:
    backward_op(grad, mask, *constants); the mask takes no gradient."""

    @staticmethod
    def forward(ctx, op, backward_op, constants, x, *args):
        top, mask = op(x, *args)
        ctx.save_for_backward(mask)
        ctx.backward_op, ctx.constants, ctx.n_args = backward_op, constants, len(args)
        ctx.mark_non_differentiable(mask)
        return top, mask

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad, _mask_grad):
        (mask,) = ctx.saved_tensors
        return (None, None, None, ctx.backward_op(grad, mask, *ctx.constants)) + (None,) * ctx.n_args


def max_pool2d_with_mask(x: Tensor, kernel, stride, pad, out_size) -> tuple[Tensor, Tensor]:
    """Caffe's MAX pooling (PoolingLayer) of an N x C x H x W float32 / float64 CPU
    tensor: output (ph, pw) is the maximum over rows [ph * stride - pad, + kernel) and
    the columns alike, clipped to the map; out_size (OH, OW) is given by the caller
    (Caffe's rounding). Returns (top, mask):
    mask holds the flat index h * W + w of each maximum (int32; the first in row-major
    order on ties; -1 where nothing beat the lowest float -- a window of NaN or one
    past the map's end -- and top is then that value).
    The backward adds each top gradient at its mask index (Caffe's), once
    differentiable."""
    if x.dim() != 4 or x.dtype not in (torch.float32, torch.float64) or x.device.type != "cpu":
        raise SSDHError(f"max_pool2d_with_mask: expected an N x C x H x W float32 / float64 CPU tensor, got "
                        f"{x.dtype} {tuple(x.shape)} on {x.device}")
    sizes = _geometry("max_pool2d_with_mask", kernel=kernel, stride=stride, pad=pad, out_size=out_size)
    return _WithMask.apply(torch.ops.ssdh.max_pool2d_with_mask, torch.ops.ssdh._max_pool2d_with_mask_backward,
                           ((x.shape[2], x.shape[3]),), x, *sizes)


@torch.library.register_fake("ssdh::max_pool2d_with_mask")
def _(x, kernel, stride, pad, out_size):
    shape = (x.shape[0], x.shape[1], out_size[0], out_size[1])
    return x.new_empty(shape), x.new_empty(shape, dtype=torch.int32)


@torch.library.register_fake("ssdh::_max_pool2d_with_mask_backward")
def _(grad, mask, in_size):
    return grad.new_empty((grad.shape[0], grad.shape[1], in_size[0], in_size[1]))


class _ChannelScale(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale, bias):
        ctx.save_for_backward(x, scale)
        return torch.ops.ssdh.channel_scale(x, scale, bias)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, scale = ctx.saved_tensors
        grad_x, grad_scale, grad_bias = torch.ops.ssdh._channel_scale_backward(grad, x, scale)
        wanted = ctx.needs_input_grad
        return (grad_x if wanted[0] else None, grad_scale if wanted[1] else None,
                grad_bias if wanted[2] else None)


def channel_scale(x: Tensor, scale: Tensor, bias: Tensor | None = None) -> Tensor:
    """Caffe's Scale layer (ScaleLayer, with BiasLayer's bias): x is outer x C x inner
    (3-D), scale and bias are C-vectors, top = x * scale[c] (+ bias[c]); float32 /
    float64 on the CPU. Differentiable once: the gradients of x, scale and bias come
    from one pass over the top gradient and x (the scale's is sum(grad * x) over outer
    and inner, the bias's sum(grad)), each channel summed in a fixed order."""
    for name, t in (("x", x), ("scale", scale), ("bias", bias)):
        if t is not None and (t.dtype not in (torch.float32, torch.float64) or t.device.type != "cpu"):
            raise SSDHError(f"channel_scale: expected float32 / float64 CPU tensors, {name} is {t.dtype} "
                            f"on {t.device}")
    if x.dim() != 3 or scale.shape != (x.shape[1],) or (bias is not None and bias.shape != scale.shape):
        raise SSDHError(f"channel_scale: expected x outer x C x inner and C-vectors, got x {tuple(x.shape)}, "
                        f"scale {tuple(scale.shape)}" + ("" if bias is None else f", bias {tuple(bias.shape)}"))
    if scale.dtype != x.dtype or (bias is not None and bias.dtype != x.dtype):
        raise SSDHError(f"channel_scale: x, scale and bias must share a dtype, got {x.dtype}, {scale.dtype}"
                        + ("" if bias is None else f", {bias.dtype}"))
    return _ChannelScale.apply(x, scale, bias)


@torch.library.register_fake("ssdh::channel_scale")
def _(x, scale, bias):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.register_fake("ssdh::_channel_scale_backward")
def _(grad, x, scale):
    return torch.empty_like(x, memory_format=torch.contiguous_format), scale.new_empty(scale.shape), \
        scale.new_empty(scale.shape)


def dropout(x: Tensor, ratio: float, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Caffe's Dropout in the TRAIN phase on a float32 / float64 CPU tensor: each
    element kept with probability 1 - ratio (ratio in [0, 1)), top = x * mask *
    1 / (1 - ratio). The mask (uint8) is drawn by a counter-based generator (splitmix64
    of the element's index) from one 64-bit seed taken from `generator` (torch's
    default one when None), so torch.manual_seed repeats it, at any thread count.
    Returns (top, mask); the backward is grad * mask / (1 - ratio), once
    differentiable."""
    if x.dtype not in (torch.float32, torch.float64) or x.device.type != "cpu":
        raise SSDHError(f"dropout: expected a float32 / float64 CPU tensor, got {x.dtype} on {x.device}")
    if not 0.0 <= ratio < 1.0:
        raise SSDHError(f"dropout: the ratio must be in [0, 1), got {ratio}")
    seed = int(torch.randint(-2 ** 63, 2 ** 63 - 1, (), dtype=torch.int64, generator=generator))
    return _WithMask.apply(torch.ops.ssdh.dropout, torch.ops.ssdh._dropout_backward, (float(ratio),), x,
                           float(ratio), seed)


@torch.library.register_fake("ssdh::dropout")
def _(x, ratio, seed):
    return torch.empty_like(x, memory_format=torch.contiguous_format), \
        torch.empty_like(x, dtype=torch.uint8, memory_format=torch.contiguous_format)


@torch.library.register_fake("ssdh::_dropout_backward")
def _(grad, mask, ratio):
    return torch.empty_like(grad, memory_format=torch.contiguous_format)


class _Im2col(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, kernel, stride, pad, dilation):
        ctx.geometry = tuple(x.shape), kernel, stride, pad, dilation
        return torch.ops.ssdh.im2col(x, kernel, stride, pad, dilation)

    @staticmethod
    def backward(ctx, grad):
        return col2im(grad, *ctx.geometry), None, None, None, None


class _Col2im(torch.autograd.Function):
    @staticmethod
    def forward(ctx, col, shape, kernel, stride, pad, dilation):
        ctx.geometry = kernel, stride, pad, dilation
        return torch.ops.ssdh.col2im(col, shape, kernel, stride, pad, dilation)

    @staticmethod
    def backward(ctx, grad):
        return im2col(grad, *ctx.geometry), None, None, None, None, None


def _check_image(t, op, name):
    if t.dtype not in (torch.float32, torch.float64) or t.device.type != "cpu":
        raise SSDHError(f"{op}: expected a float32 / float64 CPU {name}, got {t.dtype} on {t.device}")


def im2col(x: Tensor, kernel, stride=1, pad=0, dilation=1) -> Tensor:
    """Caffe's im2col_cpu for a whole N x C x H x W batch (float32 / float64, CPU):
    a (C * kh * kw) x (N * OH * OW) matrix, row (c * kh + i) * kw + j and column
    n * OH * OW + oh * OW + ow holding x[n, c, oh * sh - ph + i * dh, ow * sw - pw + j * dw]
    (0 in the padding). Differentiable (its gradient is col2im)."""
    _check_image(x, "im2col", "x")
    if x.dim() != 4:
        raise SSDHError(f"im2col: expected an N x C x H x W tensor, got {tuple(x.shape)}")
    return _Im2col.apply(x, *_geometry("im2col", kernel=kernel, stride=stride, pad=pad, dilation=dilation))


def col2im(col: Tensor, shape, kernel, stride=1, pad=0, dilation=1) -> Tensor:
    """Caffe's col2im_cpu for a whole batch: the adjoint of im2col (each entry of col
    added at its pixel of an N x C x H x W tensor of the given shape, in Caffe's
    order). Differentiable (its gradient is im2col)."""
    _check_image(col, "col2im", "col")
    if len(tuple(shape)) != 4:
        raise SSDHError(f"col2im: shape must be N x C x H x W, got {shape!r}")
    return _Col2im.apply(col, tuple(int(s) for s in shape),
                         *_geometry("col2im", kernel=kernel, stride=stride, pad=pad, dilation=dilation))


# The widest kernel conv_weight_grad takes (its kernel rows' sums are held in registers).
CONV_WEIGHT_GRAD_MAX_WIDTH = 16


def conv_weight_grad(x: Tensor, grad: Tensor, kernel, pad=0) -> Tensor:
    """The weight gradient of a stride-1, dilation-1 convolution of x (N x C x H x W,
    float32 / float64, CPU) whose top gradient is grad (N x O x OH x OW), computed
    directly (no im2col matrix): O x C x kh x kw, dW[o, c, i, j] = sum over n, y, x of
    grad[n, o, y, x] * x[n, c, y - ph + i, x - pw + j] (0 outside the map). For the
    image layers (few input channels, many pixels); kernels of up to
    CONV_WEIGHT_GRAD_MAX_WIDTH columns; the result does not depend on the thread
    count. Not differentiable."""
    _check_image(x, "conv_weight_grad", "x")
    if grad.dtype != x.dtype or grad.device != x.device:
        raise SSDHError(f"conv_weight_grad: grad must be {x.dtype} on {x.device} like x, got {grad.dtype} on "
                        f"{grad.device}")
    if x.dim() != 4 or grad.dim() != 4:
        raise SSDHError(f"conv_weight_grad: expected N x C x H x W x and N x O x OH x OW grad, got "
                        f"{tuple(x.shape)} and {tuple(grad.shape)}")
    geometry = _geometry("conv_weight_grad", kernel=kernel, pad=pad)
    return torch.ops.ssdh.conv_weight_grad(x, grad, *geometry)


@torch.library.register_fake("ssdh::conv_weight_grad")
def _(x, grad, kernel, pad):
    return x.new_empty((grad.shape[1], x.shape[1], kernel[0], kernel[1]))


def _conv_out(size, k, s, p, d):
    return (size + 2 * p - (d * (k - 1) + 1)) // s + 1


@torch.library.register_fake("ssdh::im2col")
def _(x, kernel, stride, pad, dilation):
    oh, ow = (_conv_out(x.shape[2 + i], kernel[i], stride[i], pad[i], dilation[i]) for i in range(2))
    return x.new_empty((x.shape[1] * kernel[0] * kernel[1], x.shape[0] * oh * ow))


@torch.library.register_fake("ssdh::col2im")
def _(col, shape, kernel, stride, pad, dilation):
    return col.new_empty(tuple(shape))
