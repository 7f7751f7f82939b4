"""Caffe's compute_image_mean: the mean image of an LMDB of Datum records,
written as a .binaryproto (1 x C x H x W, legacy num/channels/height/width).

    ssdh mean DB mean.binaryproto [--backend lmdb|leveldb]
"""

from ssdh_port import cli
from ssdh_port.data.imageset import write_image_mean


def main(argv=None):
    parser = cli.parser(__doc__)
    parser.add_argument("db")
    parser.add_argument("output")
    parser.add_argument("--backend", default="lmdb", choices=("lmdb", "leveldb"))
    args = parser.parse_args(argv)
    mean = write_image_mean(args.db, args.output, args.backend)
    for c, value in enumerate(mean.mean(axis=(0, 2, 3))):
        print(f"mean_value channel [{c}]: {value:g}")
    print(f"wrote {args.output}")
    return 0

