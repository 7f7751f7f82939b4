"""Retrieval metrics with the original protocol (analysis/precision.m; docs/SPEC.md
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
from ssdh_port.errors import SSDHError
from ssdh_port.hashing.codes import as_packed

RELEVANCE = ("any", "exact")


def _as_tensor(x):
    return x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))


def _check_labels(query_labels, db_labels, n_queries, n_db):
    q, d = _as_tensor(query_labels), _as_tensor(db_labels)
    if q.dim() not in (1, 2) or q.dim() != d.dim():
        raise SSDHError(
            "labels must be class ids (N) or multi-hot rows (N x M) for both queries and "
            f"database, got shapes {tuple(q.shape)} and {tuple(d.shape)}"
        )
    if q.shape[0] != n_queries or d.shape[0] != n_db:
        raise SSDHError(
            f"{q.shape[0]} query labels for {n_queries} queries, {d.shape[0]} database "
            f"labels for {n_db} items"
        )
    if q.dim() == 2 and q.shape[1] != d.shape[1]:
        raise SSDHError(f"multi-hot labels have {q.shape[1]} and {d.shape[1]} columns")
    return q, d


def relevance_matrix(query_labels, db_labels, relevance="any"):
    """B x N bool: is database item n relevant to query b."""
    if relevance not in RELEVANCE:
        raise SSDHError(f"relevance must be one of {RELEVANCE}, got {relevance!r}")
    if query_labels.dim() == 1:
        return query_labels[:, None] == db_labels[None, :]
    q, d = query_labels.bool(), db_labels.bool()
    if relevance == "any":
        return (q.float() @ d.float().T) > 0
    return (q[:, None, :] == d[None, :, :]).all(dim=2)


def label_words(query_labels, db_labels, relevance="any"):
    """Labels as the int64 words ops.hamming_rank_stats compares: (query words
    Q x W, database words N x W, exact). Class ids are one word compared for
    equality; multi-hot rows are packed 64 labels per word, relevant when a bit
    is shared (any) or when all are equal (exact)."""
    if relevance not in RELEVANCE:
        raise SSDHError(f"relevance must be one of {RELEVANCE}, got {relevance!r}")
    if query_labels.dim() == 1:
        for name, ids in (("query", query_labels), ("database", db_labels)):
            if ids.is_floating_point() and not torch.equal(ids, ids.round()):
                raise SSDHError(f"{name} class ids must be whole numbers")
        return query_labels.long()[:, None], db_labels.long()[:, None], True
    return _pack_labels(query_labels), _pack_labels(db_labels), relevance == "exact"


def _pack_labels(multi_hot):
    """N x M multi-hot (nonzero = label present) -> N x ceil(M/64) int64 words."""
    n, m = multi_hot.shape
    words = max(1, -(-m // 64))
    present = torch.zeros(n, words * 64, dtype=torch.int64)
    present[:, :m] = (multi_hot != 0).long()
    # Distinct powers of two: their sum is their bitwise or (bit 63 wraps to the sign).
    return (present.view(n, words, 64) << torch.arange(64)).sum(dim=2)


def evaluate(query_codes, db_codes, query_labels, db_labels, topk, radius=2,
             relevance="any", mode="hamming", batch_size=256, pr_curve=False, device="cpu"):
    """The papers' retrieval metrics; returns a dict with

    map (mAP@topk), precision_at_k (array over j = 1..topk), precision_within_radius
    (Hamming mode), and with pr_curve=True, pr_precision / pr_recall over radii 0..K.
    topk=None ranks the whole database (the authors' README protocol).
    device: where the Hamming ranking runs ("cuda" uses the CUDA kernel); the
    results come back on the CPU.
    """
    if mode not in ("hamming", "euclidean"):
        raise SSDHError(f"mode must be 'hamming' or 'euclidean', got {mode!r}")
    if mode == "hamming":
        query = as_packed(query_codes, "query_codes").cpu()
        db = as_packed(db_codes, "db_codes").cpu()
        if query.shape[1] != db.shape[1]:
            raise SSDHError(
                f"query codes have {query.shape[1]} bytes ({8 * query.shape[1]} bits with "
                f"padding), database codes {db.shape[1]}")
    else:
        query, db = _as_tensor(query_codes).double(), _as_tensor(db_codes).double()
    n_queries, n_db = query.shape[0], db.shape[0]
    if n_queries == 0 or n_db == 0:
        raise SSDHError(f"evaluate needs queries and a database, got {n_queries} and {n_db}")
    q_labels, d_labels = _check_labels(query_labels, db_labels, n_queries, n_db)
    k = n_db if topk is None else int(topk)
    if not 1 <= k <= n_db:
        raise SSDHError(f"topk must be between 1 and the database size {n_db}, got {topk}")

    ranks = torch.arange(1, k + 1, dtype=torch.float64)
    if mode == "hamming":
        ap, hits_at, in_radius, pr_prec, pr_rel = _hamming_stats(
            query, db, q_labels, d_labels, k, radius, relevance, torch.device(device))
    else:
        ap, hits_at = _euclidean_stats(query, db, q_labels, d_labels, k, relevance, batch_size)
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


def _hamming_stats(query, db, q_labels, d_labels, k, radius, relevance, device):
    """AP, cumulative hits per rank, precision within the radius and the
    summed PR terms over radii, from one native call (counting passes per
    query, ties in database order) on `device`."""
    q_words, d_words, exact = label_words(q_labels, d_labels, relevance)
    stats = ops.hamming_rank_stats(query.to(device), db.to(device), q_words.to(device),
                                   d_words.to(device), k, exact)
    ap, hits, hist_all, hist_rel = (t.cpu() for t in stats)
    cum_all, cum_rel = hist_all.cumsum(dim=1).double(), hist_rel.cumsum(dim=1).double()
    r = min(int(radius), cum_all.shape[1] - 1)
    in_radius = torch.where(cum_all[:, r] > 0, cum_rel[:, r] / cum_all[:, r].clamp(min=1), 0.0)
    total = cum_rel[:, -1:]
    pr_prec = torch.where(cum_all > 0, cum_rel / cum_all.clamp(min=1), 0.0).sum(dim=0)
    pr_rel = torch.where(total > 0, cum_rel / total.clamp(min=1), 0.0).sum(dim=0)
    return ap, hits.double(), in_radius, pr_prec, pr_rel


def _euclidean_stats(query, db, q_labels, d_labels, k, relevance, batch_size):
    """AP and cumulative hits per rank of the exact Euclidean ranking, by batches."""
    ap = torch.zeros(len(query), dtype=torch.float64)
    hits_at = torch.zeros(k, dtype=torch.float64)
    for start in range(0, len(query), batch_size):
        stop = min(start + batch_size, len(query))
        relevant = relevance_matrix(q_labels[start:stop], d_labels, relevance)
        # Stable sort: equal distances stay in database order, as in the original.
        dist = torch.cdist(query[start:stop], db, compute_mode="donot_use_mm_for_euclid_dist")
        order = torch.sort(dist, dim=1, stable=True).indices[:, :k]
        hits = torch.gather(relevant, 1, order)
        ap[start:stop] = average_precision(hits)
        # Summed over queries, the cumulative hits at each rank are the
        # cumulative sum of the per-rank hit counts.
        hits_at += hits.sum(dim=0, dtype=torch.float64).cumsum(dim=0)
    return ap, hits_at


def average_precision(hits):
    """AP of each row of a B x k bool hit matrix: the mean over the hits of
    (hits so far) / (rank), 0 for a row without hits. Works on the hit
    positions only, so a whole-ranking evaluation stays cheap."""
    rows, cols = hits.nonzero(as_tuple=True)
    counts = hits.sum(dim=1)
    first = torch.cumsum(counts, 0) - counts  # index of each row's first hit
    rank_among_hits = torch.arange(len(rows)) - first[rows] + 1
    terms = rank_among_hits.double() / (cols + 1).double()
    sums = torch.zeros(len(hits), dtype=torch.float64).index_add_(0, rows, terms)
    return torch.where(counts > 0, sums / counts.clamp(min=1), 0.0)


def dnnh_map(query_codes, db_codes, query_labels, db_labels, top=10000, compat=False, batch_size=128):
    """caffe-dnnh's evaluate_map (docs/SPEC.md section 1, DNNH) -> {"map", "per_class"}.

    Relevant = same class id; database ranked by Hamming distance, ties in
    database order. A query's AP is the sum, over the first `top` ranks i (from 1)
    holding a relevant item, of (relevant items so far) / i, divided by
    min(relevant items in the database, top). compat=True reproduces the
    original program's divisors: min(database size // 10, top) for every query
    (the original assumed ten balanced classes) and Q + 1 for the mean. Per-class
    values average the APs of the queries of each class (over Q_c + 1 with compat)."""
    query = as_packed(query_codes, "query_codes").cpu()
    db = as_packed(db_codes, "db_codes").cpu()
    if query.shape[1] != db.shape[1]:
        raise SSDHError(f"query codes have {query.shape[1]} bytes per code, database codes {db.shape[1]}")
    q_labels = np.asarray(query_labels).reshape(-1).astype(np.int64)
    d_labels = np.asarray(db_labels).reshape(-1).astype(np.int64)
    if len(q_labels) != len(query) or len(d_labels) != len(db) or len(db) == 0 or len(query) == 0:
        raise SSDHError(f"dnnh_map: {len(query)} queries with {len(q_labels)} labels, {len(db)} database codes "
                        f"with {len(d_labels)} labels (both need at least one)")
    top = int(top)
    if top < 1:
        raise SSDHError(f"dnnh_map: top must be >= 1, got {top}")
    k = min(top, len(db))
    classes, counts = np.unique(d_labels, return_counts=True)
    relevant_in_db = dict(zip(classes.tolist(), counts.tolist()))
    d_tensor = torch.from_numpy(d_labels)
    ap = np.zeros(len(query), dtype=np.float64)
    for start in range(0, len(query), batch_size):
        stop = min(start + batch_size, len(query))
        _, order = ops.hamming_topk(query[start:stop], db, k)
        hits = (d_tensor[order] == torch.from_numpy(q_labels[start:stop])[:, None]).double()
        ranks = torch.arange(1, k + 1, dtype=torch.float64)
        sums = (hits * hits.cumsum(dim=1) / ranks).sum(dim=1).numpy()
        for row, label in enumerate(q_labels[start:stop]):
            divisor = min(len(db) // 10, top) if compat else min(relevant_in_db.get(int(label), 0), top)
            ap[start + row] = sums[row] / divisor if divisor else 0.0
    extra = 1 if compat else 0
    per_class = {int(c): float(ap[q_labels == c].sum() / ((q_labels == c).sum() + extra))
                 for c in np.unique(q_labels)}
    return {"map": float(ap.sum() / (len(ap) + extra)), "per_class": per_class}


def instance_average_precision(ranked_ids, good, ok, junk):
    """Average precision of one instance query, as the Oxford / Paris buildings'
    compute_ap: the positives are good + ok; junk items are skipped as if absent
    from the ranking; precision-recall by the trapezoid rule, from precision 1 at
    recall 0. ranked_ids: the gallery's ids (or names) in ranked order."""
    positives = set(good) | set(ok)
    junk = set(junk)
    if not positives:
        raise SSDHError("instance_average_precision: the query has no good or ok images")
    ap, old_recall, old_precision, found, rank = 0.0, 0.0, 1.0, 0, 0
    for item in ranked_ids:
        if item in junk:
            continue
        if item in positives:
            found += 1
        recall, precision = found / len(positives), found / (rank + 1)
        ap += (recall - old_recall) * (old_precision + precision) / 2
        old_recall, old_precision = recall, precision
        rank += 1
    return ap
