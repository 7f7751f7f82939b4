"""Evaluation under the original protocol, as one typed report.

RetrievalReport is the one schema of every evaluation this project writes: a
row of a results table, a run's report.json, the output of
tools/eval_retrieval.py. Its fields:

  method, bits, queries, database, relevance ("any" / "exact" for multi-label)
  topk                     the mAP cut-off (1000 in the papers' tables)
  map_at_topk              mAP over the first topk ranks (precision.m); None for instance search
  map_whole_ranking        mAP over the whole ranking (the authors' README)
  precision_at             {k: precision@k} for k = 100, 200, 400, 600, 800, 1000
  radius, precision_within_radius   precision of the items within Hamming radius r
  classification_accuracy  of the net's classifier on the queries (when known)
  seconds                  wall time of the run that made the codes (when known)
  extra                    anything else a table shows (loss weights, p, command ...)

Metrics left out (e.g. the radius for real-valued features) are None.
"""
import dataclasses

import numpy as np

from ssdh_port.device import resolve_device
from ssdh_port.errors import SSDHError
from ssdh_port.hashing.metrics import evaluate

P_AT = (100, 200, 400, 600, 800, 1000)


@dataclasses.dataclass
class RetrievalReport:
    method: str
    bits: int | None
    queries: int
    database: int
    topk: int
    map_at_topk: float | None
    map_whole_ranking: float | None = None
    precision_at: dict = dataclasses.field(default_factory=dict)
    radius: int | None = None
    precision_within_radius: float | None = None
    relevance: str = "any"
    classification_accuracy: float | None = None
    seconds: float | None = None
    extra: dict = dataclasses.field(default_factory=dict)

    @property
    def precision_at_1000(self):
        return self.precision_at.get("1000")

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, fields):
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise SSDHError(f"report fields {unknown} are not RetrievalReport fields {sorted(known)}")
        return cls(**fields)


@dataclasses.dataclass
class Evaluation:
    """A report with the curves behind it (for plots)."""
    report: RetrievalReport
    precision_at_k: np.ndarray
    pr_precision: np.ndarray | None = None
    pr_recall: np.ndarray | None = None


def retrieval_report(query, database, query_labels, db_labels, *, method, topk=1000, whole_ranking=True,
                     radius=2, relevance="any", mode="hamming", device="cpu", curves=False, **known):
    """Evaluate codes (or, mode="euclidean", real features) under the protocol:
    mAP@topk (topk=None or 0: the whole ranking), optionally the whole-ranking mAP too,
    P@k, and the precision within Hamming radius `radius`. known: the other
    RetrievalReport fields (bits, classification_accuracy, seconds, extra).
    Returns an Evaluation when curves=True, else the RetrievalReport."""
    device = resolve_device(device)
    n_db = len(db_labels)
    cut = n_db if not topk else min(int(topk), n_db)
    common = dict(relevance=relevance, mode=mode)
    top = evaluate(query, database, query_labels, db_labels, topk=cut, radius=radius,
                   pr_curve=curves and mode == "hamming", device=device, **common)
    whole = None
    if cut == n_db:
        whole = top["map"]
    elif whole_ranking:
        whole = evaluate(query, database, query_labels, db_labels, topk=None, radius=radius,
                         device=device, **common)["map"]
    curve = top["precision_at_k"]
    report = RetrievalReport(
        method=method, queries=len(query_labels), database=n_db, topk=cut, map_at_topk=top["map"],
        map_whole_ranking=whole,
        precision_at={str(k): float(curve[k - 1]) for k in P_AT if k <= len(curve)},
        radius=radius if mode == "hamming" else None,
        precision_within_radius=top.get("precision_within_radius"), relevance=relevance,
        **{"bits": known.pop("bits", None), **known})
    if not curves:
        return report
    return Evaluation(report, curve, top.get("pr_precision"), top.get("pr_recall"))


def evaluate_code_files(query_path, db_path, *, method=None, topk=1000, radius=2, relevance="any",
                        device="cpu", curves=True):
    """Evaluate two code files (ssdh_port.hashing.index format) with their labels."""
    from ssdh_port.hashing.index import HammingIndex, IndexFileError

    query, db = HammingIndex.load(query_path), HammingIndex.load(db_path)
    if query.labels is None or db.labels is None:
        raise IndexFileError(f"{query_path} / {db_path}: code files without labels cannot be evaluated")
    if query.bits != db.bits:
        raise IndexFileError(f"{query_path} has {query.bits}-bit codes, {db_path} {db.bits}-bit ones")
    return retrieval_report(query.codes, db.codes, query.labels.numpy(), db.labels.numpy(),
                            method=method or str(query_path), topk=topk, radius=radius,
                            relevance=relevance, device=device, curves=curves, bits=query.bits)


def sampled_curve(curve, points=1000):
    """{k: precision@k} of a precision@k array: every k up to 1000, then `points`
    evenly spaced ranks (a whole-ranking curve stays small in a JSON file)."""
    n = len(curve)
    ks = np.unique(np.concatenate([np.arange(1, min(n, 1000) + 1),
                                   np.linspace(1, n, points).round().astype(int)]))
    return {int(k): round(float(curve[k - 1]), 6) for k in ks}


def dnnh_metric(query_path, db_path, top=10000, compat=False):
    """{"dnnh_map", "dnnh_per_class", "dnnh_top", "dnnh_compat"} of two code files
    (caffe-dnnh's evaluate_map, ssdh_port.hashing.metrics.dnnh_map)."""
    from ssdh_port.hashing.index import HammingIndex, IndexFileError
    from ssdh_port.hashing.metrics import dnnh_map

    query, db = HammingIndex.load(query_path), HammingIndex.load(db_path)
    if query.labels is None or db.labels is None:
        raise IndexFileError(f"{query_path} / {db_path}: code files without labels cannot be evaluated")
    result = dnnh_map(query.codes, db.codes, query.labels.numpy(), db.labels.numpy(), top=top, compat=compat)
    return {"dnnh_map": result["map"], "dnnh_per_class": {str(k): v for k, v in result["per_class"].items()},
            "dnnh_top": top, "dnnh_compat": compat}
