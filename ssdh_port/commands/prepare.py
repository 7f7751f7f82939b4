"""Prepare datasets as Caffe list files and Datum databases.

    ssdh prepare mnist --out-dir runs/mnist [--idx-dir data/mnist]
    ssdh prepare cifar10-jpg ARCHIVE --out-dir runs/cifar10 [--sizes 32 256] [--layout bgr|rgb]
    ssdh prepare cifar10-batches cifar-10-python.tar.gz|cifar-10-binary.tar.gz --out-dir DIR
    ssdh prepare cifar10-dnnh ARCHIVE --out-dir runs/cifar10_dnnh [--triplets 50000] [--seed 0]
    ssdh prepare folder ROOT --list list.txt

cifar10-jpg reads the authors' archive (cvprw15-cifar10-dataset-jpg.tar.gz):
train in the authors' order, test in canonical order, LMDBs at 32 x 32 and at
each other size given (resized like the authors' 256 x 256 AlexNet input), and
a mean file per size. cifar10-dnnh builds DNNH's data from the same archive:
1,000 seeded queries (100 per class), the other 59,000 images as the pool,
seeded triplets over the pool, 9-channel triplet / query / pool databases and
their mean, and the label files caffe-dnnh's evaluation reads
(ssdh_port.data.dnnh says exactly how).
"""

from ssdh_port import cli
from ssdh_port.data import datasets


def main(argv=None):
    parser = cli.parser(__doc__)
    sub = parser.add_subparsers(dest="dataset", required=True)
    p = sub.add_parser("mnist")
    cli.add_out_dir(p, "folder of the databases", required=True)
    p.add_argument("--idx-dir", default=datasets.mnist.DEFAULT_ROOT)
    p = sub.add_parser("cifar10-jpg")
    p.add_argument("archive")
    cli.add_out_dir(p, "folder of the databases", required=True)
    p.add_argument("--sizes", type=int, nargs="+", default=[32])
    p.add_argument("--layout", default="bgr", choices=("bgr", "rgb"),
                   help="bgr: convert_imageset records; rgb: convert_cifar_data's RGB planar bytes")
    p = sub.add_parser("cifar10-batches")
    p.add_argument("archive")
    cli.add_out_dir(p, "folder of the databases", required=True)
    p = sub.add_parser("cifar10-dnnh")
    p.add_argument("archive")
    cli.add_out_dir(p, "folder of the databases", required=True)
    p.add_argument("--triplets", type=int, default=50000, help="triplets to sample (default 50,000)")
    p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("folder")
    p.add_argument("root")
    p.add_argument("--list", required=True)
    for name in ("mnist", "cifar10-jpg", "cifar10-batches", "cifar10-dnnh"):
        sub.choices[name].add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    if args.dataset == "mnist":
        result = datasets.prepare_mnist(args.out_dir, args.idx_dir, args.overwrite)
    elif args.dataset == "cifar10-jpg":
        result = datasets.prepare_cifar10_jpg(args.archive, args.out_dir, tuple(args.sizes),
                                              args.overwrite, args.layout)
    elif args.dataset == "cifar10-dnnh":
        from ssdh_port.data.dnnh import prepare_cifar10_dnnh

        result = prepare_cifar10_dnnh(args.archive, args.out_dir, args.triplets, args.seed, overwrite=args.overwrite)
    elif args.dataset == "cifar10-batches":
        result = datasets.prepare_cifar10_batches(args.archive, args.out_dir, args.overwrite)
    else:
        classes, count = datasets.folder_to_list(args.root, args.list)
        result = {"list": args.list, "classes": len(classes), "images": count}
    for key, value in result.items():
        print(f"{key}: {value}")
    return 0

