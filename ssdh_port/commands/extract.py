"""Extract blobs of a Caffe net, like Caffe's extract_features.

    ssdh extract --prototxt P [--weights W(.caffemodel|.pt)]
        [--input (DB | list.txt | .npy | .npz)] --blobs latent,fc9|all --output feats.npz
        [--batch-size B] [--iterations N] [--device cpu|cuda:N]
        [--mean-file M] [--mean-value V ...] [--scale S] [--crop-size C] [--resize H W]
        [--backend lmdb|leveldb]

Without --input, the net's own data layers (Data / ImageData / HDF5Data) feed it
for --iterations batches, as Caffe's TEST phase would (wrapping around at the end
of the DB). With a DB or image list, the records are transformed with the
--mean-file/--mean-value/--scale/--crop-size options (Caffe's order) and fed to
the first input blob. The .npz holds one array per blob under its Caffe name
(batches concatenated; a scalar top such as a loss or an accuracy is per batch:
a 1-D array of one value per batch) and `labels` when the source has them; it is
written to a temporary file and renamed.
"""

import numpy as np

from ssdh_port import cli
from ssdh_port.fileio import atomic_write
from ssdh_port.pipeline import batch_source, extract, load_net, transform_param


def main(argv=None):
    parser = cli.parser(__doc__)
    cli.add_source_arguments(parser)
    parser.add_argument("--blobs", required=True, help="comma-separated blob names, or all; a scalar "
                        "top (a loss, an accuracy) is saved as a 1-D array of one value per batch")
    cli.add_output(parser, ".npz file to write", required=True)
    args = parser.parse_args(argv)
    net = load_net(args.prototxt, args.weights, args.batch_size if args.input else None)
    blobs = list(net.blob_shapes) if args.blobs == "all" else args.blobs.split(",")
    transform = transform_param(args.scale, args.mean_file, args.mean_value, args.crop_size, args.gray)
    batches = batch_source(args.input, net, args.batch_size, transform, args.backend, args.resize)
    if batches is None and not args.iterations:
        parser.error("without --input, give --iterations for the net's data layers")
    features, labels = extract(net, blobs, batches, args.iterations, args.device)
    if labels is not None:
        features["labels"] = labels
    with atomic_write(args.output) as f:
        np.savez(f, **features)
    for name, array in features.items():
        print(f"{name}: {array.shape}")
    print(f"wrote {args.output}")
    return 0

