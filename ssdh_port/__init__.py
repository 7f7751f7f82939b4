"""SSDH (supervised semantics-preserving deep hashing) in PyTorch, faithful to
the original Caffe code. Importing the package loads the native operators
(torch.ops.ssdh.*); their Python entry points are in ssdh_port.ops."""
from ssdh_port import _native  # noqa: F401  (registers torch.ops.ssdh)
from ssdh_port import ops  # noqa: F401

__version__ = "0.2.0"
