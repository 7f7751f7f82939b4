"""Caffe layers as torch modules, with Caffe's exact arithmetic (docs/SPEC.md section 3).

One table, LAYERS, maps a Caffe type name to a class. A class is built from its
LayerParameter and the shapes of its bottoms; forward takes the bottom tensors
and returns a tuple of tops. Learnable (and Caffe-stored) blobs live in
``self.blobs`` in Caffe's order, so caffemodel I/O is a zip over that list.
Adding a type is one class with @register plus a test against a Caffe blob.
"""
import collections
import math

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensor
from torch.nn import functional as F

from ssdh_port import ops
from ssdh_port.fillers import fill_
from ssdh_port.caffe.proto import caffe_pb2 as pb
from ssdh_port.errors import SSDHError

LAYERS = {}
FLT_MIN = 1.17549435e-38


class LayerError(SSDHError):
    """A layer that cannot be built or run; the message names the layer."""


def register(*type_names):
    def wrap(cls):
        for name in type_names:
            LAYERS[name] = cls
        return cls
    return wrap


def filler_kwargs(filler):
    """FillerParameter -> keyword arguments of fillers.fill_."""
    return dict(
        type=filler.type, value=filler.value, min=filler.min, max=filler.max,
        mean=filler.mean, std=filler.std, sparse=filler.sparse,
        variance_norm=pb.FillerParameter.VarianceNorm.Name(filler.variance_norm),
    )


def canonical_axis(axis, ndim, layer_name):
    if not -ndim <= axis < ndim:
        raise LayerError(f"layer '{layer_name}': axis {axis} out of range for a {ndim}-D blob")
    return axis % ndim


class CaffeLayer(nn.Module):
    """Base: name, type, bottoms/tops, the phase, and the Caffe blobs."""

    is_loss = False  # loss layers weigh their first top by 1 unless told

    def __init__(self, param, bottom_shapes, phase):
        super().__init__()
        self.name = param.name
        self.type = param.type
        self.phase = phase
        self.param = param
        # Forward passes read plain Python values set here, not the protobuf
        # (torch.compile cannot trace protobuf objects; each read costs too).
        self.n_tops = len(param.top)
        self.bottom_shapes = [tuple(s) for s in bottom_shapes]
        self.blobs = nn.ParameterList()
        self.frozen_blobs = set()  # blob indices this layer computes no gradient for
        self.blob_views = {}  # blob index -> this layer's shape of a blob shared from another shape
        self.accumulate_diffs = False  # weight gradients added into the blobs' .grad in place (CaffeNet)

    def error(self, message):
        return LayerError(f"layer '{self.name}' ({self.type}): {message}")

    def blob(self, i):
        """Blob i as the forward pass uses it: detached when this layer computes no
        gradient for it (its lr_mult is 0: Caffe's param_propagate_down), and
        viewed in this layer's shape when it is shared PERMISSIVE-ly from a blob of
        another shape (see CaffeNet's weight sharing)."""
        blob = self.blobs[i]
        if i in self.frozen_blobs:
            blob = blob.detach()
        shape = self.blob_views.get(i)
        return blob if shape is None else blob.view(shape)

    def add_blob(self, shape, filler=None, requires_grad=True, **fill):
        tensor = torch.zeros(shape)
        if filler is not None:
            fill_(tensor, **filler_kwargs(filler))
        elif fill:
            fill_(tensor, **fill)
        self.blobs.append(nn.Parameter(tensor, requires_grad=requires_grad))
        return self.blobs[-1]

    def check_bottoms(self, shapes):
        """Caffe's shape checks of Reshape for bottoms of these shapes (a layer
        with its own check() has them there); used when a net is reshaped."""
        check = getattr(self, "check", None)
        if check is not None:
            check([tuple(s) for s in shapes])

    def allow_force_backward(self, bottom_index):
        """Caffe's Layer::AllowForceBackward: whether force_backward may send a
        gradient to this bottom (labels and indices: no)."""
        return True

    def expect_same_shapes(self, shapes, what="bottoms"):
        """Caffe's CHECK that several bottoms have one shape (no broadcasting)."""
        if any(tuple(s) != tuple(shapes[0]) for s in shapes[1:]):
            raise self.error(f"all {what} must have the same shape, got "
                             f"{' and '.join(str(tuple(s)) for s in shapes)}")

    def expect_bottoms(self, *counts):
        if len(self.bottom_shapes) not in counts:
            raise self.error(f"expects {' or '.join(map(str, counts))} bottom(s), got "
                             f"{len(self.bottom_shapes)}")


# ---------------------------------------------------------------- inputs


@register("Input")
class Input(CaffeLayer):
    """Blobs given by the caller; shapes from input_param (one per top, or one for all)."""

    def top_shapes(self):
        shapes = [tuple(int(d) for d in s.dim) for s in self.param.input_param.shape]
        tops = len(self.param.top)
        if len(shapes) not in (1, tops):
            raise self.error(f"{len(shapes)} shapes for {tops} tops (give 1 or {tops})")
        return shapes * tops if len(shapes) == 1 else shapes


@register("DummyData")
class DummyData(CaffeLayer):
    """Filler-made blobs; constant fillers once, the others at every forward."""

    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        p = param.dummy_data_param
        tops = len(param.top)
        if p.shape:
            shapes = [tuple(int(d) for d in s.dim) for s in p.shape]
        else:
            legacy = [list(p.num), list(p.channels), list(p.height), list(p.width)]
            if any(len(v) not in (1, tops) for v in legacy):
                raise self.error("num/channels/height/width must be given 1 or #top times")
            shapes = [tuple(v[i if len(v) > 1 else 0] for v in legacy) for i in range(tops)]
        if len(shapes) not in (1, tops):
            raise self.error(f"{len(shapes)} shapes for {tops} tops")
        self.shapes = shapes * tops if len(shapes) == 1 else shapes
        fillers = list(p.data_filler) or [pb.FillerParameter(type="constant", value=0)]
        if len(fillers) not in (1, tops):
            raise self.error(f"{len(fillers)} data_filler entries for {tops} tops")
        self.fillers = fillers * tops if len(fillers) == 1 else fillers

    def top_shapes(self):
        return self.shapes

    def forward(self):
        return tuple(fill_(torch.empty(s), **filler_kwargs(f))
                     for s, f in zip(self.shapes, self.fillers))


# ---------------------------------------------------------------- vision


def _cpu_float(x):
    """A float32 / float64 CPU tensor: what the native layer kernels take."""
    return x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64)


def _spatial(param, name, default, layer):
    """Caffe's kernel_size/stride/pad: the field (repeated in ConvolutionParameter,
    single in PoolingParameter), or the 2-D pair <name>_h / <name>_w."""
    prefix = "kernel" if name == "kernel_size" else name
    if param.HasField(prefix + "_h") or param.HasField(prefix + "_w"):
        field = param.DESCRIPTOR.fields_by_name[name]
        given = len(getattr(param, name)) if field.is_repeated else param.HasField(name)
        if given:
            raise layer.error(f"give either {name} or {prefix}_h/{prefix}_w, not both")
        if not (param.HasField(prefix + "_h") and param.HasField(prefix + "_w")):
            raise layer.error(f"give both {prefix}_h and {prefix}_w")
        return int(getattr(param, prefix + "_h")), int(getattr(param, prefix + "_w"))
    field = param.DESCRIPTOR.fields_by_name[name]
    if field.is_repeated:
        values = [int(v) for v in getattr(param, name)]
    else:
        values = [int(getattr(param, name))] if param.HasField(name) else []
    if not values:
        if default is None:
            raise layer.error(f"{name} (or {prefix}_h and {prefix}_w) is required")
        return default, default
    if len(values) in (1, 2):
        return values[0], values[-1]
    raise layer.error(f"{name} has {len(values)} values; only 2-D spatial layers are supported")


# Input channels up to which a convolution's input gradient is Caffe's (GEMM + col2im):
# the image layers, where oneDNN's backward-data is slow (AlexNet's conv1, 3 channels,
# 11 x 11 stride 4, batch 8: 54 ms against 18 ms; docs/ops.md). For one-channel images
# their weight gradient is Caffe's too, computed directly at stride 1 (ops.conv_weight_grad:
# LeNet's conv1 0.41 against 0.93 ms for im2col + GEMM), im2col + GEMM otherwise; torch's
# elsewhere (faster from 3 channels on).
IMAGE_CHANNELS = 4
_COL_ELEMENTS = 1 << 24  # samples per GEMM chunk: col of at most 16 M values (64 MB)


class _ImageConvolution(torch.autograd.Function):
    """A convolution with torch's forward and Caffe's backward
    (BaseConvolutionLayer::backward_cpu_gemm / weight_cpu_gemm) where that is faster:
    the input gradient col2im(W^T . grad) and, for one input channel, the weight
    gradient grad (O x N*L) . im2col(x)^T, as GEMMs over chunks of samples; at stride
    and dilation 1 that weight gradient directly (ops.conv_weight_grad, no columns)."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, pad, dilation):
        ctx.save_for_backward(x, weight)
        ctx.geometry = stride, pad, dilation
        ctx.has_bias = bias is not None
        return F.conv2d(x, weight, bias, stride, pad, dilation)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        stride, pad, dilation = ctx.geometry
        want_x, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        want_b = ctx.has_bias and ctx.needs_input_grad[2]
        one_channel = x.shape[1] == 1
        direct_w = (want_w and one_channel and stride == (1, 1) and dilation == (1, 1)
                    and weight.shape[3] <= ops.CONV_WEIGHT_GRAD_MAX_WIDTH)
        columns_w = want_w and one_channel and not direct_w  # the weight gradient by im2col
        grad_w = grad_b = None
        if direct_w:
            grad_w = torch.ops.ssdh.conv_weight_grad(x, grad, tuple(weight.shape[2:]), pad)
        if (want_w or want_b) and not one_channel:
            _, grad_w, grad_b = torch.ops.aten.convolution_backward(
                grad, x, weight, [weight.shape[0]] if ctx.has_bias else None, stride, pad, dilation, False,
                [0, 0], 1, [False, want_w, want_b])
        elif want_b:
            grad_b = grad.sum((0, 2, 3))
        if not want_x and not columns_w:
            return None, grad_w, grad_b, None, None, None
        n, outputs = grad.shape[:2]
        kernel = tuple(weight.shape[2:])
        plane = grad.shape[2] * grad.shape[3]
        rows = weight[0].numel()
        chunk = max(1, _COL_ELEMENTS // (rows * plane))
        grad_x = torch.empty_like(x) if want_x else None
        if columns_w:
            grad_w = torch.zeros(outputs, rows, dtype=weight.dtype)
        w_t = weight.reshape(outputs, rows).t()
        for first in range(0, n, chunk):
            last = min(n, first + chunk)
            g = grad[first:last].reshape(last - first, outputs, plane).transpose(0, 1).reshape(outputs, -1)
            if columns_w:
                grad_w.addmm_(g, torch.ops.ssdh.im2col(x[first:last], kernel, stride, pad, dilation).t())
            if want_x:
                grad_x[first:last] = torch.ops.ssdh.col2im(w_t.mm(g), (last - first,) + tuple(x.shape[1:]), kernel,
                                                           stride, pad, dilation)
        if grad_w is not None:
            grad_w = grad_w.view_as(weight)
        return grad_x, grad_w, grad_b, None, None, None


@register("Convolution", "Deconvolution")
class Convolution(CaffeLayer):
    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        if not self.bottom_shapes or len(param.top) != len(self.bottom_shapes):
            raise self.error(f"needs one top per bottom, got {len(self.bottom_shapes)} bottom(s) and "
                             f"{len(param.top)} top(s)")
        p = param.convolution_param
        shape = self.bottom_shapes[0]
        if any(s != shape for s in self.bottom_shapes):
            raise self.error(f"all bottoms must have one shape, got {self.bottom_shapes}")
        if len(shape) != 4 or p.axis not in (1, -3):
            raise self.error(f"only N x C x H x W bottoms with axis 1 are supported, got {shape}")
        self.kernel = _spatial(p, "kernel_size", None, self)
        self.stride = _spatial(p, "stride", 1, self)
        self.pad = _spatial(p, "pad", 0, self)
        dilation = list(p.dilation) or [1]
        self.dilation = (dilation[0], dilation[-1])
        self.group = p.group
        channels, outputs = shape[1], p.num_output
        if not outputs:
            raise self.error("num_output must be set")
        if channels % self.group or outputs % self.group:
            raise self.error(f"channels {channels} and num_output {outputs} must be "
                             f"divisible by group {self.group}")
        self.transposed = param.type == "Deconvolution"
        self.in_channels = channels
        if self.transposed:
            weight_shape = (channels, outputs // self.group) + self.kernel
        else:
            weight_shape = (outputs, channels // self.group) + self.kernel
        self.add_blob(weight_shape, p.weight_filler)
        self.bias_term = p.bias_term
        if p.bias_term:
            self.add_blob((outputs,), p.bias_filler)

    def forward(self, *bottoms):
        # Several bottoms: each gives its own top, all with the same weights (Caffe's
        # BaseConvolutionLayer).
        channels = self.in_channels
        for x in bottoms:
            if x.dim() != 4 or x.shape[1] != channels or x.shape != bottoms[0].shape:
                raise self.error(f"input size incompatible with the convolution weights: bottoms "
                                 f"{[tuple(b.shape) for b in bottoms]}, the weights take N x {channels} x H x W "
                                 "(all bottoms of one shape)")
        weight, bias = self.blob(0), self.blob(1) if self.bias_term else None
        if self.transposed:
            return tuple(F.conv_transpose2d(x, weight, bias, self.stride, self.pad, 0, self.group,
                                            self.dilation) for x in bottoms)
        if self._image_backward(bottoms[0], weight):
            return tuple(_ImageConvolution.apply(x, weight, bias, self.stride, self.pad, self.dilation)
                         for x in bottoms)
        return tuple(F.conv2d(x, weight, bias, self.stride, self.pad, self.dilation, self.group)
                     for x in bottoms)

    def _image_backward(self, x, weight):
        """Caffe's im2col backward for image layers (few input channels) on the CPU."""
        return (self.in_channels <= IMAGE_CHANNELS and self.group == 1 and _cpu_float(x)
                and weight.dtype == x.dtype and x.is_contiguous()
                and torch.is_grad_enabled() and not torch.is_autocast_enabled("cpu")
                and not isinstance(x, FakeTensor))


def caffe_pool_size(size, kernel, stride, pad, ceil_mode=True):
    """Caffe's pooled size: ceil rounding, minus one window that would start in the padding."""
    if ceil_mode:
        out = int(math.ceil((size + 2 * pad - kernel) / stride)) + 1
    else:
        out = (size + 2 * pad - kernel) // stride + 1
    if pad > 0 and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def _native_max_pool(x):
    """Whether the native kernel pools x: contiguous N x C x H x W float32 / float64 on
    the CPU. Elsewhere torch's max_pool2d does (NaN propagates there, and a window of
    -inf gives -inf where Caffe gives the lowest float)."""
    return _cpu_float(x) and x.is_contiguous()


def _max_pool_native(x, kernel, stride, pad, ceil_mode):
    h, w = x.shape[-2:]
    out_size = (caffe_pool_size(h, kernel[0], stride[0], pad[0], ceil_mode),
                caffe_pool_size(w, kernel[1], stride[1], pad[1], ceil_mode))
    return ops.max_pool2d_with_mask(x, tuple(kernel), tuple(stride), tuple(pad), out_size)


def caffe_pool(x, method, kernel, stride, pad, ceil_mode=True):
    """MAX / AVE pooling with Caffe's sizes; AVE divides by the window clipped to
    the padded bounds (H + pad), computed before clipping to the image."""
    (kh, kw), (ph, pw) = kernel, pad
    if method == "MAX" and _native_max_pool(x):
        return _max_pool_native(x, kernel, stride, pad, ceil_mode)[0]
    if 2 * ph <= kh and 2 * pw <= kw:
        # torch's pooling has Caffe's rules wherever it accepts the padding: the same
        # ceil size with the same "no window starts in the padding" correction, MAX
        # over the window clipped to the image, AVE divided by the window clipped to
        # H + pad (count_include_pad). One kernel, no padded copy.
        if method == "MAX":
            return F.max_pool2d(x, kernel, stride, pad, ceil_mode=ceil_mode)
        return F.avg_pool2d(x, kernel, stride, pad, ceil_mode=ceil_mode, count_include_pad=True)
    return caffe_pool_padded(x, method, kernel, stride, pad, ceil_mode)


def caffe_pool_padded(x, method, kernel, stride, pad, ceil_mode=True):
    """caffe_pool through an explicitly padded copy: any pad below the kernel size
    (torch refuses a pad over half the kernel)."""
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, pad
    h, w = x.shape[-2:]
    oh = caffe_pool_size(h, kh, sh, ph, ceil_mode)
    ow = caffe_pool_size(w, kw, sw, pw, ceil_mode)
    # Pad right/bottom just enough for the last window.
    extra_h = max(0, (oh - 1) * sh + kh - h - ph)
    extra_w = max(0, (ow - 1) * sw + kw - w - pw)
    fill = float("-inf") if method == "MAX" else 0.0
    padded = F.pad(x, (pw, extra_w, ph, extra_h), value=fill)
    if method == "MAX":
        out = F.max_pool2d(padded, (kh, kw), (sh, sw))
    else:
        out = F.avg_pool2d(padded, (kh, kw), (sh, sw), divisor_override=1)
        out = out / _ave_divisor(oh, ow, h, w, kernel, stride, pad, x)
    return out[..., :oh, :ow]


def _ave_divisor(oh, ow, h, w, kernel, stride, pad, like):
    def sizes(n_out, size, k, s, p):
        start = torch.arange(n_out) * s - p
        end = torch.clamp(start + k, max=size + p)
        return (end - start).to(like.dtype)
    rows = sizes(oh, h, kernel[0], stride[0], pad[0])
    cols = sizes(ow, w, kernel[1], stride[1], pad[1])
    return (rows[:, None] * cols[None, :]).to(like.device)


@register("Pooling")
class Pooling(CaffeLayer):
    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        self.expect_bottoms(1)
        p = param.pooling_param
        shape = self.bottom_shapes[0]
        if len(shape) != 4:
            raise self.error(f"pooling needs an N x C x H x W bottom, got {shape}")
        self.method = pb.PoolingParameter.PoolMethod.Name(p.pool)
        if self.method == "STOCHASTIC":
            raise self.error("STOCHASTIC pooling is not supported")
        self.ceil_mode = p.round_mode == pb.PoolingParameter.CEIL
        if p.global_pooling:
            if p.HasField("kernel_size") or p.HasField("kernel_h") or p.HasField("kernel_w"):
                raise self.error("global_pooling takes no kernel size")
            self.kernel, self.stride, self.pad = tuple(shape[2:]), (1, 1), (0, 0)
        else:
            self.kernel = _spatial(p, "kernel_size", None, self)
            self.stride = _spatial(p, "stride", 1, self)
            self.pad = _spatial(p, "pad", 0, self)
            if any(pad >= k for pad, k in zip(self.pad, self.kernel)):
                raise self.error(f"pad {self.pad} must be smaller than kernel {self.kernel}")

        if len(param.top) == 2 and self.method != "MAX":
            raise self.error("a second top (the argmax mask) needs MAX pooling")
        if len(param.top) not in (1, 2):
            raise self.error(f"makes 1 top (or 2: the pooled map and its argmax mask), got {len(param.top)}")

    def forward(self, x):
        if x.dim() != 4:
            raise self.error(f"pooling needs an N x C x H x W bottom, got {tuple(x.shape)}")
        kernel = tuple(x.shape[2:]) if self.param.pooling_param.global_pooling else self.kernel
        if self.n_tops == 2:
            return caffe_max_pool_with_mask(x, kernel, self.stride, self.pad, self.ceil_mode)
        return (caffe_pool(x, self.method, kernel, self.stride, self.pad, self.ceil_mode),)


def caffe_max_pool_with_mask(x, kernel, stride, pad, ceil_mode=True):
    """MAX pooling and Caffe's mask top: for each output, the flat index h * W + w
    into its input map of the maximum (the first one in row-major order on ties,
    as Caffe scans the window), as a float blob."""
    if _native_max_pool(x):
        out, mask = _max_pool_native(x, kernel, stride, pad, ceil_mode)
        return out, mask.to(x.dtype)
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, pad
    if 2 * ph <= kh and 2 * pw <= kw:
        # torch's indices are Caffe's mask already (flat into the input map, first maximum).
        out, index = F.max_pool2d(x, kernel, stride, pad, ceil_mode=ceil_mode, return_indices=True)
        return out, index.to(x.dtype)
    h, w = x.shape[-2:]
    oh, ow = caffe_pool_size(h, kh, sh, ph, ceil_mode), caffe_pool_size(w, kw, sw, pw, ceil_mode)
    extra_h = max(0, (oh - 1) * sh + kh - h - ph)
    extra_w = max(0, (ow - 1) * sw + kw - w - pw)
    padded = F.pad(x, (pw, extra_w, ph, extra_h), value=float("-inf"))
    out, index = F.max_pool2d(padded, (kh, kw), (sh, sw), return_indices=True)
    width = padded.shape[-1]
    # Indices count in the padded map: back to the input map's coordinates.
    mask = (index // width - ph) * w + (index % width - pw)
    return out[..., :oh, :ow], mask[..., :oh, :ow].to(x.dtype)


def _channel_window_sum(t, size):
    """Sums over `size` (odd) channels centred on each channel, zeros beyond the ends."""
    pre = (size - 1) // 2
    padded = F.pad(t, (0, 0, 0, 0, pre, pre))
    out = padded[:, :t.shape[1]].clone()
    for i in range(1, size):
        out += padded[:, i:i + t.shape[1]]
    return out


class _LRNFormula(torch.autograd.Function):
    """Caffe's cross-channel LRN with its own backward (CrossChannelBackward_cpu), for
    devices without the native op (ops.lrn_across_channels, the CPU's):
    scale = k + alpha / n * (window sum of x^2), top = x * scale^-beta;
    bottom_diff = top_diff * scale^-beta - 2 alpha beta / n * x * (window sum of
    top_diff * top / scale). Two window sums in all, against the dozen ops autograd
    records for the same formula."""

    @staticmethod
    def forward(ctx, x, size, alpha, beta, k):
        scale = _channel_window_sum(x * x, size).mul_(alpha / size).add_(k)
        power = scale.pow(-beta)
        top = x * power
        ctx.save_for_backward(x, top, scale, power)
        ctx.constants = size, alpha, beta
        return top

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, top, scale, power = ctx.saved_tensors
        size, alpha, beta = ctx.constants
        ratio = _channel_window_sum(grad * top / scale, size)
        return grad * power - (2.0 * alpha * beta / size) * x * ratio, None, None, None, None


@register("LRN")
class LRN(CaffeLayer):
    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        p = param.lrn_param
        if p.local_size % 2 == 0:
            raise self.error(f"local_size must be odd, got {p.local_size}")
        self.size, self.alpha, self.beta, self.k = p.local_size, p.alpha, p.beta, p.k
        self.across = p.norm_region == pb.LRNParameter.ACROSS_CHANNELS

    def forward(self, x):
        n = self.size
        if self.across:
            if x.dim() != 4:
                raise self.error(f"LRN needs an N x C x H x W bottom, got {tuple(x.shape)}")
            if _cpu_float(x):
                return (ops.lrn_across_channels(x, n, self.alpha, self.beta, self.k),)
            return (_LRNFormula.apply(x, n, self.alpha, self.beta, self.k),)
        # WITHIN_CHANNEL: Caffe's AVE pooling of x^2 (n x n, pad (n-1)/2), then
        # (1 + alpha * avg)^-beta.
        pad = (n - 1) // 2
        avg = caffe_pool(x * x, "AVE", (n, n), (1, 1), (pad, pad))
        return (x * (1 + self.alpha * avg) ** -self.beta,)


@register("Crop")
class Crop(CaffeLayer):
    """bottom[0] cropped to bottom[1]'s shape on the axes from crop_param.axis on,
    starting at the offsets (none: 0; one: for every cropped axis; else one per
    cropped axis). bottom[1] gives its shape only: it gets no gradient."""

    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        self.expect_bottoms(2)
        p = param.crop_param
        self.axis_param = p.axis
        self.offsets = [int(v) for v in p.offset]
        self.check(self.bottom_shapes)

    def check(self, shapes):
        """The crop's start indices for bottoms of these shapes; Caffe's checks."""
        (data, like) = shapes
        if len(data) != len(like):
            raise self.error(f"both bottoms must have the same number of axes, got {data} and {like}")
        axis = canonical_axis(self.axis_param, len(data), self.name)
        cropped = len(data) - axis
        if len(self.offsets) > 1 and len(self.offsets) != cropped:
            raise self.error(f"{len(self.offsets)} offsets for the {cropped} axes from axis {axis} on "
                             "(give 0, 1 or one per cropped axis)")
        starts = []
        for i in range(len(data)):
            if i < axis:
                starts.append(0)
                continue
            offset = 0 if not self.offsets else self.offsets[0 if len(self.offsets) == 1 else i - axis]
            if data[i] - offset < like[i]:
                raise self.error(f"invalid crop in axis {i}: offset {offset} + size {like[i]} exceeds "
                                 f"the bottom's {data[i]} (bottoms {data} and {like})")
            starts.append(offset)
        return axis, starts

    def forward(self, x, like):
        axis, starts = self.check((tuple(x.shape), tuple(like.shape)))
        index = tuple(slice(None) if i < axis else slice(starts[i], starts[i] + like.shape[i])
                      for i in range(x.dim()))
        return (x[index],)


@register("SPP")
class SPP(CaffeLayer):
    """Spatial pyramid pooling: at level l (0 .. pyramid_height - 1), 2^l x 2^l bins
    pooled with Caffe's kernel ceil(size / bins), stride = kernel and pad
    (kernel * bins - size + 1) / 2, each level flattened, the levels concatenated
    (N x sum_l C * bins_l^2). A pyramid of height 1 gives the pooled N x C x 1 x 1."""

    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        self.expect_bottoms(1)
        p = param.spp_param
        self.height = p.pyramid_height
        if self.height < 1:
            raise self.error("pyramid_height must be at least 1")
        self.method = pb.SPPParameter.PoolMethod.Name(p.pool)
        if self.method == "STOCHASTIC":
            raise self.error("STOCHASTIC pooling is not supported")
        if len(self.bottom_shapes[0]) != 4:
            raise self.error(f"needs an N x C x H x W bottom, got {self.bottom_shapes[0]}")
        self.levels(self.bottom_shapes[0])

    def levels(self, shape):
        out = []
        for level in range(self.height):
            bins = 2 ** level
            kernel, pad = [], []
            for size in shape[2:]:
                k = -(-size // bins)
                kernel.append(k)
                pad.append((k * bins - size + 1) // 2)
            if any(pd >= k for pd, k in zip(pad, kernel)):
                raise self.error(f"level {level} ({bins} x {bins} bins) of a {shape[2]} x {shape[3]} map "
                                 f"needs pad {tuple(pad)} not below kernel {tuple(kernel)} (Caffe's pooling "
                                 "refuses it): lower pyramid_height or give a larger map")
            out.append((tuple(kernel), tuple(pad)))
        return out

    def forward(self, x):
        pooled = [caffe_pool(x, self.method, k, k, pad) for k, pad in self.levels(tuple(x.shape))]
        if self.height == 1:
            return (pooled[0],)
        return (torch.cat([y.flatten(1) for y in pooled], 1),)


@register("Im2col")
class Im2col(CaffeLayer):
    """The columns Caffe's convolution multiplies: N x (C * kh * kw) x OH x OW,
    channel-major then kernel row and column (convolution_param: kernel, stride,
    pad, dilation; 2-D only)."""

    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        self.expect_bottoms(1)
        p = param.convolution_param
        if len(self.bottom_shapes[0]) != 4 or p.axis not in (1, -3) or p.force_nd_im2col:
            raise self.error(f"only N x C x H x W bottoms with axis 1 are supported, got {self.bottom_shapes[0]}")
        self.kernel = _spatial(p, "kernel_size", None, self)
        self.stride = _spatial(p, "stride", 1, self)
        self.pad = _spatial(p, "pad", 0, self)
        dilation = list(p.dilation) or [1]
        if len(dilation) > 2:
            raise self.error(f"dilation has {len(dilation)} values; only 2-D is supported")
        self.dilation = (dilation[0], dilation[-1])

    def forward(self, x):
        sizes = [(size + 2 * p - (d * (k - 1) + 1)) // s + 1 for size, k, s, p, d in
                 zip(x.shape[2:], self.kernel, self.stride, self.pad, self.dilation)]
        if min(sizes) < 1:
            raise self.error(f"the kernel does not fit a {x.shape[2]} x {x.shape[3]} map")
        cols = F.unfold(x, self.kernel, self.dilation, self.pad, self.stride)
        return (cols.view(x.shape[0], cols.shape[1], *sizes),)


# ---------------------------------------------------------------- neurons


class _Neuron(CaffeLayer):
    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        self.expect_bottoms(1)

    def forward(self, x):
        return (self.apply(x),)


@register("ReLU")
class ReLU(_Neuron):
    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        self.slope = param.relu_param.negative_slope

    def apply(self, x):
        return F.leaky_relu(x, self.slope) if self.slope else F.relu(x)


@register("Sigmoid")
class Sigmoid(_Neuron):
    def apply(self, x):
        return torch.sigmoid(x)


@register("TanH")
class TanH(_Neuron):
    def apply(self, x):
        return torch.tanh(x)


@register("AbsVal")
class AbsVal(_Neuron):
    def apply(self, x):
        return x.abs()


@register("BNLL")
class BNLL(_Neuron):
    def apply(self, x):
        return F.softplus(x)


@register("ELU")
class ELU(_Neuron):
    def apply(self, x):
        return F.elu(x, self.param.elu_param.alpha)


@register("Power")
class Power(_Neuron):
    def apply(self, x):
        p = self.param.power_param
        return (p.shift + p.scale * x) ** p.power


@register("Exp")
class Exp(_Neuron):
    def apply(self, x):
        p = self.param.exp_param
        inner = p.shift + p.scale * x
        return torch.exp(inner) if p.base == -1 else torch.pow(torch.tensor(p.base), inner)


@register("Log")
class Log(_Neuron):
    def apply(self, x):
        p = self.param.log_param
        inner = torch.log(p.shift + p.scale * x)
        return inner if p.base == -1 else inner / math.log(p.base)


@register("Threshold")
class Threshold(_Neuron):
    def apply(self, x):
        return (x > self.param.threshold_param.threshold).to(x.dtype)


@register("Dropout")
class Dropout(_Neuron):
    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        self.ratio = param.dropout_param.dropout_ratio

    def apply(self, x):
        # Caffe scales at training time (1 / (1 - ratio)), as torch does. On the CPU the
        # native kernel draws the mask (torch's bernoulli_ there draws one element at a
        # time: SqueezeNet's drop9 10 ms against 0.8); elsewhere torch's dropout.
        if self.phase == "TRAIN" and _cpu_float(x) and 0.0 <= self.ratio < 1.0 and not isinstance(x, FakeTensor):
            return ops.dropout(x, self.ratio)[0]
        return F.dropout(x, self.ratio, training=self.phase == "TRAIN")


@register("PReLU")
class PReLU(_Neuron):
    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        p = param.prelu_param
        channels = 1 if p.channel_shared else self.bottom_shapes[0][1]
        if p.HasField("filler"):
            self.add_blob((channels,), p.filler)
        else:
            self.add_blob((channels,), type="constant", value=0.25)

    def apply(self, x):
        slope = self.blob(0).view((1, -1) + (1,) * (x.dim() - 2))
        return torch.where(x > 0, x, x * slope)


@register("Clip")
class Clip(_Neuron):
    """min(max(x, min), max); the gradient passes where min <= x <= max."""

    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        p = param.clip_param
        if not (p.HasField("min") and p.HasField("max")):
            raise self.error("clip_param needs min and max")
        if p.min > p.max:
            raise self.error(f"clip_param min {p.min:g} is above max {p.max:g}")
        self.bounds = (p.min, p.max)

    def apply(self, x):
        return torch.clamp(x, *self.bounds)


@register("Swish")
class Swish(_Neuron):
    """x * sigmoid(beta * x)."""

    def apply(self, x):
        return x * torch.sigmoid(self.param.swish_param.beta * x)


# ---------------------------------------------------------------- common


@register("InnerProduct")
class InnerProduct(CaffeLayer):
    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        self.expect_bottoms(1)
        p = param.inner_product_param
        shape = self.bottom_shapes[0]
        self.axis = canonical_axis(p.axis, len(shape), self.name)
        fan_in = math.prod(shape[self.axis:])
        if not p.num_output:
            raise self.error("num_output must be set")
        self.transpose = p.transpose
        self.fan_in = fan_in
        weight = (fan_in, p.num_output) if p.transpose else (p.num_output, fan_in)
        self.add_blob(weight, p.weight_filler)
        self.bias_term = p.bias_term
        if p.bias_term:
            self.add_blob((p.num_output,), p.bias_filler)

    def forward(self, x):
        if x.dim() <= self.axis or math.prod(x.shape[self.axis:]) != self.fan_in:
            raise self.error(f"input size incompatible with inner product parameters: the bottom "
                             f"{tuple(x.shape)} has {math.prod(x.shape[self.axis:])} values per item "
                             f"from axis {self.axis} on, the weights take {self.fan_in}")
        flat = x.flatten(self.axis)
        weight = self.blob(0).t() if self.transpose else self.blob(0)
        bias = self.blob(1) if self.bias_term else None
        diff = self._diff()
        if flat.dim() == 2 and not self.transpose and not torch.is_autocast_enabled(flat.device.type) and (
                diff is not None or _small_batch(flat, weight)):
            return (_InnerProductFunction.apply(flat, weight, bias, diff),)
        return (F.linear(flat, weight, bias),)

    def _diff(self):
        """The weight blob whose .grad takes the weight gradient in place (Caffe's
        weight diff), when the net accumulates diffs and the weight is this
        layer's to train, in its own shape; else None."""
        if not self.accumulate_diffs or 0 in self.frozen_blobs or 0 in self.blob_views:
            return None
        return self.blobs[0]


# At most this many rows (the batch of a fully connected layer): the CPU kernels that
# read the weight once per pass (ops.linear_small_batch), faster there than a GEMM.
SMALL_BATCH_ROWS = 32


def _small_batch(x, weight):
    return (x.device.type == "cpu" and x.dtype == torch.float32 and weight.dtype == torch.float32
            and x.shape[0] <= SMALL_BATCH_ROWS and not isinstance(x, FakeTensor))


class _InnerProductFunction(torch.autograd.Function):
    """Caffe's InnerProduct on an M x K bottom and an N x K weight: top = bottom .
    weight^T + bias, bottom_diff = top_diff . weight, bias_diff = column sums of
    top_diff, and weight_diff += top_diff^T . bottom added in place into diff.grad
    when diff is given and has one (Caffe's diff, cleared by the solver, not a
    fresh tensor per pass: a 151 MB fc6 gradient written anew costs more than the
    product). Small batches on the CPU take ops.linear_small_batch's kernels."""

    @staticmethod
    def forward(ctx, x, weight, bias, diff):
        ctx.save_for_backward(x, weight)
        ctx.diff, ctx.small = diff, _small_batch(x, weight)
        top = torch.ops.ssdh.linear_small_batch(x, weight) if ctx.small else x.mm(weight.t())
        if bias is not None:
            top.add_(bias.unsqueeze(0).expand_as(top))  # bias_multiplier . bias: the bias on every row
        return top

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad = grad.contiguous()
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.ssdh.linear_small_batch_input_grad(grad, weight) if ctx.small else grad.mm(weight)
        if ctx.needs_input_grad[1]:
            if ctx.diff is not None and ctx.diff.grad is not None:
                ctx.diff.grad.addmm_(grad.t(), x)
            else:
                grad_weight = grad.t().mm(x)
        if ctx.needs_input_grad[2]:
            grad_bias = grad.sum(0)
        return grad_x, grad_weight, grad_bias, None


_ReshapeSpec = collections.namedtuple("_ReshapeSpec", "axis num_axes dims")


@register("Reshape")
class Reshape(CaffeLayer):
    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        p = param.reshape_param
        self.spec = _ReshapeSpec(p.axis, p.num_axes, tuple(int(d) for d in p.shape.dim))
        self.top_shape = self._shape(self.spec, self.bottom_shapes[0])

    def _shape(self, p, shape):
        ndim = len(shape)
        start = p.axis if p.axis >= 0 else ndim + 1 + p.axis
        if not 0 <= start <= ndim:
            raise self.error(f"axis {p.axis} out of range for a {ndim}-D bottom")
        end = ndim if p.num_axes == -1 else start + p.num_axes
        if end > ndim:
            raise self.error(f"axis {p.axis} + num_axes {p.num_axes} exceeds {ndim} axes")
        dims = list(p.dims)
        if dims.count(-1) > 1:
            raise self.error("at most one dimension may be -1")
        middle = []
        for i, d in enumerate(dims):
            if d == 0:
                if start + i >= ndim:
                    raise self.error(f"dim {i} = 0 copies a bottom axis that does not exist")
                middle.append(shape[start + i])
            else:
                middle.append(d)
        new = list(shape[:start]) + middle + list(shape[end:])
        if -1 in new:
            known = math.prod(d for d in new if d != -1)
            total = math.prod(shape)
            if known == 0 or total % known:
                raise self.error(f"cannot infer -1: {total} values into {new}")
            new[new.index(-1)] = total // known
        if math.prod(new) != math.prod(shape):
            raise self.error(f"cannot reshape {shape} ({math.prod(shape)} values) to {tuple(new)}")
        return tuple(new)

    def forward(self, x):
        # Each call from the bottom it gets (Caffe reshapes at every forward): a
        # 0 copies the bottom's axis, -1 takes the rest, other axes are fixed.
        return (x.reshape(self._shape(self.spec, tuple(x.shape))),)


@register("Flatten")
class Flatten(CaffeLayer):
    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        self.axes = param.flatten_param.axis, param.flatten_param.end_axis

    def forward(self, x):
        start = canonical_axis(self.axes[0], x.dim(), self.name)
        end = canonical_axis(self.axes[1], x.dim(), self.name)
        return (x.flatten(start, end),)


@register("Concat")
class Concat(CaffeLayer):
    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        p = param.concat_param
        self.axis = p.axis if p.HasField("axis") or not p.HasField("concat_dim") else p.concat_dim

    def check(self, shapes):
        axis = canonical_axis(self.axis, len(shapes[0]), self.name)
        for shape in shapes[1:]:
            if len(shape) != len(shapes[0]) or any(
                    a != b for i, (a, b) in enumerate(zip(shape, shapes[0])) if i != axis):
                raise self.error(f"bottoms must have the same shape except on axis {axis}, got "
                                 f"{tuple(shapes[0])} and {tuple(shape)}")
        return axis

    def forward(self, *xs):
        return (torch.cat(xs, self.check([tuple(x.shape) for x in xs])),)


@register("Slice")
class Slice(CaffeLayer):
    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        p = param.slice_param
        self.axis = p.axis if p.HasField("axis") or not p.HasField("slice_dim") else p.slice_dim
        self.points = [int(v) for v in p.slice_point]

    def forward(self, x):
        axis = canonical_axis(self.axis, x.dim(), self.name)
        tops = self.n_tops
        if self.points:
            if len(self.points) != tops - 1:
                raise self.error(f"{len(self.points)} slice points for {tops} tops")
            bounds = [0] + self.points + [x.shape[axis]]
            sizes = [b - a for a, b in zip(bounds, bounds[1:])]
        else:
            if x.shape[axis] % tops:
                raise self.error(f"axis size {x.shape[axis]} does not split into {tops} tops")
            sizes = [x.shape[axis] // tops] * tops
        return tuple(torch.split(x, sizes, dim=axis))


@register("Split")
class Split(CaffeLayer):
    def forward(self, x):
        return (x,) * self.n_tops


@register("Silence")
class Silence(CaffeLayer):
    def forward(self, *xs):
        return ()


@register("Eltwise")
class Eltwise(CaffeLayer):
    """PROD, SUM (with coeff) or MAX of bottoms of one shape (Caffe CHECKs it: no
    broadcasting)."""

    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        if len(self.bottom_shapes) < 2:
            raise self.error(f"needs at least 2 bottoms, got {len(self.bottom_shapes)}")
        self.expect_same_shapes(self.bottom_shapes)

    def forward(self, *xs):
        self.expect_same_shapes([x.shape for x in xs])
        p = self.param.eltwise_param
        op = pb.EltwiseParameter.EltwiseOp.Name(p.operation)
        if op == "PROD":
            out = xs[0]
            for x in xs[1:]:
                out = out * x
            return (out,)
        if op == "MAX":
            out = xs[0]
            for x in xs[1:]:
                out = torch.maximum(out, x)
            return (out,)
        coeff = list(p.coeff) or [1.0] * len(xs)
        if len(coeff) != len(xs):
            raise self.error(f"{len(coeff)} coefficients for {len(xs)} bottoms")
        # Caffe's axpy per bottom (top = c0 x0, then top += c x): one pass per bottom,
        # a coefficient of 1 with no multiply.
        out = xs[0] * coeff[0] if coeff[0] != 1.0 else xs[0]
        for c, x in zip(coeff[1:], xs[1:]):
            out = torch.add(out, x, alpha=c)
        return (out.clone() if out is xs[0] else out,)  # a copy, as Caffe's top is its own blob


@register("Reduction")
class Reduction(CaffeLayer):
    """SUM, ASUM, SUMSQ or MEAN over the axes from reduction_param.axis on, times
    coeff: top shape = the bottom's axes before axis (a scalar for axis 0)."""

    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        self.expect_bottoms(1)
        p = param.reduction_param
        self.op = pb.ReductionParameter.ReductionOp.Name(p.operation)
        self.axis_param, self.coeff = p.axis, p.coeff
        canonical_axis(p.axis, max(len(self.bottom_shapes[0]), 1), self.name)

    def forward(self, x):
        axis = canonical_axis(self.axis_param, max(x.dim(), 1), self.name)
        flat = x.reshape(x.shape[:axis] + (-1,))
        if self.op == "ASUM":
            flat = flat.abs()
        elif self.op == "SUMSQ":
            flat = flat * flat
        out = flat.sum(-1)
        if self.op == "MEAN":
            out = out / max(flat.shape[-1], 1)
        return (out * self.coeff,)


@register("Tile")
class Tile(CaffeLayer):
    """The bottom repeated `tiles` times along tile_param.axis (whole blocks:
    1 2 3 -> 1 2 3 1 2 3)."""

    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        self.expect_bottoms(1)
        p = param.tile_param
        if p.tiles < 1:
            raise self.error(f"tile_param.tiles must be positive, got {p.tiles}")
        self.axis_param, self.tiles = p.axis, p.tiles
        canonical_axis(p.axis, len(self.bottom_shapes[0]), self.name)

    def forward(self, x):
        axis = canonical_axis(self.axis_param, x.dim(), self.name)
        repeats = [1] * x.dim()
        repeats[axis] = self.tiles
        return (x.repeat(repeats),)


def _whole_numbers(layer, values, what, upper):
    """Integer indices stored in a float blob, as Caffe reads them; anything else
    is an error naming the layer."""
    if torch.compiler.is_compiling() or values.numel() == 0:
        return values.long()
    if isinstance(values, FakeTensor):  # shape inference: no values to check
        return values.long()
    if not bool((values == torch.round(values)).all()):
        raise layer.error(f"{what} must be whole numbers, got {values.flatten()[:8].tolist()}")
    low, high = float(values.min()), float(values.max())
    if low < 0 or high >= upper:
        raise layer.error(f"{what} must lie in [0, {upper}), got values from {low:g} to {high:g}")
    return values.long()


@register("Embed")
class Embed(CaffeLayer):
    """A lookup table: each value of the bottom (a whole number in [0, input_dim))
    picks a row of the input_dim x num_output weight, plus the bias; top shape =
    bottom shape + (num_output,). The bottom gets no gradient (Caffe refuses one)."""

    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        self.expect_bottoms(1)
        p = param.embed_param
        if not p.num_output or not p.input_dim:
            raise self.error("embed_param needs num_output and input_dim")
        self.input_dim = p.input_dim
        self.add_blob((p.input_dim, p.num_output), p.weight_filler)
        self.bias_term = p.bias_term
        if p.bias_term:
            self.add_blob((p.num_output,), p.bias_filler)

    def forward(self, indices):
        index = _whole_numbers(self, indices.detach(), "the bottom's values", self.input_dim)
        out = F.embedding(index, self.blob(0))
        return (out + self.blob(1) if self.bias_term else out,)


@register("Parameter")
class Parameter(CaffeLayer):
    """A learned blob of parameter_param.shape (zeros until trained or loaded) as its top."""

    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        self.expect_bottoms(0)
        if len(param.top) != 1:
            raise self.error(f"makes one top, the prototxt names {len(param.top)}")
        self.add_blob(tuple(int(d) for d in param.parameter_param.shape.dim))

    def top_shapes(self):
        return [tuple(self.blobs[0].shape)]

    def forward(self):
        return (self.blob(0),)


@register("BatchReindex")
class BatchReindex(CaffeLayer):
    """top[i] = bottom[0][index[i]] for a 1-D index bottom (repeats allowed: their
    gradients add up); the index gets no gradient."""

    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        self.expect_bottoms(2)
        self.check(self.bottom_shapes)

    def check(self, shapes):
        if len(shapes[1]) != 1:
            raise self.error(f"the index bottom must be 1-D, got shape {shapes[1]}")
        if not shapes[0]:
            raise self.error("the data bottom needs a batch axis")

    def top_shapes(self):
        return [(self.bottom_shapes[1][0],) + tuple(self.bottom_shapes[0][1:])]

    def forward(self, x, index):
        self.check((tuple(x.shape), tuple(index.shape)))
        # Caffe reads the float index as int (truncating), then checks the range.
        rows = index.detach().trunc()
        return (x[_whole_numbers(self, rows, "indices", x.shape[0])],)


@register("Filter")
class Filter(CaffeLayer):
    """The items (along axis 0) whose selector, the last bottom, is not 0, of each
    other bottom; unselected items get no gradient, the selector none at all.
    Until the first forward, tops keep the whole batch (Caffe's first reshape)."""

    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        if len(self.bottom_shapes) < 2 or len(param.top) != len(self.bottom_shapes) - 1:
            raise self.error(f"takes data bottoms and a selector, with one top per data bottom; got "
                             f"{len(self.bottom_shapes)} bottoms and {len(param.top)} tops")
        self.check(self.bottom_shapes)

    def check(self, shapes):
        selector = shapes[-1]
        if not selector or any(d != 1 for d in selector[1:]):
            raise self.error(f"the selector must be N or N x 1 x ..., got shape {selector}")
        for shape in shapes[:-1]:
            if not shape or shape[0] != selector[0]:
                raise self.error(f"each bottom needs the selector's {selector[0]} items on axis 0, got {shape}")

    def top_shapes(self):
        return [tuple(s) for s in self.bottom_shapes[:-1]]

    def forward(self, *bottoms):
        self.check([tuple(b.shape) for b in bottoms])
        keep = torch.nonzero(bottoms[-1].detach().reshape(-1) != 0).reshape(-1)
        return tuple(b.index_select(0, keep) for b in bottoms[:-1])


@register("BatchNorm")
class BatchNorm(CaffeLayer):
    """Caffe's BatchNorm: blobs mean, variance (both scaled by the factor in
    blob 2) and the moving-average factor; no affine part (use Scale)."""

    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        channels = self.bottom_shapes[0][1]
        for shape in ((channels,), (channels,), (1,)):
            self.add_blob(shape, requires_grad=False)
        p = param.batch_norm_param
        self.use_global = p.use_global_stats if p.HasField("use_global_stats") else phase == "TEST"
        self.fraction, self.eps = p.moving_average_fraction, p.eps

    def top_shapes(self):
        return [self.bottom_shapes[0]]

    def forward(self, x):
        # torch's batch_norm is Caffe's normalisation, (x - mean) / sqrt(var + eps) with
        # the biased variance of the batch, in one kernel each way.
        if self.use_global:
            factor = self.blobs[2].item()
            scale = 0.0 if factor == 0 else 1.0 / factor
            mean, var = self.blobs[0] * scale, self.blobs[1] * scale
            return (F.batch_norm(x, mean, var, training=False, eps=self.eps),)
        if x.numel() == x.shape[1]:
            # One value per channel: torch refuses the batch statistics; Caffe's are
            # mean x, variance 0.
            mean, var = x.detach().reshape(-1), torch.zeros_like(x.detach().reshape(-1))
            top = (x - x) / math.sqrt(self.eps)
        else:
            # The running buffers at momentum 1 receive the batch mean and the unbiased
            # variance: what Caffe adds to its blobs (variance x m / (m - 1)).
            mean = torch.empty(x.shape[1], dtype=x.dtype, device=x.device)
            var = torch.empty_like(mean)
            top = F.batch_norm(x, mean, var, training=True, momentum=1.0, eps=self.eps)
        with torch.no_grad():
            self.blobs[2].mul_(self.fraction).add_(1)
            self.blobs[0].mul_(self.fraction).add_(mean.to(self.blobs[0].dtype))
            self.blobs[1].mul_(self.fraction).add_(var.to(self.blobs[1].dtype))
        return (top,)


class _Affine(CaffeLayer):
    """Scale and Bias: the operand is bottom[1], or a learned blob covering
    bottom[0]'s axes [axis, axis + num_axes)."""

    def __init__(self, param, bottom_shapes, phase, p, filler, default_value):
        super().__init__(param, bottom_shapes, phase)
        shape = self.bottom_shapes[0]
        self.axis = canonical_axis(p.axis, len(shape), self.name) if shape else 0
        if len(self.bottom_shapes) == 1:
            end = len(shape) if p.num_axes == -1 else self.axis + p.num_axes
            blob_shape = tuple(shape[self.axis:end])
            if filler is not None:
                self.add_blob(blob_shape, filler)
            else:
                self.add_blob(blob_shape, type="constant", value=default_value)

    def broadcast(self, operand, x):
        """The operand over x's axes [axis, axis + operand axes), checked as Caffe
        does (equal sizes, no broadcasting of a size-1 axis), viewed for the product."""
        axis = 0 if operand.dim() == 0 else self.axis
        wanted = tuple(x.shape[axis:axis + operand.dim()])
        if axis + operand.dim() > x.dim() or tuple(operand.shape) != wanted:
            raise self.error(f"the operand of shape {tuple(operand.shape)} must equal the bottom's axes "
                             f"from {axis} on, {wanted} (bottom {tuple(x.shape)})")
        return operand.view(operand.shape + (1,) * (x.dim() - axis - operand.dim()))


@register("Scale")
class Scale(_Affine):
    def __init__(self, param, bottom_shapes, phase):
        p = param.scale_param
        super().__init__(param, bottom_shapes, phase, p,
                         p.filler if p.HasField("filler") else None, 1.0)
        self.bias_term = p.bias_term
        if p.bias_term:
            operand_shape = (tuple(self.blobs[0].shape) if len(self.bottom_shapes) == 1
                             else self.bottom_shapes[1])
            self.add_blob(operand_shape, p.bias_filler if p.HasField("bias_filler") else None)

    def forward(self, x, *operand):
        scale = operand[0] if operand else self.blob(0)
        bias = self.blob(len(self.blobs) - 1) if self.bias_term else None
        if self._native(x, scale, bias):
            self.broadcast(scale, x)  # Caffe's shape check
            outer = math.prod(x.shape[:self.axis])
            top = ops.channel_scale(x.view(outer, scale.numel(), -1), scale.reshape(-1),
                                    None if bias is None else bias.reshape(-1))
            return (top.view(x.shape),)
        scale = self.broadcast(scale, x)
        if self.bias_term:  # x * scale + bias in one pass
            return (torch.addcmul(self.broadcast(self.blob(len(self.blobs) - 1), x), x, scale),)
        return (x * scale,)

    def _native(self, x, scale, bias):
        """The native kernel (ops.channel_scale) takes contiguous CPU float maps with
        the operand over at least one axis and a per-channel map of some size."""
        return (_cpu_float(x) and x.is_contiguous() and scale.dtype == x.dtype and scale.dim() >= 1
                and (bias is None or bias.dtype == x.dtype) and self.axis + scale.dim() < x.dim()
                and x.numel() > 0)


@register("Bias")
class Bias(_Affine):
    def __init__(self, param, bottom_shapes, phase):
        p = param.bias_param
        super().__init__(param, bottom_shapes, phase, p,
                         p.filler if p.HasField("filler") else None, 0.0)

    def forward(self, x, *operand):
        bias = operand[0] if operand else self.blob(0)
        return (x + self.broadcast(bias, x),)


@register("MVN")
class MVN(CaffeLayer):
    """Mean-variance normalisation: subtract the mean of each map (of each sample
    with across_channels), then, with normalize_variance, divide by
    sqrt(E[(x - mean)^2]) + eps, as Caffe's MVNLayer does."""

    def forward(self, x):
        p = self.param.mvn_param
        start = 1 if p.across_channels else 2
        dims = tuple(range(start, x.dim()))
        centred = x - x.mean(dim=dims, keepdim=True)
        if not p.normalize_variance:
            return (centred,)
        std = (centred * centred).mean(dim=dims, keepdim=True).sqrt()
        return (centred / (std + p.eps),)


@register("Softmax")
class Softmax(CaffeLayer):
    def forward(self, x):
        return (torch.softmax(x, canonical_axis(self.param.softmax_param.axis, x.dim(), self.name)),)


@register("ArgMax")
class ArgMax(CaffeLayer):
    def forward(self, x):
        p = self.param.argmax_param
        k = p.top_k
        if p.HasField("axis"):
            axis = canonical_axis(p.axis, x.dim(), self.name)
            values, indices = _caffe_topk(x.movedim(axis, -1), k)
            out = values if p.out_max_val else indices.to(x.dtype)
            return (out.movedim(-1, axis),)
        values, indices = _caffe_topk(x.flatten(1), k)
        parts = [indices.to(x.dtype)] + ([values] if p.out_max_val else [])
        return (torch.stack(parts, dim=1),)


def _caffe_topk(x, k):
    """Top k along the last axis; ties go to the larger index, as Caffe's
    partial_sort of (value, index) pairs in descending order does."""
    flipped = x.flip(-1)
    values, idx = torch.sort(flipped, dim=-1, descending=True, stable=True)
    return values[..., :k], (x.shape[-1] - 1 - idx)[..., :k]


# ---------------------------------------------------------------- losses


def _normalization_mode(loss_param, default_mode="VALID"):
    """The normalization a loss_param asks for (Caffe's LossLayer)."""
    if loss_param.HasField("normalization"):
        return pb.LossParameter.NormalizationMode.Name(loss_param.normalization)
    if loss_param.HasField("normalize"):
        return "VALID" if loss_param.normalize else "BATCH_SIZE"
    return default_mode


def _normalizer(mode, outer, inner, valid):
    """Caffe's LossLayer::GetNormalizer; valid may be a count tensor (kept on the
    device: no host synchronisation)."""
    if mode == "VALID":
        return torch.clamp(valid.to(torch.float32), min=1.0) if torch.is_tensor(valid) else max(1.0, float(valid))
    value = {"FULL": outer * inner, "BATCH_SIZE": outer, "NONE": 1}[mode]
    return max(1.0, float(value))


class _Loss(CaffeLayer):
    is_loss = True

    def allow_force_backward(self, bottom_index):
        return bottom_index != 1  # Caffe's LossLayer: not to the labels

    def same_first_axis(self, a, b):
        """Caffe's LossLayer::Reshape check."""
        if a.dim() and b.dim() and a.shape[0] != b.shape[0]:
            raise self.error(f"the data and the labels must have the same first axis, got shapes "
                             f"{tuple(a.shape)} and {tuple(b.shape)}")

    def same_count(self, a, b, what):
        if a.numel() != b.numel():
            raise self.error(f"{what}: bottoms of shapes {tuple(a.shape)} and {tuple(b.shape)} "
                             f"({a.numel()} and {b.numel()} values)")

    def top_shapes(self):
        # A scalar loss; a second top (SoftmaxWithLoss) is the bottom-shaped probabilities.
        return [()] + [self.bottom_shapes[0]] * (len(self.param.top) > 1)


@register("SoftmaxWithLoss")
class SoftmaxWithLoss(_Loss):
    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        lp = param.loss_param
        self.softmax_axis = param.softmax_param.axis
        self.ignore_label = lp.ignore_label if lp.HasField("ignore_label") else None
        self.normalization = _normalization_mode(lp)

    def forward(self, scores, label):
        axis = canonical_axis(self.softmax_axis, scores.dim(), self.name)
        prob = torch.softmax(scores, axis)
        outer = math.prod(scores.shape[:axis])
        inner = math.prod(scores.shape[axis + 1:])
        if label.numel() != outer * inner:
            raise self.error(f"{label.numel()} labels for {outer * inner} predictions (scores "
                             f"{tuple(scores.shape)}, labels {tuple(label.shape)}; softmax axis {axis})")
        target = label.reshape(outer, inner).long()
        p = prob.movedim(axis, -1).reshape(outer, inner, -1)
        valid = torch.ones_like(target, dtype=torch.bool)
        if self.ignore_label is not None:
            valid = target != self.ignore_label
        safe = torch.where(valid, target, torch.zeros_like(target))
        # (Compiled, the check would split the graph: gather's own index check stays.)
        if not torch.compiler.is_compiling() and bool(((safe < 0) | (safe >= p.shape[-1])).any()):
            raise self.error(f"labels must lie in [0, {p.shape[-1]}) (or be the ignore_label)")
        picked = torch.gather(p, 2, safe.unsqueeze(-1)).squeeze(-1)
        losses = -torch.log(torch.clamp(picked, min=FLT_MIN)) * valid
        norm = _normalizer(self.normalization, outer, inner, valid.sum())
        loss = losses.sum() / norm
        return (loss, prob) if self.n_tops > 1 else (loss,)


@register("EuclideanLoss")
class EuclideanLoss(_Loss):
    """sum((a - b)^2) / (2N) over the two bottoms taken as flat arrays: Caffe checks
    the first axis and the count per item, not the shapes (N x 1 against N is fine)."""

    def allow_force_backward(self, bottom_index):
        return True

    def check_pair(self, a, b):
        if not a.dim() or not b.dim() or a.shape[0] != b.shape[0] or a[0].numel() != b[0].numel():
            raise self.error(f"the bottoms need one first axis and one count per item, got shapes "
                             f"{tuple(a.shape)} and {tuple(b.shape)}")

    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        self.expect_bottoms(2)
        self.check_pair(*(torch.empty(s, device="meta") for s in self.bottom_shapes))

    def forward(self, a, b):
        self.check_pair(a, b)
        diff = a.reshape(-1) - b.reshape(-1)
        return ((diff * diff).sum() / (2 * a.shape[0]),)


# Caffe's kLOG_THRESHOLD: probabilities below it are taken as it.
LOG_THRESHOLD = 1e-20


def _label_indices(layer, label, outer, inner, classes, valid=None):
    target = label.reshape(outer, inner).long()
    checked = target if valid is None else torch.where(valid, target, torch.zeros_like(target))
    if bool(((checked < 0) | (checked >= classes)).any()):
        raise layer.error(f"labels must lie in [0, {classes})")
    return checked


@register("MultinomialLogisticLoss")
class MultinomialLogisticLoss(_Loss):
    """-1/N sum_n log(max(p[n, label_n], 1e-20)) on probabilities (N x C); the
    gradient at the label is -1 / max(p, 1e-20) times the top diff / N, as in Caffe."""

    def forward(self, prob, label):
        n = prob.shape[0]
        if label.numel() != n:
            raise self.error(f"needs one label per item (N x 1 x 1 x 1), got labels {tuple(label.shape)} "
                             f"for probabilities {tuple(prob.shape)}")
        p = prob.reshape(n, -1)
        target = _label_indices(self, label, n, 1, p.shape[1])
        picked = torch.gather(p, 1, target)
        floor = torch.clamp(picked.detach(), min=LOG_THRESHOLD)
        # Value -log(max(p, t)); gradient -1 / max(p, t) (Caffe's, also below the threshold).
        terms = -torch.log(floor) - (picked - picked.detach()) / floor
        return (terms.sum() / n,)


@register("InfogainLoss")
class InfogainLoss(_Loss):
    """BVLC master's InfogainLoss: softmax over infogain_loss_param.axis, then
    -sum_l H[label, l] log(max(prob_l, 1e-20)) per position, divided by the
    normalizer (loss_param: normalization / ignore_label); H from a third bottom
    or from infogain_loss_param.source (a binaryproto). The gradient is Caffe's,
    prob * sum_l H[label, l] - H[label, :], times the top diff / normalizer; an
    optional second top is the softmax."""

    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        self.expect_bottoms(2, 3)
        self.infogain = None
        if len(self.bottom_shapes) == 2:
            source = param.infogain_loss_param.source
            if not source:
                raise self.error("give the infogain matrix as a third bottom or infogain_loss_param.source")
            from ssdh_port.caffe import io as caffe_io

            self.infogain = torch.from_numpy(caffe_io.read_blobproto(source).astype("float32"))

    def forward(self, scores, label, *matrix):
        axis = canonical_axis(self.param.infogain_loss_param.axis, scores.dim(), self.name)
        classes = scores.shape[axis]
        h = (matrix[0].detach() if matrix else self.infogain.to(scores.device)).reshape(-1).to(scores.dtype)
        if h.numel() != classes * classes:
            raise self.error(f"the infogain matrix has {h.numel()} values, expected {classes} x {classes}")
        h = h.reshape(classes, classes)
        outer, inner = math.prod(scores.shape[:axis]), math.prod(scores.shape[axis + 1:])
        if label.numel() != outer * inner:
            raise self.error(f"{label.numel()} labels for {outer * inner} predictions (scores "
                             f"{tuple(scores.shape)}, labels {tuple(label.shape)})")
        lp = self.param.loss_param
        raw = label.reshape(outer, inner).long()
        valid = raw != lp.ignore_label if lp.HasField("ignore_label") else torch.ones_like(raw, dtype=torch.bool)
        target = _label_indices(self, label, outer, inner, classes, valid)
        log_prob = torch.log_softmax(scores, axis).movedim(axis, -1).reshape(outer, inner, classes)
        weights = h[target] * valid[..., None]  # H[label, :] per position, 0 where ignored
        floor = torch.clamp(log_prob.detach(), min=math.log(LOG_THRESHOLD))
        # Value with Caffe's floor; gradient of -sum H log softmax, which is Caffe's formula.
        terms = -(weights * (floor + (log_prob - log_prob.detach())))
        loss = terms.sum() / _normalizer(_normalization_mode(lp), outer, inner, int(valid.sum()))
        if len(self.param.top) > 1:
            return loss, torch.softmax(scores, axis)
        return (loss,)


@register("SigmoidCrossEntropyLoss")
class SigmoidCrossEntropyLoss(_Loss):
    def forward(self, x, target):
        lp = self.param.loss_param
        self.same_count(x, target, "the scores and the targets must have the same count")
        t = target.detach().reshape(x.shape).to(x.dtype)
        valid = torch.ones_like(t, dtype=torch.bool)
        if lp.HasField("ignore_label"):
            valid = t != lp.ignore_label
        pos = (x >= 0).to(x.dtype)
        losses = -(x * (t - pos) - torch.log1p(torch.exp(x - 2 * x * pos))) * valid
        norm = _normalizer(_normalization_mode(lp, "BATCH_SIZE"), x.shape[0], x.numel() // x.shape[0],
                           int(valid.sum()))
        return (losses.sum() / norm,)


@register("HingeLoss")
class HingeLoss(_Loss):
    def forward(self, scores, label):
        n = scores.shape[0]
        self.same_first_axis(scores, label)
        if label.numel() != n:
            raise self.error(f"needs one label per item, got labels {tuple(label.shape)} for scores "
                             f"{tuple(scores.shape)}")
        flat = scores.reshape(n, -1)
        sign = torch.ones_like(flat)
        sign.scatter_(1, label.reshape(n, 1).long(), -1.0)
        margin = torch.clamp(1 + sign * flat, min=0)
        l2 = self.param.hinge_loss_param.norm == pb.HingeLossParameter.L2
        return (((margin ** 2) if l2 else margin).sum() / n,)


@register("ContrastiveLoss")
class ContrastiveLoss(_Loss):
    def allow_force_backward(self, bottom_index):
        return bottom_index != 2  # both features, not the similarity

    def forward(self, a, b, similar):
        p = self.param.contrastive_loss_param
        n = a.shape[0]
        # Caffe: N x C x 1 x 1 features of one C, N x 1 x 1 x 1 similarity; flat arithmetic.
        legacy = [tuple(t.shape) + (1,) * (4 - t.dim()) for t in (a, b, similar)]
        bad = [t.dim() > 4 or s[0] != n or s[2:] != (1, 1) for t, s in zip((a, b, similar), legacy)]
        if any(bad) or legacy[0][1] != legacy[1][1] or legacy[2][1] != 1:
            raise self.error(f"needs features N x C (x 1 x 1) of one C and a similarity N (x 1 x 1 x 1), got "
                             f"shapes {tuple(a.shape)}, {tuple(b.shape)} and {tuple(similar.shape)}")
        diff = a.reshape(n, -1) - b.reshape(n, -1)
        dist_sq = (diff * diff).sum(dim=1)
        sim = similar.detach().reshape(n).to(a.dtype)
        if p.legacy_version:
            dissimilar = torch.clamp(p.margin - dist_sq, min=0)
        else:
            dissimilar = torch.clamp(p.margin - torch.sqrt(dist_sq), min=0) ** 2
        return ((sim * dist_sq + (1 - sim) * dissimilar).sum() / (2 * n),)


@register("Accuracy")
class Accuracy(CaffeLayer):
    def top_shapes(self):
        axis = canonical_axis(self.param.accuracy_param.axis, len(self.bottom_shapes[0]), self.name)
        return [()] + [(self.bottom_shapes[0][axis],)] * (len(self.param.top) > 1)
    def forward(self, scores, label):
        p = self.param.accuracy_param
        axis = canonical_axis(p.axis, scores.dim(), self.name)
        classes = scores.shape[axis]
        if label.numel() * classes != scores.numel():
            raise self.error(f"{label.numel()} labels for {scores.numel() // classes} predictions (scores "
                             f"{tuple(scores.shape)}, labels {tuple(label.shape)}; axis {axis})")
        if p.top_k > classes:
            raise self.error(f"top_k {p.top_k} exceeds the {classes} classes")
        s = scores.movedim(axis, -1).reshape(-1, classes)
        target = label.reshape(-1).long()
        valid = torch.ones_like(target, dtype=torch.bool)
        if p.HasField("ignore_label"):
            valid = target != p.ignore_label
        safe = torch.where(valid, target, torch.zeros_like(target))
        true_score = torch.gather(s, 1, safe[:, None])
        # Correct when fewer than top_k classes score strictly higher (Caffe's rule).
        correct = ((s > true_score).sum(dim=1) < p.top_k) & valid
        count = int(valid.sum())
        accuracy = correct.sum().to(scores.dtype) / max(count, 1)
        if len(self.param.top) == 1:
            return (accuracy,)
        per_class = torch.zeros(classes, dtype=scores.dtype)
        for c in range(classes):
            in_class = valid & (target == c)
            if in_class.any():
                per_class[c] = (correct & in_class).sum() / in_class.sum()
        return (accuracy, per_class)


# ---------------------------------------------------------------- multi-label


def _signed_targets(scores, labels, name):
    """Multi-label targets of the Caffe multi-label forks: +1 positive, -1
    negative, 0 unknown (ignored)."""
    y = labels.reshape(scores.shape[0], -1).to(scores.dtype)
    if y.shape != scores.reshape(scores.shape[0], -1).shape:
        raise LayerError(f"layer '{name}': labels {tuple(labels.shape)} do not match scores "
                         f"{tuple(scores.shape)}")
    return y


@register("MultiLabelSigmoidLoss")
class MultiLabelSigmoidLoss(_Loss):
    """Sigmoid cross-entropy over the known labels (+1 / -1; 0 ignored), summed
    and divided by the batch size N."""

    def forward(self, scores, labels):
        x = scores.reshape(scores.shape[0], -1)
        y = _signed_targets(scores, labels, self.name)
        known = (y != 0).to(x.dtype)
        target = (y > 0).to(x.dtype)
        losses = F.binary_cross_entropy_with_logits(x, target, reduction="none") * known
        return (losses.sum() / x.shape[0],)


@register("MultiLabelAccuracy")
class MultiLabelAccuracy(CaffeLayer):
    """Over the known labels (+1 / -1; 0 ignored), with score > 0 read as positive:
    accuracy, then optionally sensitivity (true-positive rate) and specificity
    (true-negative rate) as second and third tops."""

    def top_shapes(self):
        return [()] * len(self.param.top)

    def forward(self, scores, labels):
        x = scores.reshape(scores.shape[0], -1)
        y = _signed_targets(scores, labels, self.name)
        predicted = x > 0
        positive, negative = y > 0, y < 0
        true_pos = (predicted & positive).sum()
        true_neg = (~predicted & negative).sum()
        rate = lambda hits, total: hits.to(x.dtype) / max(int(total), 1)
        outs = (rate(true_pos + true_neg, positive.sum() + negative.sum()),
                rate(true_pos, positive.sum()), rate(true_neg, negative.sum()))
        return outs[: len(self.param.top)]


# ---------------------------------------------------------------- SSDH / DNNH


@register("K1_EuclideanLoss")
class K1EuclideanLoss(_Loss):
    """The original forcing-binary layer: -(1/(2NK)) sum (a - 0.5)^2 over the
    first bottom (the second, the same blob in the authors' nets, is unused);
    ssdh_loss_param { p: 1 } gives the p = 1 variant."""

    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        self.p = param.ssdh_loss_param.p

    def forward(self, a, *unused):
        return (ops.forcing_binary_loss(a.reshape(a.shape[0], -1), self.p),)


@register("K2_EuclideanLoss")
class K2EuclideanLoss(_Loss):
    """The original 50%-fire-rate layer on its bottom b (N x D, the 1 x K average
    pooled latent in the authors' nets): (1/(2N)) sum (b - 0.5)^2."""

    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        self.p = param.ssdh_loss_param.p

    def forward(self, b, *unused):
        flat = b.reshape(b.shape[0], -1)
        p = self.p
        if flat.shape[1] == 1:
            return (ops.fire_rate_loss(flat, p),)
        # Over D > 1 values per sample the original sums rather than averages:
        # D times the (negated) forcing-binary value.
        return (-flat.shape[1] * ops.forcing_binary_loss(flat, p),)


@register("MaxMarginMultiLabelLoss")
class MaxMarginMultiLabelLossLayer(_Loss):
    """Multi-label max-margin loss; labels +1/-1/0 (0 = don't care) as the
    authors' Caffe multi-label data encodes them."""

    def forward(self, scores, labels):
        n = scores.shape[0]
        p = self.param.max_margin_multilabel_loss_param.p
        return (ops.max_margin_loss(scores.reshape(n, -1), labels.reshape(n, -1).to(scores.dtype),
                                    p, label_format="signed"),)


class _TripletHinge(torch.autograd.Function):
    """caffe-dnnh's triplet ranking hinge loss with its backward: only samples
    whose hinge is > 0 (strictly) get a gradient; legacy: (F- - F+), (F+ - F),
    (F - F-) times 4/N whatever the top diff (the layer ignores its loss_weight),
    else the true gradient 2/N times the top diff."""

    @staticmethod
    def forward(ctx, q, s, d, margin, legacy):
        hinge = margin + ((q - s) ** 2).sum(1) - ((q - d) ** 2).sum(1)
        active = (hinge > 0).to(q.dtype)[:, None]
        ctx.save_for_backward(q, s, d, active)
        ctx.legacy = legacy
        return torch.where(hinge > 0, hinge, torch.zeros_like(hinge)).sum() / q.shape[0]

    @staticmethod
    def backward(ctx, top_diff):
        q, s, d, active = ctx.saved_tensors
        n = q.shape[0]
        scale = active * (4.0 / n if ctx.legacy else 2.0 / n * top_diff)
        return (d - s) * scale, (s - q) * scale, (q - d) * scale, None, None


@register("TripletRankingHingeLoss")
class TripletRankingHingeLoss(_Loss):
    """DNNH: mean over the batch of max(0, margin + |q - q+|^2 - |q - q-|^2) on
    the three bottoms (query, similar, dissimilar), each N x dim. The backward is
    the public layer's (see _TripletHinge); legacy_gradient_scale: false gives the
    true gradient scaled by the loss weight."""

    def allow_force_backward(self, bottom_index):
        return True  # three feature bottoms

    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        p = param.triplet_ranking_hinge_loss_param
        self.dim, self.margin, self.legacy = p.dim, p.margin, p.legacy_gradient_scale

    def check(self, shapes):
        counts = [(s[0], math.prod(s[1:])) if s else (None, None) for s in shapes]
        if len(shapes) != 3 or not counts[0] == counts[1] == counts[2]:
            raise self.error(f"the three bottoms need one count per item, got shapes "
                             f"{', '.join(str(tuple(s)) for s in shapes)}")

    def forward(self, query, similar, dissimilar):
        n = query.shape[0]
        self.check([tuple(t.shape) for t in (query, similar, dissimilar)])
        q, s, d = (t.reshape(n, -1) for t in (query, similar, dissimilar))
        if q.shape[1] != self.dim:
            raise self.error(f"bottoms have {q.shape[1]} units, dim is {self.dim}")
        return (_TripletHinge.apply(q, s, d, self.margin, self.legacy),)
