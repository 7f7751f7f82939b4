"""Results tables: a list of RetrievalReports -> table.md (for people) and
table.json (for programs), one layout for every experiment.

table.json = {"schema": "ssdh_port.report/1", "title": ..., "notes": ...,
"machine": ..., "rows": [RetrievalReport fields]}; read_table() reads it back.
Percentages in the Markdown table, fractions in the JSON.
"""
import json
import os

from ssdh_port.fileio import atomic_write, write_json
from ssdh_port.device import cpu_name
from ssdh_port.errors import SSDHError
from ssdh_port.pipeline.evaluate import RetrievalReport

SCHEMA = "ssdh_port.report/1"


def machine():
    """What ran it: processor and CPU count."""
    return f"{cpu_name()}, {os.cpu_count()} CPUs"


def _pct(value):
    return "-" if value is None else f"{100 * value:.2f}"


def columns(reports, extra_columns=()):
    """(header, cell function) pairs of the protocol row, with extra columns
    (header, key of report.extra, format) appended."""
    topks = {r.topk for r in reports}
    radii = {r.radius for r in reports if r.radius is not None}
    top = f"mAP@{topks.pop()}" if len(topks) == 1 else "mAP@topk"
    radius = f"P(r<={radii.pop()})" if len(radii) == 1 else "P(r<=radius)"
    cols = [("method", lambda r: r.method),
            ("bits", lambda r: "-" if r.bits is None else str(r.bits))]
    if any(r.relevance != "any" for r in reports):
        cols.append(("relevance", lambda r: r.relevance))
    metrics = [(top, lambda r: r.map_at_topk), ("mAP (whole ranking)", lambda r: r.map_whole_ranking),
               ("P@1000", lambda r: r.precision_at_1000), (radius, lambda r: r.precision_within_radius)]
    # A metric no row has (instance search has no cut-off, no P@1000, no radius) is left out.
    cols += [(header, lambda r, value=value: _pct(value(r))) for header, value in metrics
             if any(value(r) is not None for r in reports)]
    if any(r.classification_accuracy is not None for r in reports):
        cols.append(("accuracy", lambda r: _pct(r.classification_accuracy)))
    for header, key, fmt in extra_columns:
        cols.append((header, lambda r, key=key, fmt=fmt: "-" if r.extra.get(key) is None
                     else fmt.format(r.extra[key])))
    if any(r.seconds is not None for r in reports):
        cols.append(("seconds", lambda r: "-" if r.seconds is None else f"{r.seconds:.0f}"))
    return cols


def markdown_table(reports, extra_columns=()):
    cols = columns(reports, extra_columns)
    lines = ["| " + " | ".join(h for h, _ in cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(r) for _, cell in cols) + " |" for r in reports]
    return "\n".join(lines)


def write_table(reports, out_dir, *, title, notes="", extra_columns=(), stem="table", **meta):
    """Write out_dir/<stem>.md and <stem>.json; returns the Markdown text."""
    if not reports:
        raise SSDHError(f"{out_dir}: no results to tabulate")
    os.makedirs(out_dir, exist_ok=True)
    text = f"# {title}\n\n{markdown_table(reports, extra_columns)}\n"
    if notes:
        text += f"\n{notes}\n"
    text += f"\nMachine: {machine()}.\n"
    with atomic_write(os.path.join(out_dir, f"{stem}.md"), "w") as f:
        f.write(text)
    payload = {"schema": SCHEMA, "title": title, "notes": notes, "machine": machine(), **meta,
               "rows": [r.to_dict() for r in reports]}
    write_json(os.path.join(out_dir, f"{stem}.json"), payload)
    return text


def read_table(path):
    """The RetrievalReports of a table.json (a run's report.json has the same layout;
    one written before the runner, {"report": row}, is read too)."""
    try:
        with open(path) as f:
            payload = json.load(f)
    except (OSError, ValueError) as err:
        raise SSDHError(f"{path}: not a readable results file ({err})") from None
    if payload.get("schema") != SCHEMA:
        raise SSDHError(f"{path}: schema {payload.get('schema')!r}, expected {SCHEMA!r}")
    rows = payload["rows"] if "rows" in payload else [payload["report"]]
    return [RetrievalReport.from_dict(row) for row in rows]


def write_readme(folder):
    """folder/README.md, made from what the folder holds: its table (table.md), the
    narrative written beside it (notes.md), how it was made (provenance.json) and
    the tables of its sub-folders. Returns the path."""
    parts = []
    table = os.path.join(folder, "table.md")
    if os.path.isfile(table):
        parts.append(open(table).read().strip())
    notes = os.path.join(folder, "notes.md")
    if os.path.isfile(notes):
        parts.append(open(notes).read().strip())
    provenance = os.path.join(folder, "provenance.json")
    if os.path.isfile(provenance):
        with open(provenance) as f:
            record = json.load(f)
        argv = " ".join(record.get("argv") or [])
        parts.append(f"Made by `{argv}` at commit {record.get('commit') or '(none)'} on {record.get('machine')} "
                     f"({record.get('started')}); the spec as run: [spec.toml](spec.toml).")
    below = sorted(os.path.relpath(path, folder) for path in _tables_below(folder))
    if below:
        parts.append("Tables in this folder:\n\n" + "\n".join(f"- [{os.path.dirname(p)}]({p})" for p in below))
    if not parts:
        raise SSDHError(f"{folder}: no table.md, notes.md or tables below it to make a README of")
    path = os.path.join(folder, "README.md")
    with atomic_write(path, "w") as f:
        f.write("\n\n".join(parts) + "\n")
    return path


def _tables_below(folder):
    for name in sorted(os.listdir(folder)):
        sub = os.path.join(folder, name)
        if os.path.isdir(sub) and name != "runs" and os.path.isfile(os.path.join(sub, "table.md")):
            yield os.path.join(sub, "table.md")
