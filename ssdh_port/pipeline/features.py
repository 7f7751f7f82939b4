"""Feature extraction from a CaffeNet, as Caffe's extract_features does: batches
from the net's own data layers, or from an outside source fed to its first input
blob, with the chosen blobs collected and concatenated along the first axis.

Outside sources: an .npy array, an .npz with one array per input blob, a Datum
database (LMDB/LevelDB) or an image list file ('path label' per line), the
latter two transformed by a DataTransformer built from the given
TransformationParameter.
"""
import os
import sys

import numpy as np
import torch

from ssdh_port.caffe.data_layers import read_image
from ssdh_port.caffe.layers import LayerError
from ssdh_port.caffe.proto import caffe_pb2 as pb
from ssdh_port.data.db import open_db
from ssdh_port.data.imageset import read_list
from ssdh_port.data.transformer import DataTransformer
from ssdh_port.precision import set_tf32


def array_batches(arrays, batch_size):
    """{blob: array} -> batches of {blob: tensor}; all arrays share the first axis."""
    sizes = {len(a) for a in arrays.values()}
    if len(sizes) != 1:
        raise ValueError(f"input arrays have different lengths {sorted(sizes)}")
    total = sizes.pop()
    for start in range(0, total, batch_size):
        yield {k: torch.from_numpy(np.ascontiguousarray(v[start:start + batch_size]))
               for k, v in arrays.items()}, None


def db_batches(path, batch_size, transform_param, backend="lmdb", resize=None):
    """Datum database or image list -> batches (data tensor, labels array)."""
    transformer = DataTransformer(transform_param or pb.TransformationParameter(), "TEST")
    if os.path.isfile(path):
        entries = read_list(path)
        root = os.path.dirname(path)
        resize = resize or (0, 0)

        def load(i):
            name, label = entries[i]
            return read_image(os.path.join(root, name), resize[0], resize[1]), label
        total = len(entries)
    else:
        db = open_db(path, backend)
        total = len(db)

        def load(i):
            return db.read(i, transformer.force_color, transformer.force_gray)
    for start in range(0, total, batch_size):
        records = [load(i) for i in range(start, min(total, start + batch_size))]
        data = transformer(torch.from_numpy(np.stack([r[0] for r in records])))
        yield data, np.array([r[1] for r in records])


def extract(net, blobs, batches=None, iterations=None, device="cpu", progress=True):
    """Run net over batches (or its own data layers for `iterations` batches) and
    return ({blob: concatenated array}, labels array or None). On a GPU the
    convolutions run in full float32, as Caffe's do (see ssdh_port.precision)."""
    if torch.device(device).type == "cuda":
        set_tf32(False)
    net = net.to(device).eval()
    collected = {name: [] for name in blobs}
    labels = []
    missing = [b for b in blobs if b not in net.blob_shapes]
    if missing:
        raise LayerError(f"blob(s) {missing} not in net '{net.name}' (blobs: {list(net.blob_shapes)})")
    with torch.no_grad():
        if batches is None:
            if not iterations:
                raise ValueError("extract: give batches or a number of iterations for the data layers")
            batches = ((None, None) for _ in range(iterations))
        done = 0
        for feed, batch_labels in batches:
            if feed is None:
                out = net()
                if "label" in out:
                    labels.append(out["label"].cpu().numpy())
            else:
                feed = feed if isinstance(feed, dict) else {net.input_names[0]: feed}
                out = net(**feed)
                if batch_labels is not None:
                    labels.append(np.asarray(batch_labels))
            for name in blobs:
                collected[name].append(out[name].detach().float().cpu().numpy())
            done += 1
            if progress and done % 10 == 0:
                print(f"\rextracted {done} batches", end="", file=sys.stderr, flush=True)
    if progress:
        print(f"\rextracted {done} batches", file=sys.stderr, flush=True)
    result = {name: np.concatenate(parts) for name, parts in collected.items()}
    return result, (np.concatenate(labels) if labels else None)
