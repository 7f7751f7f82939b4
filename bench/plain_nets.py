"""The recipes' nets written by hand as plain nn.Modules (what a PyTorch user would
write without the Caffe path), for bench_caffe_overhead.py. Each returns
(latent activations, class scores); parameters come in the order of the
prototxt's learnable blobs, so the benchmark can give each its Caffe multipliers
and check that the shapes agree (the same net).
"""
from torch import nn

from ssdh_port.models.ssdh import LatentLayer, LeNetSSDH


class CifarQuickSSDH(nn.Module):
    """prototxt/cifar10_quick_ssdh: conv32-maxpool-relu-conv32-relu-avepool-conv64-relu-avepool-ip64
    + latent + classifier, Caffe's ceil pooling."""

    def __init__(self, bits=48, classes=10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, 5, padding=2), nn.MaxPool2d(3, 2, ceil_mode=True), nn.ReLU(inplace=True),
            nn.Conv2d(32, 32, 5, padding=2), nn.ReLU(inplace=True), nn.AvgPool2d(3, 2, ceil_mode=True),
            nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(inplace=True), nn.AvgPool2d(3, 2, ceil_mode=True),
            nn.Flatten(), nn.Linear(64 * 4 * 4, 64))
        self.latent = LatentLayer(64, bits)
        self.classifier = nn.Linear(bits, classes)

    def forward(self, images):
        latent = self.latent(self.features(images))
        return latent, self.classifier(latent)


class AlexNetSSDH(nn.Module):
    """prototxt/alexnet_ssdh48: CaffeNet's layers (grouped convolutions, LRN after
    pooling) + latent + classifier, on 227 x 227 crops."""

    def __init__(self, bits=48, classes=10):
        super().__init__()
        lrn = dict(size=5, alpha=1e-4, beta=0.75, k=1.0)
        self.features = nn.Sequential(
            nn.Conv2d(3, 96, 11, stride=4), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, ceil_mode=True),
            nn.LocalResponseNorm(**lrn),
            nn.Conv2d(96, 256, 5, padding=2, groups=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, ceil_mode=True),
            nn.LocalResponseNorm(**lrn),
            nn.Conv2d(256, 384, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(384, 384, 3, padding=1, groups=2), nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, 3, padding=1, groups=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, ceil_mode=True),
            nn.Flatten(), nn.Linear(256 * 6 * 6, 4096), nn.ReLU(inplace=True), nn.Dropout(0.5),
            nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Dropout(0.5))
        self.latent = LatentLayer(4096, bits)
        self.classifier = nn.Linear(bits, classes)

    def forward(self, images):
        latent = self.latent(self.features(images))
        return latent, self.classifier(latent)


PLAIN = {"lenet_ssdh": LeNetSSDH, "cifar10_quick_ssdh": CifarQuickSSDH, "alexnet_ssdh48": AlexNetSSDH}
