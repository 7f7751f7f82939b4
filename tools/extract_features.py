#!/usr/bin/env python
"""Extract blobs of a Caffe net, like Caffe's extract_features.

    python tools/extract_features.py --prototxt P [--weights W(.caffemodel|.pt)]
        [--input (DB | list.txt | .npy | .npz)] --blobs latent,fc9|all --out feats.npz
        [--batch-size B] [--iterations N] [--gpu N]
        [--mean-file M] [--mean-value V ...] [--scale S] [--crop-size C] [--resize H W]
        [--backend lmdb|leveldb]

Without --input, the net's own data layers (Data / ImageData / HDF5Data) feed it
for --iterations batches, as Caffe's TEST phase would (wrapping around at the end
of the DB). With a DB or image list, the records are transformed with the
--mean-file/--mean-value/--scale/--crop-size options (Caffe's order) and fed to
the first input blob. The .npz holds one array per blob under its Caffe name
(batches concatenated) and `labels` when the source has them; it is written to a
temporary file and renamed.
"""
import argparse
import sys

import numpy as np

from ssdh_port.caffe.io import CaffeFileError, atomic_write
from ssdh_port.caffe.layers import LayerError
from ssdh_port.caffe.net import CaffeNet
from ssdh_port.caffe.proto import caffe_pb2 as pb
from ssdh_port.data.db import LMDBError
from ssdh_port.data.datum import DatumError
from ssdh_port.features import array_batches, db_batches, extract


def add_source_arguments(parser):
    parser.add_argument("--prototxt", required=True)
    parser.add_argument("--weights", help=".caffemodel, .caffemodel.h5 or .pt")
    parser.add_argument("--input", help="DB folder, image list, .npy or .npz (default: the net's data layers)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--iterations", type=int, default=None,
                        help="batches to run with the net's own data layers")
    parser.add_argument("--gpu", type=int, default=None)
    parser.add_argument("--backend", default="lmdb", choices=("lmdb", "leveldb"))
    parser.add_argument("--mean-file")
    parser.add_argument("--mean-value", type=float, nargs="+")
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--crop-size", type=int, default=0)
    parser.add_argument("--resize", type=int, nargs=2, metavar=("H", "W"))


def batches_for(args, net):
    """The batch source the arguments describe (None: the net's data layers)."""
    if args.input is None:
        if not args.iterations:
            raise ValueError("without --input, give --iterations for the net's data layers")
        return None
    if args.input.endswith(".npy"):
        return array_batches({net.input_names[0]: np.load(args.input)}, args.batch_size)
    if args.input.endswith(".npz"):
        arrays = dict(np.load(args.input))
        unknown = [k for k in arrays if k not in net.input_names]
        if unknown:
            raise ValueError(f"{args.input}: arrays {unknown} match no input blob {net.input_names}")
        return array_batches(arrays, args.batch_size)
    transform = pb.TransformationParameter(scale=args.scale, crop_size=args.crop_size)
    if args.mean_file:
        transform.mean_file = args.mean_file
    transform.mean_value.extend(args.mean_value or [])
    return db_batches(args.input, args.batch_size, transform, args.backend, args.resize)


def build_net(args):
    import torch

    shapes = None
    net = CaffeNet(args.prototxt, weights=args.weights)
    if net.input_names and args.input is not None:
        # Input blobs take the batch size of the run.
        shapes = {name: (args.batch_size,) + net.blob_shapes[name][1:] for name in net.input_names}
        net = CaffeNet(args.prototxt, weights=args.weights, input_shapes=shapes)
    if args.weights:
        report = net.load_report
        print(f"weights {args.weights}: loaded {report['loaded']}; left to fillers "
              f"{report['not_in_weights']}", file=sys.stderr)
    device = f"cuda:{args.gpu}" if args.gpu is not None else "cpu"
    if args.gpu is not None and not torch.cuda.is_available():
        raise ValueError(f"--gpu {args.gpu} given but CUDA is not available")
    return net, device


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_source_arguments(parser)
    parser.add_argument("--blobs", required=True, help="comma-separated blob names, or all")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    try:
        net, device = build_net(args)
        blobs = list(net.blob_shapes) if args.blobs == "all" else args.blobs.split(",")
        features, labels = extract(net, blobs, batches_for(args, net), args.iterations, device)
        if labels is not None:
            features["labels"] = labels
        with atomic_write(args.out) as f:
            np.savez(f, **features)
    except (CaffeFileError, LayerError, LMDBError, DatumError, ValueError) as err:
        print(f"extract_features: {err}", file=sys.stderr)
        return 1
    for name, array in features.items():
        print(f"{name}: {array.shape}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
