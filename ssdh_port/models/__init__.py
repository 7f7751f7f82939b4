"""Plain-PyTorch SSDH models."""
from ssdh_port.models.ssdh import LatentLayer, LeNetSSDH, SSDHLoss  # noqa: F401
