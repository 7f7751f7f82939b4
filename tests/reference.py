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
