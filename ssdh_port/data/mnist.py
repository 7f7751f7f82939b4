"""Reader of the MNIST IDX files (gzip-compressed or not).

The format: a big-endian header (magic 0x00000803 for images, then the count,
rows and columns; magic 0x00000801 for labels, then the count) followed by the
uint8 data.
"""
import gzip
import os

import numpy as np

from ssdh_port.errors import SSDHError

IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049

# The idx files ship with the package (data/mnist in a checkout is a link to them).
DEFAULT_ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mnist_idx")

_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def _read_bytes(path):
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            return f.read()
    except (OSError, EOFError) as err:
        raise SSDHError(f"{path}: cannot read an MNIST IDX file ({err})") from err


def _header(path, raw, magic, dims):
    size = 4 * (1 + dims)
    if len(raw) < size:
        raise SSDHError(f"{path}: {len(raw)} bytes is too short for an IDX header")
    fields = np.frombuffer(raw[:size], dtype=">u4")
    if fields[0] != magic:
        raise SSDHError(
            f"{path}: magic number {int(fields[0])}, expected {magic} "
            f"({'images' if magic == IMAGES_MAGIC else 'labels'})"
        )
    shape = tuple(int(v) for v in fields[1:])
    expected = size + int(np.prod(shape))
    if len(raw) != expected:
        raise SSDHError(
            f"{path}: {len(raw)} bytes, but the header {shape} needs {expected} "
            "(truncated or corrupt file)"
        )
    return shape, size


def read_images(path):
    """IDX3 file -> uint8 array N x rows x cols."""
    raw = _read_bytes(path)
    shape, offset = _header(path, raw, IMAGES_MAGIC, 3)
    return np.frombuffer(bytearray(raw), dtype=np.uint8, offset=offset).reshape(shape)


def read_labels(path):
    """IDX1 file -> uint8 array N."""
    raw = _read_bytes(path)
    shape, offset = _header(path, raw, LABELS_MAGIC, 1)
    return np.frombuffer(bytearray(raw), dtype=np.uint8, offset=offset).reshape(shape)


def load_split(split, root=DEFAULT_ROOT):
    """(images N x 28 x 28 uint8, labels N uint8) of split "train" or "test"."""
    if split not in _FILES:
        raise SSDHError(f"MNIST split must be one of {sorted(_FILES)}, got {split!r}")
    image_file, label_file = (os.path.join(root, name) for name in _FILES[split])
    images, labels = read_images(image_file), read_labels(label_file)
    if len(images) != len(labels):
        raise SSDHError(
            f"{image_file} holds {len(images)} images but {label_file} {len(labels)} labels"
        )
    return images, labels
