"""Retrieval metrics against a direct NumPy transcription of the original
analysis/precision.m (one query at a time, MATLAB's stable sort)."""
import numpy as np
import pytest
import torch

from ssdh_port import ops
from ssdh_port.hashing import evaluate, hamming_distances


def precision_m(db_labels, db_codes, query_labels, query_codes, top_k, mode=1,
                relevant=lambda q, d: q == d):
    """Transcription of precision.m: per query, sort by distance (stable), walk the
    first top_k, AP = sum(P .* hit) / sum(hit)."""
    n_queries = query_codes.shape[0]
    ap = np.zeros(n_queries)
    precision_at = np.zeros((top_k, n_queries))
    ns = np.arange(1, top_k + 1)
    for i in range(n_queries):
        if mode == 1:
            dist = (db_codes != query_codes[i]).sum(axis=1)
        else:
            dist = np.sqrt(((db_codes - query_codes[i]) ** 2).sum(axis=1))
        order = np.argsort(dist, kind="stable")
        buffer_yes = np.zeros(top_k)
        for j in range(top_k):
            if relevant(query_labels[i], db_labels[order[j]]):
                buffer_yes[j] = 1
        p = np.cumsum(buffer_yes) / ns
        ap[i] = 0 if buffer_yes.sum() == 0 else (p * buffer_yes).sum() / buffer_yes.sum()
        precision_at[:, i] = np.cumsum(buffer_yes) / ns
    return ap.mean(), precision_at.mean(axis=1)


def _data(n_db=300, n_q=40, bits=12, classes=5, seed=0):
    rng = np.random.default_rng(seed)
    db_labels = rng.integers(0, classes, n_db)
    q_labels = rng.integers(0, classes, n_q)
    centres = rng.integers(0, 2, (classes, bits))
    flip = lambda labels: (centres[labels] ^ (rng.random((len(labels), bits)) < 0.25)).astype(np.uint8)
    return flip(db_labels), db_labels, flip(q_labels), q_labels


@pytest.mark.parametrize("topk", [1, 10, 100, 300])
def test_map_and_precision_match_precision_m(topk):
    db, db_labels, q, q_labels = _data()
    ref_map, ref_prec = precision_m(db_labels, db, q_labels, q, topk)
    result = evaluate(q, db, q_labels, db_labels, topk=topk)
    assert result["map"] == pytest.approx(ref_map, abs=1e-12)
    np.testing.assert_allclose(result["precision_at_k"], ref_prec, atol=1e-12)
    # Packed codes give the same numbers.
    packed = evaluate(ops.pack_bits(torch.from_numpy(q)), ops.pack_bits(torch.from_numpy(db)),
                      q_labels, db_labels, topk=topk)
    assert packed["map"] == pytest.approx(ref_map, abs=1e-12)


def test_euclidean_mode_matches_precision_m_mode_2():
    rng = np.random.default_rng(1)
    db, q = rng.normal(size=(200, 8)), rng.normal(size=(15, 8))
    db_labels, q_labels = rng.integers(0, 3, 200), rng.integers(0, 3, 15)
    ref_map, _ = precision_m(db_labels, db, q_labels, q, 50, mode=2)
    assert evaluate(q, db, q_labels, db_labels, topk=50, mode="euclidean")["map"] == pytest.approx(ref_map)


def test_ties_keep_database_order():
    # All database codes are at the same distance: the ranking is the database order.
    db = np.zeros((6, 4), np.uint8)
    q = np.ones((1, 4), np.uint8)
    db_labels = np.array([0, 1, 1, 0, 0, 1])
    result = evaluate(q, db, np.array([1]), db_labels, topk=3)
    # hits at ranks 2 and 3: AP = (1/2 + 2/3) / 2
    assert result["map"] == pytest.approx((0.5 + 2 / 3) / 2)


def test_precision_within_radius():
    q = np.array([[0, 0, 0, 0], [1, 1, 1, 1]], np.uint8)
    db = np.array([[0, 0, 0, 1], [0, 0, 1, 1], [0, 1, 1, 1], [0, 0, 0, 0]], np.uint8)
    db_labels = np.array([0, 1, 0, 0])
    result = evaluate(q, db, np.array([0, 1]), db_labels, topk=4, radius=2)
    # query 0 returns items 0, 1, 3 (2 relevant of 3); query 1 items 1, 2 (1 of 2)
    assert result["precision_within_radius"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    # nothing within radius 0 of query 1: counts as precision 0
    assert evaluate(q, db, np.array([0, 1]), db_labels, topk=4, radius=0)[
        "precision_within_radius"] == pytest.approx((1 / 1 + 0) / 2)


def test_multilabel_relevance():
    q = np.array([[0, 0]], np.uint8)
    db = np.array([[0, 0], [0, 1], [1, 1]], np.uint8)
    q_labels = np.array([[1, 1, 0]])
    db_labels = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 1]])
    any_shared = evaluate(q, db, q_labels, db_labels, topk=3, relevance="any")
    exact = evaluate(q, db, q_labels, db_labels, topk=3, relevance="exact")
    assert any_shared["map"] == pytest.approx(1.0)  # hits at ranks 1, 2
    assert exact["map"] == pytest.approx(0.5)  # the only hit at rank 2


def test_pr_curve_ends_at_full_recall():
    db, db_labels, q, q_labels = _data()
    result = evaluate(q, db, q_labels, db_labels, topk=10, pr_curve=True)
    assert result["pr_recall"][-1] == pytest.approx(1.0)
    assert np.all(np.diff(result["pr_recall"]) >= -1e-12)


def test_hamming_distances_exact():
    rng = np.random.default_rng(2)
    a = torch.from_numpy(rng.integers(0, 2, (7, 65)).astype(np.uint8))
    b = torch.from_numpy(rng.integers(0, 2, (9, 65)).astype(np.uint8))
    expected = (a[:, None, :] != b[None, :, :]).sum(dim=2).int()
    assert torch.equal(hamming_distances(a, b), expected)


@pytest.mark.parametrize("call, message", [
    (lambda: evaluate(np.zeros((2, 4)), np.zeros((3, 9)), [0, 1], [0, 1, 2], 2), "query codes have 1 bytes"),
    (lambda: evaluate(np.zeros((2, 4)), np.zeros((3, 4)), [0, 1], [0, 1], 2), "2 database labels for 3"),
    (lambda: evaluate(np.zeros((2, 4)), np.zeros((3, 4)), [0, 1], [0, 1, 2], 4), "topk must be between 1"),
    (lambda: evaluate(np.full((2, 4), 0.7), np.zeros((3, 4)), [0, 1], [0, 1, 2], 2), "must hold 0/1 bits"),
    (lambda: evaluate(np.zeros((2, 4)), np.zeros((3, 4)), [0, 1], [0, 1, 2], 2, relevance="all"),
     "relevance must be one of"),
])
def test_bad_input(call, message):
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.parametrize("relevance", ["any", "exact"])
def test_multilabel_map_matches_precision_m(relevance):
    db, _, q, _ = _data(n_db=200, n_q=25, bits=16)
    rng = np.random.default_rng(5)
    db_labels = (rng.random((200, 4)) < 0.4).astype(np.int64)
    q_labels = (rng.random((25, 4)) < 0.4).astype(np.int64)
    rule = (lambda a, b: bool((a & b).any())) if relevance == "any" else (lambda a, b: bool((a == b).all()))
    ref_map, ref_prec = precision_m(db_labels, db, q_labels, q, 50, relevant=rule)
    result = evaluate(q, db, q_labels, db_labels, topk=50, relevance=relevance)
    assert result["map"] == pytest.approx(ref_map, abs=1e-12)
    np.testing.assert_allclose(result["precision_at_k"], ref_prec, atol=1e-12)


def _dnnh_transcription(q_bits, d_bits, q_labels, d_labels, top, compat):
    """caffe-dnnh's evaluate_map written out from docs/SPEC.md, one query at a time."""
    pool = len(d_bits)
    total, per_class_sum, per_class_n = 0.0, {}, {}
    for b, label in zip(q_bits, q_labels):
        distance = (b[None, :] != d_bits).sum(axis=1)
        order = np.argsort(distance, kind="stable")
        found, value = 0, 0.0
        for i in range(min(top, pool)):
            if d_labels[order[i]] == label:
                found += 1
                value += found / (i + 1)
        divisor = min(pool // 10, top) if compat else min(int((d_labels == label).sum()), top)
        ap = value / divisor if divisor else 0.0
        total += ap
        per_class_sum[label] = per_class_sum.get(label, 0.0) + ap
        per_class_n[label] = per_class_n.get(label, 0) + 1
    extra = 1 if compat else 0
    return total / (len(q_bits) + extra), {c: per_class_sum[c] / (per_class_n[c] + extra) for c in per_class_sum}


@pytest.mark.parametrize("compat", [False, True])
@pytest.mark.parametrize("top", [7, 60, 1000])
def test_dnnh_map_is_caffe_dnnhs_evaluate_map(compat, top):
    from ssdh_port.hashing import dnnh_map

    rng = np.random.default_rng(5)
    q_bits = rng.integers(0, 2, (25, 4))   # 4 bits: distances 0..4, many ties
    d_bits = rng.integers(0, 2, (130, 4))
    q_labels = rng.integers(0, 10, 25)
    d_labels = rng.integers(0, 7, 130)     # classes 7..9 absent from the database: AP 0
    got = dnnh_map(q_bits, d_bits, q_labels, d_labels, top=top, compat=compat)
    expected, per_class = _dnnh_transcription(q_bits, d_bits, q_labels, d_labels, top, compat)
    assert got["map"] == pytest.approx(expected, rel=1e-12)
    assert got["per_class"].keys() == per_class.keys()
    for c in per_class:
        assert got["per_class"][c] == pytest.approx(per_class[c], rel=1e-12)


def test_dnnh_map_over_the_whole_pool_is_the_whole_ranking_map():
    from ssdh_port.hashing import dnnh_map

    rng = np.random.default_rng(6)
    q_bits, d_bits = rng.integers(0, 2, (40, 12)), rng.integers(0, 2, (300, 12))
    q_labels, d_labels = rng.integers(0, 5, 40), rng.integers(0, 5, 300)
    clean = dnnh_map(q_bits, d_bits, q_labels, d_labels, top=300)
    assert clean["map"] == pytest.approx(evaluate(q_bits, d_bits, q_labels, d_labels, topk=None)["map"], rel=1e-12)
