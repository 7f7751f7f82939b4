"""Caffe's weight fillers (FillerParameter), with Caffe's fan rules.

For a blob of shape (s0, s1, ...): fan_in = count / s0 and fan_out = count / s1
(count for a 1-D blob). variance_norm picks fan_in (FAN_IN, the default),
fan_out (FAN_OUT) or their mean (AVERAGE). Random streams differ from Caffe's
(boost's mt19937); the distributions are the same.
"""
import math

import torch

from ssdh_port.errors import SSDHError

VARIANCE_NORMS = ("FAN_IN", "FAN_OUT", "AVERAGE")


def _fans(shape):
    count = math.prod(shape)
    fan_in = count // shape[0] if shape else 1
    fan_out = count // shape[1] if len(shape) > 1 else count
    return fan_in, fan_out


def _norm(shape, variance_norm):
    if variance_norm not in VARIANCE_NORMS:
        raise SSDHError(f"filler variance_norm must be one of {VARIANCE_NORMS}, got {variance_norm!r}")
    fan_in, fan_out = _fans(shape)
    return {"FAN_IN": fan_in, "FAN_OUT": fan_out, "AVERAGE": (fan_in + fan_out) / 2.0}[variance_norm]


@torch.no_grad()
def fill_(tensor, type="constant", value=0.0, min=0.0, max=1.0, mean=0.0, std=1.0,
          sparse=-1, variance_norm="FAN_IN", generator=None):
    """Fill tensor in place the way Caffe's filler of that type does; returns it."""
    shape = tuple(tensor.shape)
    if type == "constant":
        tensor.fill_(value)
    elif type == "uniform":
        tensor.uniform_(min, max, generator=generator)
    elif type == "gaussian":
        tensor.normal_(mean, std, generator=generator)
        if sparse >= 0:
            # Caffe keeps each weight with probability sparse / num_inputs.
            if len(shape) < 2:
                raise SSDHError("gaussian filler: sparse needs a blob of at least 2 axes")
            keep = sparse / (math.prod(shape) // shape[0])  # min/max are filler fields here
            tensor.mul_(torch.rand(shape, generator=generator, dtype=tensor.dtype) < keep)
    elif type == "positive_unitball":
        tensor.uniform_(0, 1, generator=generator)
        rows = tensor.view(shape[0], -1)
        rows.div_(rows.sum(dim=1, keepdim=True))
    elif type == "xavier":
        scale = math.sqrt(3.0 / _norm(shape, variance_norm))
        tensor.uniform_(-scale, scale, generator=generator)
    elif type == "msra":
        tensor.normal_(0.0, math.sqrt(2.0 / _norm(shape, variance_norm)), generator=generator)
    elif type == "bilinear":
        if len(shape) != 4 or shape[2] != shape[3]:
            raise SSDHError(f"bilinear filler needs a 4-D blob with square kernels, got {shape}")
        # BVLC master's centre (width - 1) / (2f): symmetric kernels at every size
        # (the formula before late 2017, (2f - 1 - f % 2) / (2f), was not at odd
        # sizes such as 3 and 7 and at some even ones such as 6).
        f = math.ceil(shape[3] / 2.0)
        c = (shape[3] - 1) / (2.0 * f)
        coords = torch.arange(shape[3], dtype=torch.float64)
        profile = 1 - (coords / f - c).abs()
        tensor.copy_((profile[:, None] * profile[None, :]).expand(shape))
    else:
        raise SSDHError(
            f"unknown filler type {type!r}; expected constant, uniform, gaussian, "
            "positive_unitball, xavier, msra or bilinear"
        )
    return tensor
