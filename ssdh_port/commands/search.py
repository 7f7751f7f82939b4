"""Search a code file with query images through a trained SSDH net.

    ssdh search --index codes.ssdh | --milvus URI [--collection C] IMAGE [IMAGE ...] [--k 10]
        [--prototxt deploy.prototxt --weights W --blob B --mean-file M | --mean-value V ... --scale S]

The net and its preprocessing come from the model card beside the code file
(<codes>.card.json, written by ssdh encode); the flags override it (a value
that differs from the card is a warning). Prints, per image, the k nearest
database items: id, Hamming distance, label.

--spatial searches a patch code file (ssdh encode --patches L): each query image is
coded as its patches at the same levels, and images are ranked by the mean over the
query's patches of the minimum Hamming distance to their patches.
"""

from ssdh_port import cli
from ssdh_port.errors import SSDHError
from ssdh_port.service.search import read_images


def main(argv=None):
    parser = cli.parser(__doc__)
    cli.add_model_arguments(parser)
    parser.add_argument("images", nargs="+")
    cli.add_k(parser, 10)
    parser.add_argument("--spatial", type=int, default=0, metavar="L",
                        help="spatial search of a patch code file, query patches at levels 1..L")
    args = parser.parse_args(argv)
    if args.k < 1:
        raise SSDHError(f"--k must be at least 1, got {args.k}")
    if args.spatial:
        return _spatial(args)
    engine = cli.search_engine(args)
    for path, hits in zip(args.images, engine.search(read_images(args.images), args.k)):
        print(f"{path}:")
        for rank, hit in enumerate(hits, 1):
            label = f"  label {hit.label}" if hit.label is not None else ""
            print(f"  {rank:3d}. id {hit.id:8d}  distance {hit.distance:3d}{label}")
    return 0



def _spatial(args):
    from ssdh_port.data.transformer import transform_param
    from ssdh_port.hashing.patches import PatchIndex
    from ssdh_port.pipeline.patches import CaffeLatent, PatchCoder
    from ssdh_port.service.model_card import ModelCard, card_path, read_card_file

    if not args.index:
        raise SSDHError("--spatial searches a patch code file: give --index")
    index = PatchIndex.load(args.index)
    card = (read_card_file(args.card or card_path(args.index)) or ModelCard()).with_overrides(
        prototxt=args.prototxt, weights=args.weights, latent_blob=args.blob, mean_file=args.mean_file,
        mean_value=args.mean_value, scale=args.scale)
    card.require("prototxt", "weights")
    t = card.transform
    coder = PatchCoder(CaffeLatent(card.prototxt, card.weights,
                                   transform_param(float(t["scale"]), t["mean_file"], t["mean_value"],
                                                   int(t["crop_size"] or 0)),
                                   card.latent_blob, card.image_size))
    if coder.bits != index.bits:
        raise SSDHError(f"{args.index} holds {index.bits}-bit patch codes, the net makes {coder.bits}")
    for path, image in zip(args.images, read_images(args.images)):
        patches, _ = coder.image_patches(image, args.spatial)
        distances, ids = index.search(coder.codes(patches), args.k)
        print(f"{path}:")
        for rank, (item, distance) in enumerate(zip(ids.tolist(), distances.tolist()), 1):
            print(f"  {rank:3d}. image {item:8d}  set distance {distance:.3f}")
    return 0
