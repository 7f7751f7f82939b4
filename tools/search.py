#!/usr/bin/env python
"""Search a code file with query images through a trained SSDH net.

    python tools/search.py --prototxt deploy.prototxt --weights W --index codes.ssdh
        IMAGE [IMAGE ...] [--k 10] [--mean-file M | --mean-value V ...] [--scale S]

Prints, per image, the k nearest database items: id, Hamming distance, label.
"""
import argparse
import sys

import cv2

from ssdh_port.caffe.io import CaffeFileError
from ssdh_port.caffe.layers import LayerError
from ssdh_port.hashing.index import IndexFileError
from ssdh_port.search import ImageSearch


def add_model_arguments(parser):
    parser.add_argument("--prototxt", required=True)
    parser.add_argument("--weights", required=True)
    parser.add_argument("--index", required=True, help="code file of the database (tools/encode.py)")
    parser.add_argument("--blob", help="latent blob (default: found by name)")
    parser.add_argument("--mean-file")
    parser.add_argument("--mean-value", type=float, nargs="+")
    parser.add_argument("--scale", type=float, default=1.0)


def build(args, db=None):
    return ImageSearch(args.prototxt, args.weights, args.index, db, args.blob, args.mean_file,
                       args.mean_value, args.scale)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(parser)
    parser.add_argument("images", nargs="+")
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args(argv)
    try:
        engine = build(args)
        images = []
        for path in args.images:
            image = cv2.imread(path, cv2.IMREAD_UNCHANGED)
            if image is None:
                raise ValueError(f"{path}: cannot read the image")
            images.append(image)
        results = engine.search(images, args.k)
    except (CaffeFileError, LayerError, IndexFileError, ValueError) as err:
        print(f"search: {err}", file=sys.stderr)
        return 1
    for path, (ids, distances, labels) in zip(args.images, results):
        print(f"{path}:")
        for rank, (item, distance) in enumerate(zip(ids, distances), 1):
            label = f"  label {labels[rank - 1]}" if labels is not None else ""
            print(f"  {rank:3d}. id {item:8d}  distance {distance:3d}{label}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
