#!/usr/bin/env python
"""Encode images to binary codes with a trained SSDH net and write a code file.

    python tools/encode.py --prototxt deploy.prototxt --weights W --input DB|list|.npy|.npz
        --out codes.ssdh [--blob latent_sigmoid] [--features fc7[,fc9] [--features-out fc7.npy]]
        [extract_features.py's source options]

The latent activations (default blob: the Sigmoid output named like
'*latent*sigmoid*', else the last Sigmoid top) are thresholded at 0.5 (0.5 gives
0), packed (ssdh_port.ops.pack_bits layout) and saved with ids 0..N-1 and the
labels of the source in the documented code file (ssdh_port.hashing.index).
Degenerate codes are reported loudly (activations near 0.5 everywhere, constant
bits, all codes equal) with the bit balance.
"""
import argparse
import json
import sys

import numpy as np
import torch

from extract_features import add_source_arguments, batches_for, build_net
from ssdh_port import ops
from ssdh_port.caffe.io import CaffeFileError, atomic_write
from ssdh_port.caffe.layers import LayerError
from ssdh_port.data.datum import DatumError
from ssdh_port.data.db import LMDBError
from ssdh_port.features import extract
from ssdh_port.hashing.codes import code_report
from ssdh_port.hashing.index import HammingIndex
from ssdh_port.search import find_latent_blob


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_source_arguments(parser)
    parser.add_argument("--out", required=True, help="code file to write (.ssdh)")
    parser.add_argument("--blob", help="latent activations blob (default: found by name)")
    parser.add_argument("--features", help="also keep these blobs (comma-separated, e.g. fc7 for "
                        "re-ranking): <out>.<blob>.npy each")
    parser.add_argument("--features-out", help=".npy file for a single --features blob")
    args = parser.parse_args(argv)
    try:
        net, device = build_net(args)
        blob = args.blob or find_latent_blob(net)
        extra = args.features.split(",") if args.features else []
        if args.features_out and len(extra) != 1:
            raise ValueError("--features-out goes with a single --features blob")
        wanted = [blob] + extra
        arrays, labels = extract(net, wanted, batches_for(args, net), args.iterations, device)
        activations = arrays[blob].reshape(len(arrays[blob]), -1)
        report = code_report(activations)
        index = HammingIndex(activations.shape[1])
        index.add(ops.pack_bits(torch.from_numpy(activations)), labels=labels)
        index.save(args.out)
        for name in extra:
            with atomic_write(args.features_out or args.out + f".{name}.npy") as f:
                np.save(f, arrays[name].reshape(len(activations), -1))
    except (CaffeFileError, LayerError, LMDBError, DatumError, ValueError) as err:
        print(f"encode: {err}", file=sys.stderr)
        return 1
    print(f"encoded {report['items']} items to {report['bits']}-bit codes from blob '{blob}': "
          f"{args.out}")
    print(f"bit balance: mean {report['mean_bit_balance']:.3f} (per bit "
          f"{np.round(report['bit_balance'], 2).tolist()}); {report['distinct_codes']} distinct codes")
    for warning in report["warnings"]:
        print(f"WARNING: {warning}", file=sys.stderr)
    with open(args.out + ".report.json", "w") as f:
        json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
