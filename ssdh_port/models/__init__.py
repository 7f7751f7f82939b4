"""Plain-PyTorch SSDH models, and their registry for the trainer
(ssdh_port.pipeline.trainer): each entry builds the net and carries the training
recipe it was tuned with (TrainConfig fields; a spec's [model] train table
replaces any of them).

    fastnet   FastNet-SSDH: the fast CIFAR-10 recipe on two CPU cores (models.fastnet)
    resnet18  a CIFAR ResNet-18 with the latent layer (models.resnet)
    lenet     Caffe's LeNet with the latent layer, on 1 x 28 x 28 images (models.ssdh)
"""
import dataclasses

from ssdh_port.errors import SSDHError
from ssdh_port.models.ssdh import LatentLayer, LeNetSSDH, SSDHLoss  # noqa: F401


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    name: str                 # as the results tables name it
    build: object             # (bits, widths, width, head, in_channels) -> nn.Module
    recipe: dict              # TrainConfig fields of its training recipe
    channels_last: bool       # NHWC whatever the precision (FastNet's convolutions are faster so)


def _widths(text):
    try:
        widths = tuple(int(w) for w in text.split(","))
    except ValueError:
        widths = ()
    if len(widths) != 3 or min(widths) <= 0:
        raise SSDHError(f"widths {text!r}: expected three positive channel counts like 128,384,384")
    return widths


def _fastnet(bits, widths, width, head, in_channels):
    from ssdh_port.models.fastnet import FastNetSSDH

    if in_channels != 3:
        raise SSDHError(f"FastNet-SSDH reads 3-channel images, not {in_channels}")
    return FastNetSSDH(bits=bits, widths=_widths(widths), head=head)


def _resnet18(bits, widths, width, head, in_channels):
    from ssdh_port.models.resnet import ResNetSSDH

    return ResNetSSDH(bits=bits, width=width, in_channels=in_channels)


def _lenet(bits, widths, width, head, in_channels):
    if in_channels != 1:
        raise SSDHError(f"LeNet-SSDH reads 1-channel 28 x 28 images, not {in_channels} channels")
    return LeNetSSDH(bits=bits)


MODELS = {
    # The published fast recipe (its facts; ssdh_port.pipeline.trainer's defaults).
    "fastnet": ModelEntry("FastNet", _fastnet, {}, channels_last=True),
    "resnet18": ModelEntry("ResNet-18", _resnet18, dict(
        epochs=30, batch_size=512, optimizer="sgd", lr=0.2, momentum=0.9, weight_decay=5e-4, schedule="warmup",
        label_smoothing=0.0, augment="pad-crop-flip", tta=0, precision="auto"), channels_last=False),
    "lenet": ModelEntry("LeNet", _lenet, dict(
        epochs=10, batch_size=64, optimizer="sgd", lr=0.01, momentum=0.9, weight_decay=5e-4, schedule="warmup",
        label_smoothing=0.0, augment="none", normalise="scale", tta=0, precision="fp32"), channels_last=False),
}


def build_model(arch, *, bits, widths="128,384,384", width=64, head="ssdh", in_channels=3):
    if arch not in MODELS:
        raise SSDHError(f"arch {arch!r}: expected one of {sorted(MODELS)}")
    if head != "ssdh" and arch != "fastnet":
        raise SSDHError(f"head {head!r}: only fastnet has the recipe's plain head")
    return MODELS[arch].build(bits, widths, width, head, in_channels)
