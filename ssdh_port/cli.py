"""What the commands share: one spelling per option, one error handler.

Options (old spellings kept as hidden aliases where Caffe users or older commands rely on them):
  --device cpu|cuda|cuda:N   (--gpu N: Caffe's flag, = cuda:N)
  --batch-size N             (--batch)
  --iterations N             (--iters)
  --k N                      (--topk): how many results / the mAP cut-off
  --output FILE              a file a command writes (--out)
  --out-dir DIR              a folder a command writes into (--out)

run(main) is every tool's entry point: the library logs to stderr, and an
expected error (ssdh_port.errors.SSDHError, or a file the system refuses) ends
as one line `tool: message` with exit status 1, never a traceback.
"""
import argparse
import logging
import os
import sys

from ssdh_port.allocator import keep_freed_memory
from ssdh_port.errors import SSDHError


_PROG = None  # "ssdh <command>" while a command runs (set by run)


def parser(doc, **kwargs):
    """The ArgumentParser of a command: its name as the program, the first line of
    its docstring as the description, the rest (usage examples) after the options."""
    first, _, rest = doc.strip().partition("\n")
    return argparse.ArgumentParser(prog=_PROG, description=first, epilog=rest.strip() or None,
                                   formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)


def _with_old_spelling(parser, flag, dest, help, required, default):
    group = parser.add_mutually_exclusive_group(required=required)
    group.add_argument(flag, dest=dest, default=default, help=help)
    group.add_argument("--out", dest=dest, default=default, help=argparse.SUPPRESS)


def add_output(parser, help, required=False, default=None):
    """--output FILE (a file the command writes; --out is its old spelling)."""
    _with_old_spelling(parser, "--output", "output", help, required, default)


def add_out_dir(parser, help, required=False, default=None):
    """--out-dir DIR (a folder the command writes into; --out is its old spelling)."""
    _with_old_spelling(parser, "--out-dir", "out_dir", help, required, default)


def add_resize(parser):
    """--resize H W (Caffe's convert_imageset spelling, --resize_height H --resize_width W,
    is accepted too); args.resize is (H, W) or None."""
    parser.add_argument("--resize", type=int, nargs=2, metavar=("H", "W"), help="resize every image to H x W")
    parser.add_argument("--resize_height", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--resize_width", type=int, default=0, help=argparse.SUPPRESS)


def resize_of(parser, args):
    """(H, W) or None from add_resize's flags; one half of Caffe's pair is an error."""
    if args.resize_height or args.resize_width:
        if not (args.resize_height and args.resize_width):
            parser.error("give both --resize_height and --resize_width (or --resize H W)")
        if args.resize:
            parser.error("give --resize H W or Caffe's --resize_height/--resize_width, not both")
        return args.resize_height, args.resize_width
    return tuple(args.resize) if args.resize else None


def _gpu(value):
    """Caffe's --gpu: N, or (train_net) N,M,... / all for one process per GPU."""
    parts = value.split(",")
    if value != "all" and not all(part.isdigit() for part in parts):
        raise argparse.ArgumentTypeError(f"expected a GPU number (or numbers like 0,1), got {value!r}")
    return f"cuda:{value}"


def add_device(parser, default="cpu"):
    parser.add_argument("--device", default=default, help=f"cpu, cuda or cuda:N (default {default})")
    parser.add_argument("--gpu", dest="device", type=_gpu, help="GPU number N (= --device cuda:N)")


def add_batch_size(parser, default):
    parser.add_argument("--batch-size", "--batch", dest="batch_size", type=int, default=default,
                        help=f"images per batch (default {default})")


def add_iterations(parser, default, help="iterations"):
    parser.add_argument("--iterations", "--iters", dest="iterations", type=int, default=default,
                        help=f"{help} (default {default})")


def add_k(parser, default, help="number of results"):
    parser.add_argument("--k", "--topk", dest="k", type=int, default=default, help=f"{help} (default {default})")


def add_source_arguments(parser):
    """A net with weights and the images to feed it (encode, extract_features)."""
    parser.add_argument("--prototxt", required=True)
    parser.add_argument("--weights", help=".caffemodel, .caffemodel.h5 or .pt")
    parser.add_argument("--input", help="DB folder, image list, .npy or .npz (default: the net's data layers)")
    add_batch_size(parser, 64)
    add_iterations(parser, None, help="batches to run with the net's own data layers")
    add_device(parser)
    parser.add_argument("--backend", default="lmdb", choices=("lmdb", "leveldb"))
    add_transform_arguments(parser)
    parser.add_argument("--crop-size", type=int, default=0)
    parser.add_argument("--resize", type=int, nargs=2, metavar=("H", "W"))
    parser.add_argument("--gray", action="store_true",
                        help="read list images and encoded records as gray (the default for a net whose "
                        "input has one channel)")


def add_transform_arguments(parser, scale=1.0):
    """--mean-file, --mean-value, --scale (scale=None: not given unless on the command
    line, for tools whose model card supplies it)."""
    parser.add_argument("--mean-file")
    parser.add_argument("--mean-value", type=float, nargs="+")
    parser.add_argument("--scale", type=float, default=scale,
                        help="input scale" + (f" (default {scale:g})" if scale is not None
                                              else " (default: the model card's, else 1)"))


def add_model_arguments(parser):
    """The code file to search and the net that encodes queries (search, serve): the
    net, weights, latent blob and preprocessing come from the model card encode wrote
    beside the codes; these flags override it."""
    parser.add_argument("--index", help="code file of the database (tools/encode.py)")
    parser.add_argument("--milvus", metavar="URI", help="search a Milvus collection instead: a Milvus Lite "
                        "file or http://host:19530")
    parser.add_argument("--collection", default="ssdh_codes", help="Milvus collection (default ssdh_codes)")
    parser.add_argument("--card", help="model card (default: beside the code file or the Milvus Lite file)")
    parser.add_argument("--prototxt", help="deploy net (default: the model card's)")
    parser.add_argument("--weights", help="weights (default: the model card's)")
    parser.add_argument("--blob", help="latent blob (default: the model card's, else found by name)")
    add_transform_arguments(parser, scale=None)


def search_engine(args, db=None, backend="lmdb", writable=False):
    """The ImageSearch that add_model_arguments' flags describe (writable: over a live index)."""
    from ssdh_port.service.search import ImageSearch, open_index

    index, card = open_index(args.index, args.milvus, args.collection, args.card, writable=writable)
    return ImageSearch(index, db, backend=backend, card=card, prototxt=args.prototxt, weights=args.weights,
                       latent_blob=args.blob, mean_file=args.mean_file, mean_value=args.mean_value,
                       scale=args.scale, writable=writable)


def solver_set_argument(parser):
    parser.add_argument("--solver-set", action="append", default=[], metavar="FIELD=VALUE",
                        help="replace a field of the solver (SolverParameter name; comma-separated "
                        "values for a repeated field), e.g. lr_policy=multistep")


def tool_name():
    return os.path.splitext(os.path.basename(sys.argv[0]))[0] or "ssdh"


def run(main, argv=None, name=None):
    """Call main(argv) with the library's log on stderr; expected errors -> one line
    `name: message`, exit 1. The process-wide settings of a command are made here,
    once, at its entry point: glibc keeps freed memory (ssdh_port.allocator; each
    training step or encoded batch reuses it instead of faulting it in again)."""
    global _PROG
    name = name or tool_name()
    _PROG = name
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    keep_freed_memory()
    try:
        return main(argv) or 0
    except SSDHError as err:
        print(f"{name}: {err}", file=sys.stderr)
    except OSError as err:
        where = f"{err.filename}: " if getattr(err, "filename", None) else ""
        print(f"{name}: {where}{err.strerror or err}", file=sys.stderr)
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return 130
    return 1
