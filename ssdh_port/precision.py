"""Float32 arithmetic on the GPU. PyTorch runs float32 convolutions on TF32
tensor cores by default (10 bits of mantissa); Caffe computes them in full
float32. The faithful default here is full float32, with TF32 as an opt-in."""
import torch


def set_tf32(enabled):
    """TF32 for float32 convolutions and matrix products (process-wide)."""
    cudnn_conv = getattr(torch.backends.cudnn, "conv", None)
    if cudnn_conv is not None and hasattr(cudnn_conv, "fp32_precision"):
        value = "tf32" if enabled else "ieee"
        cudnn_conv.fp32_precision = value
        torch.backends.cuda.matmul.fp32_precision = value
    else:  # releases before the per-backend precision flags
        torch.backends.cudnn.allow_tf32 = bool(enabled)
        torch.backends.cuda.matmul.allow_tf32 = bool(enabled)
