"""Caffe's convert_imageset: images listed in LISTFILE ('relative/path label' per
line, paths relative to ROOT) -> an LMDB (or LevelDB) of Datum records (keys
'%08d_<path>').

    ssdh imageset ROOT LISTFILE DB [--resize H W]
        [--shuffle] [--gray] [--encoded] [--encode_type jpg|png] [--check_size] [--backend lmdb|leveldb]

Raw records hold CHW uint8 BGR bytes (1 channel with --gray); --encoded stores
the image file (re-encoded when resized or when --encode_type differs). The DB is
written to a temporary folder and renamed when complete.
"""

from ssdh_port import cli
from ssdh_port.data.imageset import convert_imageset


def main(argv=None):
    parser = cli.parser(__doc__)
    parser.add_argument("root")
    parser.add_argument("listfile")
    parser.add_argument("db")
    cli.add_resize(parser)
    parser.add_argument("--shuffle", action="store_true", help="shuffle the list order")
    parser.add_argument("--seed", type=int, default=None, help="seed of --shuffle")
    parser.add_argument("--gray", action="store_true", help="read images as gray")
    parser.add_argument("--encoded", action="store_true", help="store encoded images")
    parser.add_argument("--encode_type", default="", choices=("", "jpg", "png"))
    parser.add_argument("--check_size", action="store_true", help="require one image size")
    parser.add_argument("--backend", default="lmdb", choices=("lmdb", "leveldb"))
    parser.add_argument("--overwrite", action="store_true", help="replace an existing DB")
    parser.add_argument("--strict", action="store_true",
                        help="fail on an unreadable image (default: log it and skip it, as Caffe does)")
    args = parser.parse_args(argv)
    height, width = cli.resize_of(parser, args) or (0, 0)
    count = convert_imageset(
        args.root, args.listfile, args.db, height, width,
        args.shuffle, args.gray, args.encoded, args.encode_type, args.check_size,
        args.seed, args.overwrite, args.backend, args.strict)
    print(f"wrote {count} records to {args.db}")
    return 0

