"""Caffe's DataTransformer (docs/SPEC.md section 3), for a batch at once, on the CPU
or on the GPU (the same torch code: a uint8 batch moved to the device is cropped,
mirrored, mean-subtracted and scaled there).

Order, as in Caffe: crop (TEST: centre offsets (H - crop) / 2 with integer
division; TRAIN: uniform random offsets), mirror (with mirror: true each image is
flipped with probability 1/2 in every phase, TEST included, as Caffe's
transformer does), subtract
the mean (a full-size mean_file cropped at the same offsets, or one mean_value
per channel), multiply by scale. Channels stay as stored (BGR for images).
Random draws per image follow Caffe's order (mirror, then the crop offsets) from
a seeded generator, so TRAIN batches are reproducible.
"""
import numpy as np
import torch

from ssdh_port.caffe import io as caffe_io
from ssdh_port.caffe.proto import caffe_pb2 as pb
from ssdh_port.errors import SSDHError


class TransformError(SSDHError):
    """A transformation that cannot apply to the data; the message says why."""


class DataTransformer:
    def __init__(self, param, phase="TEST", seed=None):
        if phase not in ("TRAIN", "TEST"):
            raise SSDHError(f"phase must be TRAIN or TEST, got {phase!r}")
        self.phase = phase
        self.crop = int(param.crop_size)
        self.scale = float(param.scale)
        self.mirror = bool(param.mirror)
        self.force_color, self.force_gray = bool(param.force_color), bool(param.force_gray)
        if param.mean_file and len(param.mean_value):
            raise TransformError("give mean_file or mean_value, not both")
        self.mean_file = param.mean_file or None
        self.mean = None
        if self.mean_file:
            mean = caffe_io.read_blobproto(self.mean_file)
            self.mean = torch.from_numpy(np.ascontiguousarray(mean.reshape(mean.shape[-3:]),
                                                              dtype=np.float32))
        self.mean_values = [float(v) for v in param.mean_value]
        self.rng = np.random.default_rng(seed)

    def output_shape(self, channels, height, width):
        if self.crop:
            return channels, self.crop, self.crop
        return channels, height, width

    def draw(self, count, height, width):
        """Per-image (row offsets, column offsets, mirror flags), Caffe's order."""
        rows = np.zeros(count, np.int64)
        cols = np.zeros(count, np.int64)
        flips = np.zeros(count, bool)
        if self.crop and (self.crop > height or self.crop > width):
            raise TransformError(
                f"crop_size {self.crop} is larger than the {height} x {width} images")
        for i in range(count):
            if self.mirror:  # every phase, TEST included: Caffe draws mirror && Rand(2)
                flips[i] = bool(self.rng.integers(2))
            if self.crop:
                if self.phase == "TRAIN":
                    rows[i] = self.rng.integers(height - self.crop + 1)
                    cols[i] = self.rng.integers(width - self.crop + 1)
                else:
                    rows[i] = (height - self.crop) // 2
                    cols[i] = (width - self.crop) // 2
        return rows, cols, flips

    def __call__(self, batch, rows=None, cols=None, flips=None):
        """N x C x H x W (uint8 or float, numpy or torch, any device) -> float32
        tensor on the same device. Offsets and flips are drawn unless given."""
        x = torch.as_tensor(batch)
        if x.dim() != 4:
            raise TransformError(f"expected an N x C x H x W batch, got shape {tuple(x.shape)}")
        n, channels, height, width = x.shape
        self._check_mean(channels, height, width)
        if rows is None:
            rows, cols, flips = self.draw(n, height, width)
        out_h = self.crop or height
        out_w = self.crop or width
        if x.device.type == "cpu":
            out = self._windows_cpu(x, rows, cols, flips, out_h, out_w)
        else:
            out = self._windows_gathered(x, rows, cols, flips, out_h, out_w)
        if self.mean is None and self.mean_values:
            values = self.mean_values * channels if len(self.mean_values) == 1 else self.mean_values
            out -= torch.tensor(values, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
        if self.scale != 1.0:
            out *= self.scale
        return out

    def _windows_cpu(self, x, rows, cols, flips, out_h, out_w):
        """Per image: the window (a view), mirrored if drawn, converted to float and
        mean-subtracted in one pass into the output; no gather, no intermediate."""
        out = torch.empty((x.shape[0], x.shape[1], out_h, out_w), dtype=torch.float32)
        if len(x) and (rows == rows[0]).all() and (cols == cols[0]).all():
            return self._window_batch(x, int(rows[0]), int(cols[0]), flips, out)
        for i in range(x.shape[0]):
            r, c = int(rows[i]), int(cols[i])
            window = x[i, :, r:r + out_h, c:c + out_w]
            if self.mean is not None:
                mean = self.mean[:, r:r + out_h, c:c + out_w]
                if flips[i]:
                    window, mean = window.flip(-1), mean.flip(-1)
                torch.sub(window, mean, out=out[i])
            else:
                out[i].copy_(window.flip(-1) if flips[i] else window)
        return out

    def _window_batch(self, x, r, c, flips, out):
        """One window for the whole batch (no crop, or TEST's centre crop): one pass
        over the batch, then the drawn images mirrored (mirroring commutes with the
        mean subtraction, the mean mirrored with its image)."""
        h, w = out.shape[-2:]
        window = x[:, :, r:r + h, c:c + w]
        if self.mean is not None:
            torch.sub(window, self.mean[:, r:r + h, c:c + w], out=out)
        else:
            out.copy_(window)
        if flips.any():
            drawn = torch.from_numpy(np.flatnonzero(flips))
            out[drawn] = out[drawn].flip(-1)
        return out

    def _windows_gathered(self, x, rows, cols, flips, out_h, out_w):
        """The same as one gather per batch (few large kernels: the GPU path)."""
        n, device = x.shape[0], x.device
        row_idx = torch.as_tensor(rows, device=device)[:, None] + torch.arange(out_h, device=device)
        col_base = torch.arange(out_w, device=device)
        flip_t = torch.as_tensor(flips, device=device)[:, None]
        col_idx = torch.as_tensor(cols, device=device)[:, None] + torch.where(
            flip_t, out_w - 1 - col_base, col_base)
        # out[n, c, h, w] = x[n, c, r_h, c_w] (mirrored where drawn).
        picked = x[torch.arange(n, device=device)[:, None, None], :,
                   row_idx[:, :, None], col_idx[:, None, :]]          # N x h x w x C
        out = picked.permute(0, 3, 1, 2).to(torch.float32)
        if self.mean is not None:
            mean = self.mean.to(device)
            # The mean is full size: cropped at the same offsets (and mirrored with the image).
            out = out - mean[:, row_idx[:, :, None], col_idx[:, None, :]].permute(1, 0, 2, 3)
        return out.contiguous()

    def _check_mean(self, channels, height, width):
        if self.mean is not None and tuple(self.mean.shape) != (channels, height, width):
            raise TransformError(
                f"mean file {self.mean_file} has shape {tuple(self.mean.shape)}, the data is "
                f"{(channels, height, width)} (a mean file must match the stored images)")
        if self.mean_values and len(self.mean_values) not in (1, channels):
            raise TransformError(
                f"{len(self.mean_values)} mean_value entries for {channels} channels "
                "(give 1 or one per channel)")


def transform_param(scale=1.0, mean_file=None, mean_value=None, crop_size=0, gray=False):
    """A TEST TransformationParameter from the tools' source options (gray: read
    images and encoded records as one gray channel)."""
    param = pb.TransformationParameter(scale=scale, crop_size=crop_size, force_gray=gray)
    if mean_file:
        param.mean_file = mean_file
    param.mean_value.extend(mean_value or [])
    return param
