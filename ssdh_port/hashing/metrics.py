"""Retrieval metrics with the original protocol (analysis/precision.m; SPEC.md
section 2).

Ranking is by Hamming distance on binary codes (or Euclidean distance on real
features), ascending, with ties kept in database order (MATLAB's stable sort).
For a cut-off k:

* precision@j = relevant among the first j / j, averaged over queries, j <= k;
* AP of a query = sum of precision@j over the relevant positions j <= k, divided
  by the number of relevant items within the first k (0 if none); mAP = mean AP;
* precision within Hamming radius r: relevant / returned among the items at
  distance <= r, 0 for a query that returns nothing;
* precision-recall over the Hamming radii 0..K, averaged over queries.

Codes are given either as 0/1 arrays (bool, float or any integer type other than
uint8), N x K, or packed as ssdh_port.ops.pack_bits returns them (uint8, N x
ceil(K/8)). Labels are class ids (N) or multi-hot rows (N x M).
"""
import numpy as np
import torch

from ssdh_port import ops
from ssdh_port.hashing.codes import as_bits, as_packed

RELEVANCE = ("any", "exact")


def _as_tensor(x):
    return x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))


def _check_labels(query_labels, db_labels, n_queries, n_db):
    q, d = _as_tensor(query_labels), _as_tensor(db_labels)
    if q.dim() not in (1, 2) or q.dim() != d.dim():
        raise ValueError(
            "labels must be class ids (N) or multi-hot rows (N x M) for both queries and "
            f"database, got shapes {tuple(q.shape)} and {tuple(d.shape)}"
        )
    if q.shape[0] != n_queries or d.shape[0] != n_db:
        raise ValueError(
            f"{q.shape[0]} query labels for {n_queries} queries, {d.shape[0]} database "
            f"labels for {n_db} items"
        )
    if q.dim() == 2 and q.shape[1] != d.shape[1]:
        raise ValueError(f"multi-hot labels have {q.shape[1]} and {d.shape[1]} columns")
    return q, d


def relevance_matrix(query_labels, db_labels, relevance="any"):
    """B x N bool: is database item n relevant to query b."""
    if relevance not in RELEVANCE:
        raise ValueError(f"relevance must be one of {RELEVANCE}, got {relevance!r}")
    if query_labels.dim() == 1:
        return query_labels[:, None] == db_labels[None, :]
    q, d = query_labels.bool(), db_labels.bool()
    if relevance == "any":
        return (q.float() @ d.float().T) > 0
    return (q[:, None, :] == d[None, :, :]).all(dim=2)


def _distances(query, db, mode):
    if mode == "euclidean":
        return torch.cdist(query.double(), db.double(), compute_mode="donot_use_mm_for_euclid_dist")
    raise ValueError(f"mode must be 'hamming' or 'euclidean', got {mode!r}")


def evaluate(query_codes, db_codes, query_labels, db_labels, topk, radius=2,
             relevance="any", mode="hamming", batch_size=256, pr_curve=False):
    """The papers' retrieval metrics; returns a dict with

    map (mAP@topk), precision_at_k (array over j = 1..topk), precision_within_radius
    (Hamming mode), and with pr_curve=True, pr_precision / pr_recall over radii 0..K.
    topk=None ranks the whole database (the authors' README protocol).
    """
    if mode == "hamming":
        query, db = as_packed(query_codes, "query_codes"), as_packed(db_codes, "db_codes")
        if query.shape[1] != db.shape[1]:
            raise ValueError(
                f"query codes have {query.shape[1]} bytes ({8 * query.shape[1]} bits with "
                f"padding), database codes {db.shape[1]}")
    else:
        query, db = _as_tensor(query_codes).double(), _as_tensor(db_codes).double()
    n_queries, n_db = query.shape[0], db.shape[0]
    if n_queries == 0 or n_db == 0:
        raise ValueError(f"evaluate needs queries and a database, got {n_queries} and {n_db}")
    q_labels, d_labels = _check_labels(query_labels, db_labels, n_queries, n_db)
    k = n_db if topk is None else int(topk)
    if not 1 <= k <= n_db:
        raise ValueError(f"topk must be between 1 and the database size {n_db}, got {topk}")

    ap = torch.zeros(n_queries, dtype=torch.float64)
    hits_at = torch.zeros(k, dtype=torch.float64)
    in_radius = torch.zeros(n_queries, dtype=torch.float64)
    bits = query.shape[1] * 8 if mode == "hamming" else 0
    pr_rel = torch.zeros(bits + 1, dtype=torch.float64)
    pr_prec = torch.zeros(bits + 1, dtype=torch.float64)
    ranks = torch.arange(1, k + 1, dtype=torch.float64)
    for start in range(0, n_queries, batch_size):
        stop = min(start + batch_size, n_queries)
        relevant = relevance_matrix(q_labels[start:stop], d_labels, relevance)
        if mode == "hamming":
            # Exact counting top-k: equal distances stay in database order, as the
            # original's stable sort keeps them.
            order = ops.hamming_topk(query[start:stop], db, k)[1]
            dist = ops.hamming_distance(query[start:stop], db)
        else:
            dist = _distances(query[start:stop], db, mode)
            order = torch.sort(dist, dim=1, stable=True).indices[:, :k]
        hits = torch.gather(relevant, 1, order).double()
        cum = hits.cumsum(dim=1)
        n_rel = cum[:, -1]
        ap[start:stop] = torch.where(
            n_rel > 0, (cum / ranks * hits).sum(dim=1) / n_rel.clamp(min=1), 0.0)
        hits_at += cum.sum(dim=0)
        if mode == "hamming":
            within = dist <= radius
            returned = within.sum(dim=1).double()
            found = (within & relevant).sum(dim=1).double()
            in_radius[start:stop] = torch.where(returned > 0, found / returned.clamp(min=1), 0.0)
            if pr_curve:
                rel_prec, rel_recall = _pr_by_radius(dist, relevant, bits)
                pr_prec += rel_prec
                pr_rel += rel_recall
    result = {
        "map": float(ap.mean()),
        "ap": ap.numpy(),
        "precision_at_k": (hits_at / (ranks * n_queries)).numpy(),
        "topk": k,
    }
    if mode == "hamming":
        result["precision_within_radius"] = float(in_radius.mean())
        result["radius"] = radius
        if pr_curve:
            result["pr_precision"] = (pr_prec / n_queries).numpy()
            result["pr_recall"] = (pr_rel / n_queries).numpy()
    return result


def _pr_by_radius(dist, relevant, bits):
    """Sums over the batch of precision and recall at each radius 0..bits."""
    d = dist.long()
    rows = torch.arange(d.shape[0])[:, None].expand_as(d)
    flat = rows * (bits + 1) + d
    size = d.shape[0] * (bits + 1)
    returned = torch.bincount(flat.flatten(), minlength=size).view(-1, bits + 1).cumsum(1)
    found = torch.bincount(flat[relevant], minlength=size).view(-1, bits + 1).cumsum(1)
    total = relevant.sum(dim=1, keepdim=True)
    precision = torch.where(returned > 0, found / returned.clamp(min=1), 0.0).double()
    recall = torch.where(total > 0, found / total.clamp(min=1), 0.0).double()
    return precision.sum(dim=0), recall.sum(dim=0)
