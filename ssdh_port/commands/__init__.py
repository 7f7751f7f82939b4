"""The `ssdh` command: one executable, its commands registered in one table (as
Caffe's tools/caffe.cpp registers train, test, time). Each command is a module
of this package with main(argv); `ssdh COMMAND --help` describes it.

    ssdh train solver.yaml            ssdh encode --prototxt ... --output codes.ssdh
    ssdh run experiments/x.toml       ssdh serve --index codes.ssdh
"""
import importlib
import sys

from ssdh_port import cli

# name -> (module of ssdh_port.commands, what it does)
COMMANDS = {
    "demo": ("demo", "SSDH end to end on MNIST: train, encode, evaluate, report"),
    "run": ("run", "run an experiment spec (experiments/*.toml or a shipped name)"),
    "train": ("train", "train a Caffe net from a solver, as `caffe train` does"),
    "convert": ("convert", "convert weights between .caffemodel and .pt"),
    "prepare": ("prepare", "prepare a dataset: list files, Datum databases, means"),
    "imageset": ("imageset", "Caffe's convert_imageset: images in a list -> LMDB / LevelDB"),
    "triplets": ("triplets", "DNNH's convert_triplet_imageset: 9-channel triplet Datums"),
    "mean": ("mean", "Caffe's compute_image_mean: a database's mean .binaryproto"),
    "extract": ("extract", "Caffe's extract_features: blobs of a net over a source -> .npz"),
    "encode": ("encode", "images -> a code file (and its model card) or a Milvus collection"),
    "eval": ("eval", "the retrieval protocol on code files: mAP, P@k, P within radius; plots"),
    "eval-instance": ("eval_instance", "instance retrieval on Oxford/Paris ground truth: global, spatial, l2"),
    "index": ("index", "change a code file in place: add, remove, compact, info (a live index)"),
    "search": ("search", "query images against a code file through its net"),
    "serve": ("serve", "the retrieval service (HTTP API and search page)"),
    "compare-backbone": ("backbone", "train an SSDH run's net without its latent layer; compare accuracies"),
}


def usage():
    width = max(map(len, COMMANDS))
    lines = ["usage: ssdh COMMAND [options]   (ssdh COMMAND --help for its options)", "", "commands:"]
    lines += [f"  {name:<{width}}  {what}" for name, (_, what) in COMMANDS.items()]
    return "\n".join(lines)


def command_main(name):
    """The main(argv) of a registered command."""
    return importlib.import_module(f"ssdh_port.commands.{COMMANDS[name][0]}").main


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        from ssdh_port import __version__

        print(f"ssdh {__version__}")
        return 0
    name = argv[0]
    if name not in COMMANDS:
        print(f"ssdh: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    return cli.run(command_main(name), argv[1:], name=f"ssdh {name}")


def entry_point():
    """The console script `ssdh` (pyproject's [project.scripts])."""
    sys.exit(main())
