#!/usr/bin/env python
"""Search a code file with query images through a trained SSDH net.

    python tools/search.py --prototxt deploy.prototxt --weights W --index codes.ssdh
        IMAGE [IMAGE ...] [--k 10] [--mean-file M | --mean-value V ...] [--scale S]

Prints, per image, the k nearest database items: id, Hamming distance, label.
"""
import argparse
import sys

from ssdh_port import cli
from ssdh_port.search import ImageSearch, read_images


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_model_arguments(parser)
    parser.add_argument("images", nargs="+")
    cli.add_k(parser, 10)
    args = parser.parse_args(argv)
    engine = ImageSearch(args.prototxt, args.weights, args.index, None, args.blob, args.mean_file,
                         args.mean_value, args.scale)
    results = engine.search(read_images(args.images), args.k)
    for path, (ids, distances, labels) in zip(args.images, results):
        print(f"{path}:")
        for rank, (item, distance) in enumerate(zip(ids, distances), 1):
            label = f"  label {labels[rank - 1]}" if labels is not None else ""
            print(f"  {rank:3d}. id {item:8d}  distance {distance:3d}{label}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
