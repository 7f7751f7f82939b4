"""The paper's "classification is not sacrificed" check: the backbone of an SSDH
run trained again without its latent layer (same data, solver, iterations and
initial weights), and the test accuracies of both side by side.
"""
import dataclasses
import glob
import json
import os
import re

from ssdh_port.caffe.io import read_net_prototxt, write_text_proto
from ssdh_port.fileio import atomic_write, write_json
from ssdh_port.errors import SSDHError
from ssdh_port.pipeline.recipe import remove_latent, write_solver
from ssdh_port.pipeline.train import final_test, train_caffe


@dataclasses.dataclass
class BackboneComparison:
    name: str
    iterations: int
    ssdh_run: str
    ssdh_accuracy: float
    backbone_accuracy: float
    command: str = ""


def compare_backbone(ssdh_run, name, out_dir, weights=None):
    """Train the variant of ssdh_run without the latent layer into
    out_dir/runs/<name>, write out_dir/table.md / table.json of every comparison
    there, and return this one."""
    run_dir = os.path.join(out_dir, "runs", re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_"))
    ssdh = final_test(os.path.join(ssdh_run, "train_log.jsonl"))
    os.makedirs(run_dir, exist_ok=True)
    net = remove_latent(read_net_prototxt(os.path.join(ssdh_run, "train_val.prototxt")))
    train_val = os.path.join(run_dir, "train_val.prototxt")
    write_text_proto(net, train_val)
    solver = write_solver(os.path.join(ssdh_run, "solver.prototxt"), os.path.join(run_dir, "solver.prototxt"),
                          net=train_val, snapshot_prefix=os.path.join(run_dir, "backbone"))
    trained = train_caffe(solver, weights=weights, log_dir=run_dir)
    backbone = final_test(trained.log)
    for which, record in (("SSDH", ssdh), ("backbone", backbone)):
        if "accuracy" not in record["outputs"]:
            raise SSDHError(f"the {which} net has no 'accuracy' test output")
    command = f"python experiments/compare_backbone.py --run {ssdh_run} --name '{name}' --out {out_dir}"
    comparison = BackboneComparison(name, backbone["iter"], ssdh_run, ssdh["outputs"]["accuracy"],
                                     backbone["outputs"]["accuracy"],
                                     command + (f" --weights {weights}" if weights else ""))
    write_json(os.path.join(run_dir, "comparison.json"), dataclasses.asdict(comparison))
    write_comparisons(out_dir)
    return comparison


def write_comparisons(out_dir):
    rows = []
    for path in sorted(glob.glob(os.path.join(out_dir, "runs", "*", "comparison.json"))):
        with open(path) as f:
            rows.append(BackboneComparison(**json.load(f)))
    lines = ["| backbone | iterations | accuracy with SSDH latent layer | accuracy without | difference |",
             "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.name} | {r.iterations} | {100 * r.ssdh_accuracy:.2f} | {100 * r.backbone_accuracy:.2f} "
                     f"| {100 * (r.ssdh_accuracy - r.backbone_accuracy):+.2f} |")
    text = "\n".join(lines) + "\n\nEach pair: same data, solver, iterations and initial weights.\n"
    with atomic_write(os.path.join(out_dir, "table.md"), "w") as f:
        f.write(text)
    write_json(os.path.join(out_dir, "table.json"),
               {"schema": "ssdh_port.backbone/1", "rows": [dataclasses.asdict(r) for r in rows]})
    return text
