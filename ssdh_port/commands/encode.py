"""Encode images to binary codes with a trained SSDH net and write a code file.

    ssdh encode --prototxt deploy.prototxt --weights W --input DB|list|.npy|.npz
        --output codes.ssdh [--milvus URI [--collection C]] [--blob latent_sigmoid] [--features fc7[,fc9] [--features-out fc7.npy]]
        [--batch-size B] [--device cpu|cuda:N] [--mean-file M | --mean-value V ...] [--scale S]
        [--crop-size C] [--resize H W] [--backend lmdb|leveldb] [--patches L]

The latent activations (default blob: the Sigmoid output named like
'*latent*', else the last Sigmoid top) are thresholded at 0.5 (0.5 gives 0),
packed (ssdh_port.ops.pack_bits layout) and saved with ids 0..N-1 and the labels
of the source in the code file (ssdh_port.hashing.index). Degenerate codes are
reported loudly (activations near 0.5 everywhere, constant bits, all codes
equal) with the bit balance, also in <out>.report.json. A model card (the net,
weights, latent blob and preprocessing) goes beside the code file
(<out>.card.json); with --milvus the codes go into a Milvus collection too (or
only), its card beside a Milvus Lite file. Under `torchrun --nproc_per_node=N`, the
N processes encode interleaved batches and rank 0 writes one code file identical
to one process's.

--patches L writes a patch code file instead (instance search, `ssdh search
--spatial`): each image of a list or database coded as its square patches at levels
1..L (1 + 4 + 9 patches for L = 3; ssdh_port.hashing.patches), each resized to the
net's input size (or --resize H W) and transformed as whole images are.
"""
import sys

import numpy as np

from ssdh_port import cli
from ssdh_port.fileio import write_json
from ssdh_port.errors import SSDHError
from ssdh_port.pipeline import encode_split, transform_param


def main(argv=None):
    parser = cli.parser(__doc__)
    cli.add_source_arguments(parser)
    cli.add_output(parser, "code file to write (.ssdh)")
    parser.add_argument("--milvus", metavar="URI", help="also (or instead) append the codes to a Milvus "
                        "collection: a Milvus Lite file or http://host:19530")
    parser.add_argument("--collection", default="ssdh_codes")
    parser.add_argument("--card", help="model card of the Milvus collection (default: beside a Milvus Lite file)")
    parser.add_argument("--blob", help="latent activations blob (default: found by name)")
    parser.add_argument("--features", help="also keep these blobs (comma-separated, e.g. fc7 for "
                        "re-ranking): <out>.<blob>.npy each")
    parser.add_argument("--features-out", help=".npy file for a single --features blob")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"),
                        help="bf16: encode under bfloat16 autocast (opt-in speed; codes may differ near 0.5)")
    parser.add_argument("--patches", type=int, default=0, metavar="L",
                        help="code each image's patches at levels 1..L into a patch code file (instance search)")
    args = parser.parse_args(argv)
    if args.patches:
        return _patches(args)
    if not (args.output or args.milvus):
        raise SSDHError("give --output (a code file) and/or --milvus (a collection)")
    extra = args.features.split(",") if args.features else []
    if args.features_out and len(extra) != 1:
        raise SSDHError("--features-out goes with a single --features blob")
    encoded = encode_split(
        args.prototxt, args.weights, args.input, batch_size=args.batch_size, latent_blob=args.blob,
        features=extra, iterations=args.iterations, backend=args.backend, resize=args.resize,
        device=args.device, precision=args.precision,
        transform=transform_param(args.scale, args.mean_file, args.mean_value, args.crop_size, args.gray))
    if encoded is None:
        return 0  # a rank other than 0 of `torchrun ... ssdh encode`: rank 0 writes
    health = encoded.health
    if args.output:
        encoded.save(args.output, {extra[0]: args.features_out} if args.features_out else None)
        write_json(args.output + ".report.json", health)
    if args.milvus:
        encoded.to_milvus(args.milvus, args.collection, args.card)
    where = " and ".join(filter(None, [args.output, args.milvus and f"{args.milvus} ({args.collection})"]))
    print(f"encoded {health['items']} items to {health['bits']}-bit codes from blob "
          f"'{encoded.latent_blob}': {where}")
    print(f"bit balance: mean {health['mean_bit_balance']:.3f} (per bit "
          f"{np.round(health['bit_balance'], 2).tolist()}); {health['distinct_codes']} distinct codes")
    for warning in health["warnings"]:
        print(f"WARNING: {warning}", file=sys.stderr)
    return 0



def _patches(args):
    from ssdh_port.pipeline.patches import CaffeLatent, PatchCoder, encode_patches, read_source_images
    from ssdh_port.service.model_card import make_card, write_card

    if args.patches < 1:
        raise SSDHError(f"--patches must be at least 1, got {args.patches}")
    if args.milvus or not args.output:
        raise SSDHError("--patches writes a patch code file: give --output (not --milvus)")
    if not args.input or args.input.endswith((".npy", ".npz")):
        raise SSDHError("--patches reads images: give --input an image list file or a Datum database")
    transform = transform_param(args.scale, args.mean_file, args.mean_value, args.crop_size, args.gray)
    coder = PatchCoder(CaffeLatent(args.prototxt, args.weights, transform, args.blob, args.resize, args.batch_size,
                                   args.device), args.batch_size)
    index = encode_patches(coder, read_source_images(args.input, args.backend), args.patches)
    index.save(args.output)
    write_card(make_card(args.prototxt, args.weights, coder.latent, coder.bits, len(index), transform,
                         list(coder.size), args.input), args.output)
    print(f"wrote {args.output}: {index.patches} patch codes of {len(index)} images ({coder.bits} bits, "
          f"levels 1..{args.patches})")
    return 0
