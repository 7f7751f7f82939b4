"""Evaluate retrieval with the original protocol (analysis/precision.m) and plot it.

    ssdh eval --query Q.ssdh --database D.ssdh [--query Q2.ssdh --database D2.ssdh ...]
        [--name SSDH-48 ...] [--k 1000] [--radius 2] [--relevance any|exact]
        [--reference-curves DIR] [--device cpu|cuda] [--out-dir runs/eval]

Each (query, database) pair of code files (ssdh encode) is one method or code
length; labels come from the code files. Prints and saves a table (table.md and
table.json in --out-dir, the project's results schema): mAP@k (--k 0: the whole ranking),
mAP over the whole ranking, precision@k for k = 100..1000, precision within
Hamming radius r; and a PNG (retrieval_curves.png): precision@k curves, precision-recall
curves, mAP against code length. --reference-curves adds the published baseline
curves of a folder of '<method>-p-at-k.txt' files (k, precision per line), as the
original plot-p-at-k.gnuplot did. --dnnh adds caffe-dnnh's evaluate_map on the
same codes (AP over the first --dnnh-top ranks divided by min(relevant items,
top); --dnnh-compat: the original program's divisors).
"""
import glob
import os

import numpy as np

from ssdh_port import cli
from ssdh_port.pipeline import dnnh_metric, evaluate_code_files, sampled_curve, write_table
from ssdh_port.pipeline.plots import retrieval_curves


def reference_curves(folder):
    curves = {}
    for path in sorted(glob.glob(os.path.join(folder, "*-p-at-k.txt"))):
        curves[os.path.basename(path)[: -len("-p-at-k.txt")]] = np.loadtxt(path, ndmin=2)
    return curves


def main(argv=None):
    parser = cli.parser(__doc__)
    parser.add_argument("--query", action="append", required=True)
    parser.add_argument("--database", action="append", required=True)
    parser.add_argument("--name", action="append")
    cli.add_k(parser, 1000, help="mAP cut-off (0: the whole ranking)")
    parser.add_argument("--radius", type=int, default=2)
    parser.add_argument("--relevance", default="any", choices=("any", "exact"))
    parser.add_argument("--reference-curves", help="folder of <method>-p-at-k.txt files")
    parser.add_argument("--dnnh", action="store_true",
                        help="also caffe-dnnh's evaluate_map (its AP divisor; per class in the JSON)")
    parser.add_argument("--dnnh-top", type=int, default=10000, help="evaluate_map's top_neighbor_num")
    parser.add_argument("--dnnh-compat", action="store_true",
                        help="the original program's divisors (database // 10 and Q + 1)")
    cli.add_device(parser)
    cli.add_out_dir(parser, "folder of table.md, table.json and retrieval_curves.png (default runs/eval)",
                    default="runs/eval")
    args = parser.parse_args(argv)
    if len(args.query) != len(args.database):
        parser.error("give one --database per --query")
    if args.name and len(args.name) != len(args.query):
        parser.error("give one --name per --query")
    if args.k < 0 or args.radius < 0:
        parser.error("--k and --radius must be >= 0")
    names = args.name or [os.path.splitext(os.path.basename(q))[0] for q in args.query]
    evaluations = [evaluate_code_files(query, db, method=name, topk=args.k, radius=args.radius,
                                       relevance=args.relevance, device=args.device)
                   for name, query, db in zip(names, args.query, args.database)]
    reports = [ev.report for ev in evaluations]
    for report, query, db in zip(reports, args.query, args.database):
        report.extra.update(query=query, database=db)
        if args.dnnh:
            report.extra.update(dnnh_metric(query, db, args.dnnh_top, args.dnnh_compat))
    columns = (("DNNH mAP", "dnnh_map", "{:.2%}"),) if args.dnnh else ()
    text = write_table(reports, args.out_dir, title="Retrieval evaluation (precision.m protocol)",
                       extra_columns=columns,
                       curves={ev.report.method: sampled_curve(ev.precision_at_k) for ev in evaluations})
    references = reference_curves(args.reference_curves) if args.reference_curves else {}
    plot = os.path.join(args.out_dir, "retrieval_curves.png")
    retrieval_curves(evaluations, references, plot)
    print(text)
    print(f"wrote {os.path.join(args.out_dir, 'table.md')}, table.json and {plot}")
    return 0

