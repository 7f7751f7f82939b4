"""The main job: SSDH end to end on MNIST (shipped with the package), on the CPU.

    ssdh demo [--bits 48] [--iterations 5000] [--p 2] [--out-dir runs/demo] [--data runs/mnist]
        [--solver-set FIELD=VALUE ...] [--device cpu]

The spec mnist_demo (experiments/mnist_demo.toml) run by the runner: MNIST idx ->
LMDBs; LeNet-SSDH (recipe lenet_ssdh, code length --bits) trained with E1 + E2 +
E3 by Caffe's solver; the 10,000 test images (queries) and the 60,000 training
images (database) encoded into code files; the original protocol (mAP@1000 and
over the whole ranking, P@k, P within radius 2); report.md / report.json with
the classification accuracy, P@k / PR plots and a picture of retrieval results.
The same as `ssdh run mnist_demo --set model.bits=...`.
"""
import os
import sys

from ssdh_port import cli, runner, spec as specs
from ssdh_port.pipeline import solver_overrides


def main(argv=None):
    parser = cli.parser(__doc__)
    parser.add_argument("--bits", type=int, default=48)
    cli.add_iterations(parser, 5000, help="training iterations")
    parser.add_argument("--p", type=int, default=2, choices=(1, 2), help="exponent of E2 and E3")
    cli.add_out_dir(parser, "folder of the run (default runs/demo)", default="runs/demo")
    parser.add_argument("--data", default="runs/mnist", help="where the MNIST LMDBs go")
    cli.solver_set_argument(parser)
    cli.add_device(parser, default=None)
    args = parser.parse_args(argv)
    solver = {"max_iter": args.iterations, "test_interval": max(1, args.iterations // 5),
              **solver_overrides(args.solver_set)}
    spec = specs.load(specs.find("mnist_demo")).with_fields(
        {"model.bits": args.bits, "model.p": args.p, "data.dir": args.data, "model.solver": solver})
    result = runner.run(spec, args.out_dir, device=args.device,
                        argv=["ssdh", "demo", *(sys.argv[1:] if argv is None else argv)])
    r = result.reports[0]
    print(f"{r.method}: accuracy {r.classification_accuracy:.4f}, mAP@{r.topk} {r.map_at_topk:.4f}, "
          f"mAP (whole ranking) {r.map_whole_ranking:.4f}, P@1000 {r.precision_at_1000:.4f}, "
          f"P(r<={r.radius}) {r.precision_within_radius:.4f}; {r.extra['phases']['wall']} s")
    for name in ("train_log.jsonl", "train_loss.png", "retrieval_curves.png", "retrieval_examples.png",
                 "test.ssdh", "train.ssdh", "provenance.json"):
        print(f"{name}: {os.path.join(result.out_dir, name)}")
    print(f"report: {os.path.join(result.out_dir, 'report.md')}")
    return 0
