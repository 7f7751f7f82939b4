"""Is classification sacrificed? Train the backbone of an SSDH run without its
latent layer (same data, solver, iterations and initial weights) and compare the
test accuracy of both.

    ssdh compare-backbone --run results/mnist/runs/lenet_ssdh48_p2
        --name "LeNet (MNIST)" [--weights INIT.caffemodel] [--out-dir results/backbone]

--run is an SSDH training folder holding solver.prototxt, train_val.prototxt and
train_log.jsonl (every experiment leaves one); --weights the initial weights it
was fine-tuned from, if any. The variant (no latent layer, no E2/E3, the
classifier on the latent layer's input) trains into <out>/runs/<name>;
<out>/table.md and table.json list every comparison made so far.
"""
from ssdh_port import cli
from ssdh_port.pipeline.backbone import compare_backbone


def main(argv=None):
    parser = cli.parser(__doc__)
    parser.add_argument("--run", required=True, help="the SSDH training folder to compare with")
    parser.add_argument("--name", required=True, help="row name, e.g. 'LeNet (MNIST)'")
    parser.add_argument("--weights", help="initial weights of the SSDH run (fine-tuning)")
    cli.add_out_dir(parser, "folder of the comparison table (default results/backbone)", default="results/backbone")
    args = parser.parse_args(argv)
    comparison = compare_backbone(args.run, args.name, args.out_dir, weights=args.weights)
    print(f"{args.name}: accuracy {comparison.ssdh_accuracy:.4f} with the latent layer, "
          f"{comparison.backbone_accuracy:.4f} without ({comparison.iterations} iterations)")
    print(f"table: {args.out_dir}/table.md")
    return 0

