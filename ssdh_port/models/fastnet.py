"""A fast CIFAR-10 backbone with the SSDH latent layer, for training from scratch
on a CPU in about an hour.

The facts it is built on come from the published fast CIFAR-10 training recipes
(94 % test accuracy in about ten epochs): a frozen 2 x 2 patch-whitening
convolution as the first layer (its weights the eigenvectors of the training
images' 2 x 2 patch covariance, scaled by the inverse square roots of their
eigenvalues, with their negations), then three groups of
conv 3 x 3 -> max-pool 2 -> batch norm -> GELU -> conv 3 x 3 -> batch norm -> GELU
at widths 64, 256, 256, a global max-pool, batch norm without learnable scales
(their biases are learned), convolutions initialised as partial identities.

SSDH puts its latent layer between the pooled features and the classifier:
features (256) -> Linear -> sigmoid (K bits) -> Linear -> class scores. The
published recipe scales its scores by 1/9; behind a sigmoid bottleneck, whose
outputs are already bounded, that scaling stops the training (measured: chance
accuracy after an epoch), so the scale is 1 here. Codes are the latent
activations > 0.5.
"""
import torch
from torch import nn
from torch.nn import functional as F

from ssdh_port.errors import SSDHError
from ssdh_port.models.ssdh import LatentLayer


class _BatchNorm(nn.BatchNorm2d):
    """Batch norm with a fixed scale of 1 (only the shift is learned)."""

    def __init__(self, channels, momentum=0.4, eps=1e-12):
        super().__init__(channels, momentum=momentum, eps=eps)
        self.weight.requires_grad_(False)


class _Conv(nn.Conv2d):
    """3 x 3 'same' convolution without bias, initialised as a partial identity
    (the first in_channels filters pass their input through)."""

    def __init__(self, in_channels, out_channels):
        super().__init__(in_channels, out_channels, 3, padding=1, bias=False)
        with torch.no_grad():
            nn.init.dirac_(self.weight[:in_channels])


class ConvGroup(nn.Module):
    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.conv1 = _Conv(in_channels, out_channels)
        self.norm1 = _BatchNorm(out_channels)
        self.conv2 = _Conv(out_channels, out_channels)
        self.norm2 = _BatchNorm(out_channels)

    def forward(self, x):
        x = F.max_pool2d(self.conv1(x), 2)
        x = F.gelu(self.norm1(x))
        return F.gelu(self.norm2(self.conv2(x)))


class FastNetSSDH(nn.Module):
    """forward(images) -> (latent activations N x bits, class scores N x classes)."""

    def __init__(self, bits=48, widths=(64, 256, 256), classes=10, temperature=1.0, head="ssdh"):
        super().__init__()
        if head not in ("ssdh", "plain"):
            raise SSDHError(f"head {head!r}: expected ssdh or plain")
        self.whiten = nn.Conv2d(3, 24, 2, bias=True)
        self.groups = nn.Sequential(ConvGroup(24, widths[0]), ConvGroup(widths[0], widths[1]),
                                    ConvGroup(widths[1], widths[2]))
        self.latent = LatentLayer(widths[2], bits)
        self.classifier = nn.Linear(bits, classes, bias=False)
        self.temperature = temperature
        # head="plain": the published recipe's own head (pooled features -> linear -> x 1/9),
        # a reference for what the backbone reaches without the latent layer; the latent
        # activations are still computed (train them only through E2/E3, if at all).
        self.head_kind = head
        if head == "plain":
            self.head = nn.Linear(widths[2], classes, bias=False)

    @torch.no_grad()
    def init_whitening(self, images, eps=5e-4):
        """Set the first layer from the 2 x 2 patches of (normalised) training
        images: eigenvectors / sqrt(eigenvalue + eps), and their negations. The
        weights stay fixed; the bias is trained (for the first epochs)."""
        patches = images.unfold(2, 2, 1).unfold(3, 2, 1)  # N x C x H' x W' x 2 x 2
        patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, 3 * 2 * 2).double()
        patches = patches - patches.mean(dim=0)
        covariance = patches.T @ patches / len(patches)
        values, vectors = torch.linalg.eigh(covariance)
        filters = (vectors.T / torch.sqrt(values + eps)[:, None]).reshape(12, 3, 2, 2)
        self.whiten.weight.copy_(torch.cat([filters, -filters]).float())
        self.whiten.weight.requires_grad_(False)

    def features(self, x):
        x = F.gelu(self.whiten(x))
        x = self.groups(x)
        return F.adaptive_max_pool2d(x, 1).flatten(1)

    def forward(self, x):
        features = self.features(x)
        # The latent layer and the classifier in float32 even under autocast.
        with torch.autocast(x.device.type, enabled=False):
            latent = self.latent(features.float())
            if self.head_kind == "plain":
                return latent, self.head(features.float()) / 9
            return latent, self.classifier(latent) * self.temperature
