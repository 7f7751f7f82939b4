"""Feature extraction from a CaffeNet, as Caffe's extract_features does: batches
from the net's own data layers, or from an outside source fed to its first input
blob, with the chosen blobs collected and concatenated along the first axis.
Scalar tops (losses, accuracies) are per batch: they come back as a 1-D array of
one value per batch.

Outside sources: an .npy array, an .npz with one array per input blob, a Datum
database (LMDB/LevelDB) or an image list file ('path label' per line), the
latter two transformed by a DataTransformer built from the given
TransformationParameter.
"""
import os

import numpy as np
import torch

from ssdh_port.caffe.data_layers import read_image
from ssdh_port.caffe.layers import LayerError
from ssdh_port.caffe.net import CaffeNet
from ssdh_port.caffe.proto import caffe_pb2 as pb
from ssdh_port.data.db import open_db
from ssdh_port.data.imageset import read_list
from ssdh_port.data.transformer import DataTransformer
from ssdh_port.device import resolve_device
from ssdh_port.errors import SSDHError
from ssdh_port.precision import tf32_mode
from ssdh_port.progress import bar, logger


def _owned(total, batch_size, shard):
    """The batch starts this shard (rank, world) encodes: batches rank, rank + world, ..."""
    rank, world = shard or (0, 1)
    return [start for b, start in enumerate(range(0, total, batch_size)) if b % world == rank]


def array_batches(arrays, batch_size, shard=None):
    """{blob: array} -> batches of {blob: tensor}; all arrays share the first axis."""
    sizes = {len(a) for a in arrays.values()}
    if len(sizes) != 1:
        raise SSDHError(f"input arrays have different lengths {sorted(sizes)}")
    total = sizes.pop()
    for start in _owned(total, batch_size, shard):
        yield {k: torch.from_numpy(np.ascontiguousarray(v[start:start + batch_size]))
               for k, v in arrays.items()}, None


def db_batches(path, batch_size, transform_param, backend="lmdb", resize=None, shard=None):
    """Datum database or image list -> batches (data tensor, labels array); with shard
    (rank, world), only batches rank, rank + world, ... (the others are not read)."""
    transformer = DataTransformer(transform_param or pb.TransformationParameter(), "TEST")
    if os.path.isfile(path):
        entries = read_list(path)
        root = os.path.dirname(path)
        resize = resize or (0, 0)

        def load(i):
            name, label = entries[i]
            return read_image(os.path.join(root, name), resize[0], resize[1],
                              is_color=not transformer.force_gray), label
        total = len(entries)
    else:
        db = open_db(path, backend)
        total = len(db)

        def load(i):
            return db.read(i, transformer.force_color, transformer.force_gray)
    for start in _owned(total, batch_size, shard):
        records = [load(i) for i in range(start, min(total, start + batch_size))]
        data = transformer(torch.from_numpy(np.stack([r[0] for r in records])))
        yield data, np.array([r[1] for r in records])


def extract(net, blobs, batches=None, iterations=None, device="cpu", progress=True, precision="fp32"):
    """Run net over batches (or its own data layers for `iterations` batches) and
    return ({blob: concatenated array}, labels array or None). On a GPU the
    convolutions run in full float32, as Caffe's do (see ssdh_port.precision);
    precision="bf16" runs the net under bfloat16 autocast instead (opt-in: faster on
    CPUs with BF16 units and on GPUs, codes may differ where an activation is near 0.5)."""
    if precision not in ("fp32", "bf16"):
        raise SSDHError(f"precision {precision!r}: expected fp32 or bf16")
    device = resolve_device(device)
    net = net.to(device).eval()
    collected = {name: [] for name in blobs}
    labels = []
    missing = [b for b in blobs if b not in net.blob_shapes]
    if missing:
        raise LayerError(f"blob(s) {missing} not in net '{net.name}' (blobs: {list(net.blob_shapes)})")
    with torch.no_grad(), tf32_mode(False), torch.autocast(device.type, dtype=torch.bfloat16,
                                                          enabled=precision == "bf16"):
        if batches is None:
            if not iterations:
                raise SSDHError("extract: give batches or a number of iterations for the data layers")
            batches = ((None, None) for _ in range(iterations))
        ticker = bar(total=iterations, desc="extract", unit="batch", disable_if=not progress)
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
            ticker.update(1)
    ticker.close()
    result = {name: np.concatenate([np.atleast_1d(p) for p in parts]) for name, parts in collected.items()}
    return result, (np.concatenate(labels) if labels else None)


def load_net(prototxt, weights=None, batch_size=None):
    """A TEST-phase CaffeNet with weights; Input blobs take batch_size as their
    first dimension when it is given (a deploy net fed from an outside source)."""
    net = CaffeNet(prototxt, weights=weights)
    if net.input_names and batch_size:
        shapes = {name: (batch_size,) + tuple(net.blob_shapes[name][1:]) for name in net.input_names}
        net = CaffeNet(prototxt, weights=weights, input_shapes=shapes)
    if weights:
        report = net.load_report
        logger.info("weights %s: loaded %s; left to fillers %s", weights, report["loaded"],
                    report["not_in_weights"])
    return net


def batch_source(source, net, batch_size, transform=None, backend="lmdb", resize=None, shard=None):
    """Batches for net from source: None (the net's own data layers), an .npy
    array (fed to the first input blob), an .npz (one array per input blob), a
    Datum database folder or an image list file (transformed by `transform`; its
    images read in gray when the net's input has one channel)."""
    if source is None:
        return None
    source = os.fspath(source)
    if transform is not None and net.input_names and not transform.force_color:
        shape = net.blob_shapes[net.input_names[0]]
        if len(shape) == 4 and shape[1] == 1 and not transform.force_gray:
            # Images and encoded records read with the channels the net wants.
            gray = type(transform)()
            gray.CopyFrom(transform)
            gray.force_gray = True
            transform = gray
    if source.endswith(".npy"):
        return array_batches({net.input_names[0]: _load_array(source)}, batch_size, shard)
    if source.endswith(".npz"):
        arrays = dict(np.load(source))
        unknown = [k for k in arrays if k not in net.input_names]
        if unknown:
            raise SSDHError(f"{source}: arrays {unknown} match no input blob {net.input_names}")
        return array_batches(arrays, batch_size, shard)
    return db_batches(source, batch_size, transform, backend, resize, shard)


def _load_array(path):
    try:
        return np.load(path)
    except (OSError, ValueError) as err:
        raise SSDHError(f"{path}: not a readable .npy array ({err})") from None
