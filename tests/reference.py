"""Pure-PyTorch references of the SSDH losses, written from docs/SPEC.md section 1
(values and gradients by formula, not by autograd of the same code)."""
import numpy as np
import torch


def forcing_binary(a, p):
    """E2 as K1_EuclideanLoss reports it, and d loss / d a."""
    n, k = a.shape
    d = a.double() - 0.5
    if p == 2:
        return -(d * d).sum() / (2 * n * k), -d / (n * k)
    return -d.abs().sum() / (n * k), -torch.sign(d) / (n * k)


def fire_rate(a, p):
    """E3 on the per-sample means, and d loss / d a."""
    n, k = a.shape
    d = a.double().mean(dim=1) - 0.5
    if p == 2:
        loss, dm = (d * d).sum() / (2 * n), d / n
    else:
        loss, dm = d.abs().sum() / n, torch.sign(d) / n
    return loss, (dm / k).unsqueeze(1).expand(n, k)


def max_margin(scores, positive, negative, p):
    """Max-margin loss; positive / negative are boolean masks of the labels that
    count (everything else is don't care)."""
    s = scores.double()
    y = positive.double()
    zero = (positive & (s >= 1)) | (negative & (s <= 0)) | ~(positive | negative)
    diff = torch.where(zero, torch.zeros_like(s), s - y)
    n = s.shape[0]
    loss = (0.5 * diff.abs() ** p).sum() / n
    grad = (p / 2) * torch.sign(diff) * diff.abs() ** (p - 1) / n
    return loss, torch.where(zero, torch.zeros_like(s), grad)


def pack_bits(a, threshold=0.5):
    """numpy's little-endian bit packing of a > threshold."""
    return torch.from_numpy(np.packbits((a > threshold).numpy(), axis=1, bitorder="little"))


def caffe_pooling(x, method, kernel, stride, pad, ceil_mode=True):
    """Caffe's PoolingLayer::Forward_cpu, loop by loop (MAX and AVE), on a numpy
    N x C x H x W array: returns (top, mask) (mask None for AVE)."""
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, pad
    n, c, h, w = x.shape

    def pooled(size, k, s, p):
        out = (-(-(size + 2 * p - k) // s) if ceil_mode else (size + 2 * p - k) // s) + 1
        if p and (out - 1) * s >= size + p:
            out -= 1
        return out
    oh, ow = pooled(h, kh, sh, ph), pooled(w, kw, sw, pw)
    top = np.zeros((n, c, oh, ow), np.float64)
    mask = np.full((n, c, oh, ow), -1, np.int64)
    for i in range(oh):
        for j in range(ow):
            h0, w0 = i * sh - ph, j * sw - pw
            h1, w1 = min(h0 + kh, h + ph), min(w0 + kw, w + pw)
            size = (h1 - h0) * (w1 - w0)
            h0, w0, h1, w1 = max(h0, 0), max(w0, 0), min(h1, h), min(w1, w)
            window = x[:, :, h0:h1, w0:w1].reshape(n, c, -1)
            if method == "AVE":
                top[:, :, i, j] = window.sum(-1) / size
            else:
                # Caffe's scan: row by row, strict > from the lowest float, so the first
                # maximum wins, NaN never does, and a window with no winner (all NaN,
                # or past the map) keeps the lowest value and mask -1.
                best = np.full((n, c), np.finfo(x.dtype).min, np.float64)
                at = np.full((n, c), -1, np.int64)
                for r in range(h0, h1):
                    for col in range(w0, w1):
                        greater = x[:, :, r, col] > best
                        best = np.where(greater, x[:, :, r, col], best)
                        at = np.where(greater, r * w + col, at)
                top[:, :, i, j], mask[:, :, i, j] = best, at
    return top, (mask if method == "MAX" else None)


def caffe_max_pool_backward(grad, mask, in_size):
    """PoolingLayer::Backward_cpu for MAX: each top gradient added at its mask index,
    in top order; mask -1 (no winner) adds nothing. numpy arrays, N x C x OH x OW."""
    n, c = grad.shape[:2]
    out = np.zeros((n, c, in_size[0] * in_size[1]), grad.dtype)
    for b in range(n):
        for ch in range(c):
            for g, m in zip(grad[b, ch].ravel(), mask[b, ch].ravel()):
                if m >= 0:
                    out[b, ch, m] += g
    return out.reshape(n, c, *in_size)
