"""Search a code file with query images through a trained SSDH net.

    ssdh search --index codes.ssdh | --milvus URI [--collection C] IMAGE [IMAGE ...] [--k 10]
        [--prototxt deploy.prototxt --weights W --blob B --mean-file M | --mean-value V ... --scale S]

The net and its preprocessing come from the model card beside the code file
(<codes>.card.json, written by ssdh encode); the flags override it (a value
that differs from the card is a warning). Prints, per image, the k nearest
database items: id, Hamming distance, label.
"""

from ssdh_port import cli
from ssdh_port.errors import SSDHError
from ssdh_port.service.search import read_images


def main(argv=None):
    parser = cli.parser(__doc__)
    cli.add_model_arguments(parser)
    parser.add_argument("images", nargs="+")
    cli.add_k(parser, 10)
    args = parser.parse_args(argv)
    if args.k < 1:
        raise SSDHError(f"--k must be at least 1, got {args.k}")
    engine = cli.search_engine(args)
    for path, hits in zip(args.images, engine.search(read_images(args.images), args.k)):
        print(f"{path}:")
        for rank, hit in enumerate(hits, 1):
            label = f"  label {hit.label}" if hit.label is not None else ""
            print(f"  {rank:3d}. id {hit.id:8d}  distance {hit.distance:3d}{label}")
    return 0

