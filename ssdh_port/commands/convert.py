"""Convert trained Caffe weights to a PyTorch .pt file, or back.

    ssdh convert --prototxt deploy.prototxt --caffemodel W.caffemodel --output model.pt
    ssdh convert --prototxt deploy.prototxt --pt model.pt --to-caffemodel --output W.caffemodel

The output's extension picks the format (.caffemodel or .pt); the input may be
any weights file (told by content). The net is built from the prototxt (TEST phase unless --phase TRAIN) and the
weights are copied by layer name, checking every blob's shape, as Caffe's
CopyTrainedLayersFrom does. A table says what was loaded, which layers with
parameters got nothing (left to their fillers), and which weights were unused.
The .pt file holds the net definition and {layer: [blobs in Caffe order]};
ssdh_port.caffe.CaffeNet(prototxt, weights="model.pt") loads it. The output is
written to a temporary file and renamed, so a failed run leaves no partial file.
"""
import sys

from ssdh_port import cli
from ssdh_port.caffe.convert import convert_weights


def parse_args(argv):
    parser = cli.parser(__doc__)
    parser.add_argument("--prototxt", required=True, help="net definition (deploy or train_val)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--caffemodel", help="weights: .caffemodel, .caffemodel.h5, .pt or a training "
                        "snapshot .pt (told by content)")
    source.add_argument("--pt", help="the same as --caffemodel (kept for the reverse direction)")
    parser.add_argument("--to-caffemodel", action="store_true",
                        help="kept for compatibility: the output's extension decides (.caffemodel or .pt)")
    cli.add_output(parser, "output file: .caffemodel (Caffe) or .pt (PyTorch)", required=True)
    parser.add_argument("--phase", default="TEST", choices=("TRAIN", "TEST"))
    parser.add_argument("--allow-shape-mismatch", action="store_true",
                        help="skip (and list) layers whose blob shapes differ instead of failing")
    return parser.parse_args(argv)


def print_table(net, report):
    status = {name: "loaded" for name in report["loaded"]}
    status.update({name: "NOT IN WEIGHTS (filler)" for name in report["not_in_weights"]})
    status.update({entry.split(" ")[0]: "SKIPPED: " + entry.split(" ", 1)[1]
                   for entry in report["skipped"]})
    print(f"{'layer':24s} {'type':20s} {'blobs':40s} status")
    for module in net.layers:
        if not len(module.blobs):
            continue
        shapes = " ".join("x".join(map(str, b.shape)) for b in module.blobs)
        print(f"{module.name:24s} {module.type:20s} {shapes:40s} {status.get(module.name, '?')}")
    for name in report["unused"]:
        print(f"{name:24s} {'':20s} {'':40s} in the weights, not in the net (unused)")


def main(argv=None):
    args = parse_args(argv)
    result = convert_weights(args.prototxt, args.caffemodel or args.pt, args.output, args.phase,
                             args.allow_shape_mismatch, args.to_caffemodel)
    if result.net is not None:
        print_table(result.net, result.report)
    else:
        print(f"the net's data layers cannot be opened here: converted the {len(result.report['loaded'])} "
              "layers with blobs by name, shapes not checked", file=sys.stderr)
    print(f"wrote {args.output} ({result.format}, {len(result.report['loaded'])} layers loaded)")
    return 0

