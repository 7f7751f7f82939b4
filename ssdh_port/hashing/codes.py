"""Binary codes: from latent activations to bits, and Hamming distances.

Bit convention (docs/SPEC.md section 1): bit = 1 where the activation is > 0.5; an
activation of exactly 0.5 gives 0. Packed codes are ssdh_port.ops.pack_bits's
layout (uint8, bit k in byte k // 8 at bit k % 8).
"""
import numpy as np
import torch

from ssdh_port import ops
from ssdh_port.errors import SSDHError


def as_bits(codes, name="codes"):
    """0/1 codes (bool, float, or an integer type other than uint8) or packed uint8
    codes -> N x K uint8 tensor of 0/1. Packed codes unpack to 8 * bytes bits; the
    padding bits are 0 in every code, so distances are unchanged."""
    c = codes if isinstance(codes, torch.Tensor) else torch.as_tensor(np.asarray(codes))
    if c.dim() != 2:
        raise SSDHError(f"{name} must be a 2-D N x K array, got shape {tuple(c.shape)}")
    if c.dtype == torch.uint8:
        if c.shape[0] == 0:
            return c.new_zeros(0, 8 * c.shape[1])
        return ops.unpack_bits(c.cpu(), 8 * c.shape[1])
    if c.is_complex():
        raise TypeError(f"{name}: codes must be real 0/1 values, got {c.dtype}")
    if c.numel() and not bool(((c == 0) | (c == 1)).all()):
        raise SSDHError(
            f"{name} must hold 0/1 bits (or packed uint8 codes); found other values. "
            "Threshold activations first (ssdh_port.ops.pack_bits(a, 0.5))."
        )
    return c.to(torch.uint8).cpu()


def as_packed(codes, name="codes", bits=None):
    """0/1 codes or packed uint8 codes -> packed uint8 codes (pack_bits layout).

    uint8 input is taken as packed, unless bits is given and the rows have
    exactly bits (> 8) columns: then they are 0/1 codes."""
    c = codes if isinstance(codes, torch.Tensor) else torch.as_tensor(np.asarray(codes))
    if c.dtype == torch.uint8:
        if c.dim() != 2:
            raise SSDHError(f"{name} must be a 2-D N x bytes array, got shape {tuple(c.shape)}")
        if not (bits and bits > 8 and c.shape[1] == bits):
            return c
        c = c.to(torch.int16)  # 0/1 codes that happen to be stored as bytes
    return ops.pack_bits(as_bits(c, name))


def hamming_distances(query_bits, db_bits):
    """B x N int32 Hamming distances between 0/1 code rows.

    Uses <q, d> of the +/-1 codes: distance = (K - <q, d>) / 2, exact in float32
    for K up to 2^24."""
    k = query_bits.shape[1]
    q = query_bits.float() * 2 - 1
    d = db_bits.float() * 2 - 1
    return ((k - q @ d.T) / 2).round().to(torch.int32)


def code_report(activations, threshold=0.5):
    """Health of latent activations (N x K) and their codes, with warnings for
    what made users of the original report a 10% mAP: a mean file that was not
    applied or weights that were not loaded (activations of 0.5 everywhere),
    bits constant over the whole set, all codes equal."""
    a = torch.as_tensor(np.asarray(activations)).double()
    bits = (a > threshold).double()
    balance = bits.mean(dim=0)
    near_half = float(((a - 0.5).abs() < 0.01).double().mean())
    constant = [int(i) for i in torch.nonzero((balance == 0) | (balance == 1)).flatten()]
    distinct = len(torch.unique(bits, dim=0)) if len(bits) else 0
    warnings = []
    if near_half > 0.5:
        warnings.append(f"{near_half:.0%} of activations lie within 0.01 of 0.5: are the "
                        "trained weights loaded and the mean file applied?")
    if constant:
        warnings.append(f"{len(constant)} of {a.shape[1]} bits are constant over all "
                        f"{len(a)} items: {constant[:16]}{' ...' if len(constant) > 16 else ''}")
    if len(a) > 1 and distinct == 1:
        warnings.append("all codes are equal: the codes carry no information")
    return {"items": len(a), "bits": a.shape[1], "bit_balance": balance.tolist(),
            "mean_bit_balance": float(balance.mean()), "near_half_fraction": near_half,
            "constant_bits": constant, "distinct_codes": distinct, "warnings": warnings}
