"""Float32 arithmetic on the GPU. PyTorch runs float32 convolutions on TF32
tensor cores by default (10 bits of mantissa); Caffe computes them in full
float32. The faithful default here is full float32, with TF32 as an opt-in.

The switch is process-wide in PyTorch; the library only ever changes it inside
tf32_mode(), which puts the previous values back on the way out."""
import contextlib

import torch


def _flags():
    cudnn_conv = getattr(torch.backends.cudnn, "conv", None)
    if cudnn_conv is not None and hasattr(cudnn_conv, "fp32_precision"):
        return (cudnn_conv, "fp32_precision"), (torch.backends.cuda.matmul, "fp32_precision")
    # releases before the per-backend precision flags
    return (torch.backends.cudnn, "allow_tf32"), (torch.backends.cuda.matmul, "allow_tf32")


def set_tf32(enabled):
    """TF32 for float32 convolutions and matrix products (process-wide: for entry
    points; library code uses tf32_mode)."""
    for owner, name in _flags():
        value = ("tf32" if enabled else "ieee") if name == "fp32_precision" else bool(enabled)
        setattr(owner, name, value)


@contextlib.contextmanager
def tf32_mode(enabled):
    """TF32 on or off for the block, the previous settings restored after it."""
    saved = [(owner, name, getattr(owner, name)) for owner, name in _flags()]
    set_tf32(enabled)
    try:
        yield
    finally:
        for owner, name, value in saved:
            setattr(owner, name, value)
