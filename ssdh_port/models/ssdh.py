"""SSDH in plain PyTorch: the latent layer and the objective (docs/SPEC.md section 1),
for users who do not start from a prototxt.

    a = sigmoid(features @ W_H + b_H)     N x K latent activations
    scores = classifier(a)
    loss = alpha * E1 + beta * E2 + gamma * E3

E2 is ops.forcing_binary_loss, whose value is already the negated distance
from 0.5 (as the original K1_EuclideanLoss reports it), so the paper's
"alpha*E1 - beta*E2 + gamma*E3" reads with a plus sign here.
"""
import torch
from torch import nn
from torch.nn import functional as F

from ssdh_port import ops
from ssdh_port.fillers import fill_


class LatentLayer(nn.Module):
    """InnerProduct to K units + Sigmoid; Caffe's SSDH init: gaussian std 0.01, bias 0."""

    def __init__(self, in_features, bits, std=0.01):
        super().__init__()
        self.linear = nn.Linear(in_features, bits)
        fill_(self.linear.weight, "gaussian", std=std)
        fill_(self.linear.bias, "constant", value=0.0)

    def forward(self, features):
        return torch.sigmoid(self.linear(features.flatten(1)))


class SSDHLoss(nn.Module):
    """alpha * E1 + beta * E2 + gamma * E3; returns (total, dict of the terms).

    E1 is softmax cross-entropy for class ids (N) and the max-margin loss for
    multi-label targets (N x M, 0/1 with an optional mask, or +1/-1/0).
    """

    def __init__(self, alpha=1.0, beta=1.0, gamma=1.0, p=2, multilabel=False):
        super().__init__()
        self.alpha, self.beta, self.gamma, self.p = alpha, beta, gamma, p
        self.multilabel = multilabel

    def forward(self, latent, scores, targets, mask=None):
        if self.multilabel:
            e1 = ops.max_margin_loss(scores, targets, self.p, mask=mask)
        else:
            e1 = F.cross_entropy(scores, targets)
        # E2 and E3 from one fused op (one pass forward, one kernel backward).
        latent_terms = ops.latent_losses(latent, self.p)
        total = self.alpha * e1 + self.beta * latent_terms[0] + self.gamma * latent_terms[1]
        terms = {"classification": e1}
        if self.beta:
            terms["forcing_binary"] = latent_terms[0]
        if self.gamma:
            terms["fire_rate"] = latent_terms[1]
        return total, terms


class LeNetSSDH(nn.Module):
    """Caffe's LeNet (conv20-pool-conv50-pool-ip500-relu) + latent layer + classifier.

    Inputs are N x 1 x 28 x 28 in [0, 1] (Caffe's scale 1/256 of the raw bytes).
    forward returns (latent activations N x K, class scores N x classes).
    """

    def __init__(self, bits=48, classes=10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 20, 5), nn.MaxPool2d(2, 2),
            nn.Conv2d(20, 50, 5), nn.MaxPool2d(2, 2),
            nn.Flatten(), nn.Linear(800, 500), nn.ReLU(inplace=True),
        )
        for module in self.features:
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                fill_(module.weight, "xavier")
                fill_(module.bias, "constant", value=0.0)
        self.latent = LatentLayer(500, bits)
        self.classifier = nn.Linear(bits, classes)
        fill_(self.classifier.weight, "gaussian", std=0.2)
        fill_(self.classifier.bias, "constant", value=0.0)

    def forward(self, images):
        latent = self.latent(self.features(images))
        return latent, self.classifier(latent)
