"""One runner for every experiment: run(spec, out_dir) -> RunResult.

For each variant of the spec (or the spec alone):

    prepare   the dataset of the registry: databases, transform, splits (pipeline.registry)
    train     a Caffe recipe through Caffe's solver (pipeline.train_caffe), or a torch
              model of the registry through its trainer
    encode    queries (the test split) and database (the training split) into code files
    evaluate  the protocol (pipeline.retrieval_report) and the spec's extra metrics
    write     <run>/report.json; then, for the whole spec, <out>/table.md + table.json,
              <out>/spec.toml (the spec as run), <out>/provenance.json and <out>/README.md
              (the table, the narrative of <out>/notes.md when there is one, the provenance)

Provenance is recorded here, not by hand: the spec as run, argv, the git commit of
a checkout (else the package version), the machine, and seconds by phase. Rows
of the table carry `extra.variant`; run(..., only=[names]) reruns those variants
and keeps the other rows of an existing table; resume=True reads a variant's
report.json instead of running it again (an interrupted sweep continues).
"""
import contextlib
import dataclasses
import datetime
import os
import subprocess
import sys
import time

from ssdh_port import spec as spec_module
from ssdh_port.errors import SSDHError
from ssdh_port.fileio import atomic_write, write_json
from ssdh_port.progress import logger

PROVENANCE_SCHEMA = "ssdh_port.provenance/1"


@dataclasses.dataclass
class RunResult:
    """What run() made: the rows of the table and where everything went."""
    reports: list                       # RetrievalReports, one per variant and relevance (and extra rows)
    out_dir: str
    table: str                          # the Markdown table's text
    runs: dict                          # {variant name or "": run folder}
    seconds: dict                       # {variant name or "": {phase: seconds}}


class Phases:
    """Seconds by phase of one variant: `with phases("train"): ...` adds to seconds["train"]."""

    def __init__(self):
        self.seconds = {}

    @contextlib.contextmanager
    def __call__(self, name):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - start, 1)


def method_name(spec, variant):
    """The row's name: the variant's, else the spec's template filled in."""
    template = (variant.method if variant and variant.method else spec.method)
    model = spec.model
    return template.format(bits=model.bits, p=model.p, arch=model.arch or os.path.basename(model.recipe),
                           variant=variant.name if variant else "", recipe=os.path.basename(model.recipe),
                           loss_weights=",".join(f"{w:g}" for w in model.loss_weights or (1, 1, 1)))


def run_variant(spec, run_dir, variant=None, device=None):
    """prepare -> train -> encode -> evaluate -> write for one expanded spec; returns
    ([RetrievalReport], {phase: seconds})."""
    from ssdh_port.pipeline import experiment, registry  # the training stack loads here, not on import

    phases = Phases()
    start = time.perf_counter()
    os.makedirs(run_dir, exist_ok=True)
    with phases("prepare"):
        data = registry.prepare(spec.data, spec.model)
    outcome = experiment.train_and_encode(spec, data, run_dir, phases, device=device)
    if outcome is None:
        return None, phases.seconds  # a rank other than 0 of a torchrun training: rank 0 writes
    with phases("evaluate"):
        reports = experiment.evaluate(spec, data, outcome, run_dir, method=method_name(spec, variant))
    wall = round(time.perf_counter() - start, 1)
    for report in reports:
        report.seconds = outcome.train_seconds if report.seconds is None else report.seconds
        report.extra.update(variant.extra if variant else {})
        report.extra.setdefault("variant", variant.name if variant else None)
        report.extra["phases"] = dict(phases.seconds, wall=wall)
    from ssdh_port.pipeline.report import write_table

    write_table(reports, run_dir, title=f"{spec.title or spec.name}: {variant.name if variant else spec.name}",
                extra_columns=[tuple(column) for column in spec.columns], stem="report")
    return reports, dict(phases.seconds, wall=wall)


def run(spec, out_dir, *, only=None, resume=False, device=None, argv=None):
    """Run every variant of spec (only: the named ones, keeping the other rows of
    out_dir/table.json) and write the table and the provenance; -> RunResult
    (None on the ranks other than 0 of a torchrun training)."""
    from ssdh_port.pipeline.report import read_table, write_readme, write_table

    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    commit = git_commit()  # the code that runs, before any of it runs
    out_dir = os.path.abspath(out_dir)
    expanded = spec.expanded()
    names = [variant.name for variant, _ in expanded if variant]
    unknown = sorted(set(only or ()) - set(names))
    if unknown:
        raise SSDHError(f"{spec.source or spec.name}: no variant(s) {unknown} (variants: {names or 'none'})")
    table_path = os.path.join(out_dir, "table.json")
    kept = []
    if only and os.path.isfile(table_path):
        kept = [r for r in read_table(table_path) if r.extra.get("variant") not in only]
    reports, runs, seconds, root = [], {}, {}, True
    for variant, variant_spec in expanded:
        name = variant.name if variant else ""
        if only and name not in only:
            continue
        run_dir = os.path.join(out_dir, "runs", name) if variant else out_dir
        runs[name] = run_dir
        done = os.path.join(run_dir, "report.json")
        if resume and os.path.isfile(done):
            logger.info("%s: %s exists, kept", name or spec.name, done)
            reports += read_table(done)
            continue
        logger.info("running %s%s into %s", spec.name, f" / {name}" if name else "", run_dir)
        rows, seconds[name] = run_variant(variant_spec, run_dir, variant, device=device)
        if rows is None:
            root = False
            continue
        reports += rows
    if not root:
        return None
    order = {n: i for i, n in enumerate(names)}
    rows = sorted(kept + reports, key=lambda r: order.get(r.extra.get("variant"), -1)) if names else reports
    table = write_table(rows, out_dir, title=spec.title or spec.name, notes=spec.notes,
                        extra_columns=[tuple(column) for column in spec.columns])
    with atomic_write(os.path.join(out_dir, "spec.toml"), "w") as f:
        f.write(spec_module.to_toml(spec))
    write_json(os.path.join(out_dir, "provenance.json"), provenance(spec, argv, started, seconds, commit))
    write_readme(out_dir)
    return RunResult(rows, out_dir, table, runs, seconds)


def provenance(spec, argv, started, seconds, commit):
    from ssdh_port.device import describe
    import ssdh_port
    import torch

    return {"schema": PROVENANCE_SCHEMA, "spec": spec.to_dict(), "spec_file": spec.source,
            "argv": list(sys.argv if argv is None else argv), "started": started,
            "commit": commit, "version": ssdh_port.__version__, "torch": torch.__version__,
            "machine": describe(torch.device("cpu")), "threads": torch.get_num_threads(),
            "seconds": seconds}


def git_commit():
    """The checkout's commit (with "+changes" when the tree differs from it), or
    None outside a git checkout."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        commit = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10)
        if commit.returncode:
            return None
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit.stdout.strip() + ("+changes" if dirty else "")
