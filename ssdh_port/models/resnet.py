"""A modern backbone for SSDH trained from scratch: the CIFAR variant of
ResNet-18 (He et al. 2016; 3 x 3 stem, no max-pool, four stages of two basic
blocks, batch norm) with the SSDH latent layer and classifier on top of the
pooled features. The latent layer and classifier run in float32 even under
autocast, so that the SSDH losses see float32 activations.
"""
import torch
from torch import nn
from torch.nn import functional as F

from ssdh_port.fillers import fill_
from ssdh_port.models.ssdh import LatentLayer


class BasicBlock(nn.Module):
    def __init__(self, in_channels, channels, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, channels, 1, stride, bias=False),
                                          nn.BatchNorm2d(channels))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x), inplace=True)


class ResNetSSDH(nn.Module):
    """ResNet-18 (CIFAR) + latent layer of `bits` sigmoid units + classifier.

    width: channels of the first stage (64 in ResNet-18; the stages double it).
    forward(images N x C x H x W, normalised) returns (latent N x bits, scores).
    """

    def __init__(self, bits=48, classes=10, width=64, in_channels=3, blocks=(2, 2, 2, 2)):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        stages, channels = [], width
        for i, count in enumerate(blocks):
            out = width * 2 ** i
            for j in range(count):
                stages.append(BasicBlock(channels, out, 2 if (i > 0 and j == 0) else 1))
                channels = out
        self.stages = nn.Sequential(*stages)
        self.features_dim = channels
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        # Zero-init the last norm of each block: every block starts as the identity.
        for block in self.stages:
            nn.init.zeros_(block.bn2.weight)
        self.latent = LatentLayer(channels, bits)
        self.classifier = nn.Linear(bits, classes)
        fill_(self.classifier.weight, "gaussian", std=0.2)
        fill_(self.classifier.bias, "constant", value=0.0)

    def features(self, images):
        return torch.flatten(F.adaptive_avg_pool2d(self.stages(self.stem(images)), 1), 1)

    def forward(self, images):
        features = self.features(images)
        with torch.autocast(images.device.type, enabled=False):
            latent = self.latent(features.float())
            return latent, self.classifier(latent)
