"""Run an experiment spec: prepare -> train -> encode -> evaluate -> write.

    ssdh run SPEC [--set FIELD=VALUE ...] [--out-dir DIR] [--only VARIANT ...] [--resume]
        [--device cpu|cuda] [--dry-run]

SPEC is a spec file (experiments/*.toml) or the name of one shipped with the
package (mnist_demo, mnist_table3, multilabel, cifar10_finetune, cifar10_fast,
cifar10_fast_sweep, cifar10_resnet18, dnnh). --set replaces a field by its dotted
name (model.bits=32, model.solver.max_iter=500, model.train.epochs=4,
data.archive=PATH) in every variant, over a variant's own setting; the value is
read as TOML (32, 0.5, true, [1.0, 0.0, 0.0], "text"). --only runs the named
variants and keeps the other rows of the table; --resume keeps every variant
whose report.json exists. Writes table.md, table.json, spec.toml (the spec as
run), provenance.json and README.md to --out-dir (default runs/<spec name>),
each variant's run under runs/<variant>.
"""
import sys

from ssdh_port import cli, runner, spec as specs


def main(argv=None):
    parser = cli.parser(__doc__)
    parser.add_argument("spec", help="a spec file, or the name of a shipped one")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="FIELD=VALUE",
                        help="replace a field of the spec (repeatable)")
    cli.add_out_dir(parser, "folder of the results (default runs/<spec name>)")
    parser.add_argument("--only", nargs="+", metavar="VARIANT", help="run these variants only")
    parser.add_argument("--resume", action="store_true", help="keep the variants already run (their report.json)")
    cli.add_device(parser, default=None)
    parser.add_argument("--dry-run", action="store_true", help="print the spec as it would run, and its variants")
    args = parser.parse_args(argv)
    spec = specs.load(specs.find(args.spec)).with_fields(specs.parse_sets(args.sets))
    if args.dry_run:
        print(specs.to_toml(spec), end="")
        for variant, _ in spec.expanded():
            if variant:
                print(f"# variant {variant.name}: {variant.set}")
        return 0
    result = runner.run(spec, args.out_dir or f"runs/{spec.name}", only=args.only, resume=args.resume,
                        device=args.device, argv=["ssdh", "run", *(sys.argv[1:] if argv is None else argv)])
    if result is None:
        return 0  # a rank other than 0 of `torchrun -m ssdh_port run ...`
    print(result.table)
    print(f"wrote {result.out_dir}/table.md, table.json, spec.toml, provenance.json")
    return 0
