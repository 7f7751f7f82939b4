"""Instance retrieval on a ground-truth folder (the Oxford / Paris layout): the
gallery coded by patches, each query cropped to its box, four searches scored by
mean AP (the protocol's compute_ap: good + ok positive, junk ignored).

    ssdh eval-instance --ground-truth GT --images DIR [--gallery LIST] [--levels 3]
        (--prototxt deploy.prototxt --weights W.caffemodel [--blob B] [--mean-file M |
         --mean-value V ...] [--scale S] [--resize H W] | --weights model.pt)
        [--batch-size B] [--device cpu|cuda:N] [--out-dir runs/eval_instance]

GT holds <name>_query.txt (query image and box) and <name>_good / _ok / _junk.txt;
DIR the images (sub-folders too), named as the ground truth names them; the
gallery is --gallery's names (a line each), else DIR/../gallery.txt, else every
image in DIR. The net is a Caffe deploy net with its weights and preprocessing, or
a model.pt of `ssdh run` (a torch model: its own normalisation). Searches: global
(whole-image codes, Hamming), spatial (patch codes, the mean over the query's
patches of the minimum Hamming distance to an image's patches), and l2 on the
latent activations, whole and spatial. Writes table.md and table.json (mean AP
over the whole ranking, search ms per query; per-query APs in the JSON).
"""
import os

from ssdh_port import cli
from ssdh_port.errors import SSDHError


def main(argv=None):
    parser = cli.parser(__doc__)
    parser.add_argument("--ground-truth", required=True, metavar="GT", help="folder of the ground-truth files")
    parser.add_argument("--images", required=True, metavar="DIR", help="folder of the images")
    parser.add_argument("--gallery", help="file of the gallery's image names (default: DIR/../gallery.txt, "
                        "else every image)")
    parser.add_argument("--levels", type=int, default=3, help="patch levels 1..L (default 3: 14 patches)")
    parser.add_argument("--prototxt", help="Caffe deploy net (omit for a torch model.pt)")
    parser.add_argument("--weights", required=True, help=".caffemodel, .caffemodel.h5 or .pt")
    parser.add_argument("--blob", help="latent blob (default: found by name)")
    cli.add_transform_arguments(parser)
    parser.add_argument("--crop-size", type=int, default=0)
    parser.add_argument("--resize", type=int, nargs=2, metavar=("H", "W"), help="patch size (default: the net's "
                        "input)")
    cli.add_batch_size(parser, 64)
    cli.add_device(parser)
    parser.add_argument("--name", default=None, help="the method's name in the table (default: the weights' name)")
    cli.add_out_dir(parser, "folder of table.md and table.json (default runs/eval_instance)",
                    default="runs/eval_instance")
    args = parser.parse_args(argv)
    if args.levels < 1:
        raise SSDHError(f"--levels must be at least 1, got {args.levels}")
    for flag, folder in (("--ground-truth", args.ground_truth), ("--images", args.images)):
        if not os.path.isdir(folder):
            raise SSDHError(f"{flag} {folder}: not a folder")
    from ssdh_port.pipeline import transform_param
    from ssdh_port.pipeline.instance import evaluate_instances, instance_reports
    from ssdh_port.pipeline.patches import PatchCoder, latent_source
    from ssdh_port.pipeline.report import write_table

    transform = transform_param(args.scale, args.mean_file, args.mean_value, args.crop_size) if args.prototxt \
        else None
    latent = latent_source(args.weights, args.prototxt, transform, args.blob, args.resize, args.batch_size,
                           args.device)
    evaluation = evaluate_instances(PatchCoder(latent, args.batch_size), args.images, args.ground_truth,
                                    levels=args.levels, gallery=args.gallery)
    name = args.name or os.path.splitext(os.path.basename(args.weights))[0]
    text = write_table(instance_reports(evaluation, name), args.out_dir,
                       title=f"Instance retrieval: {args.ground_truth}",
                       notes=f"{evaluation.queries} queries, {evaluation.gallery} gallery images, "
                             f"{evaluation.patches} patches (levels 1..{args.levels}); mean AP over the whole "
                             f"ranking; query coding {evaluation.encode_ms_per_query:.1f} ms per query",
                       extra_columns=(("ms per query", "ms_per_query", "{:.2f}"),))
    print(text)
    print(f"wrote {os.path.join(args.out_dir, 'table.md')} and table.json")
    return 0
