"""caffe-dnnh's convert_triplet_imageset: a list of triplets ('anchor similar
dissimilar' image paths per line, relative to ROOT) -> a database of 9-channel
Datum records (anchor, similar, dissimilar; BGR CHW), label 1, keys
'%08d_<anchor path>', in list order.

    ssdh triplets ROOT/ LISTFILE DB N [--resize H W]
        [--gray] [--backend lmdb|leveldb] [--overwrite]

N: how many triplets to write (the first N lines). A bad line, an unreadable
image or images of different sizes are errors naming LISTFILE:line; the
database is written to a temporary folder and renamed when complete, so a
failed run leaves none.
"""

from ssdh_port import cli
from ssdh_port.data.imageset import convert_triplet_imageset


def main(argv=None):
    parser = cli.parser(__doc__)
    parser.add_argument("root")
    parser.add_argument("listfile")
    parser.add_argument("db")
    parser.add_argument("n", type=int, help="number of triplets to write (the first N lines)")
    cli.add_resize(parser)
    parser.add_argument("--gray", action="store_true", help="read images as gray (3 channels per triplet)")
    parser.add_argument("--backend", default="lmdb", choices=("lmdb", "leveldb"))
    parser.add_argument("--overwrite", action="store_true", help="replace an existing DB")
    args = parser.parse_args(argv)
    height, width = cli.resize_of(parser, args) or (0, 0)
    count = convert_triplet_imageset(args.root, args.listfile, args.db, args.n, height, width,
                                     args.gray, args.overwrite, args.backend)
    print(f"wrote {count} triplets to {args.db}")
    return 0

