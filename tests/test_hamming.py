"""Exact Hamming search (hamming_topk, hamming_radius, hamming_distance) against
a NumPy reference: brute-force distances and a stable sort."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from ssdh_port import ops
from ssdh_port.hashing import metrics


def _codes(n, bits, seed, clustered=False):
    rng = np.random.default_rng(seed)
    if clustered:  # few distinct codes: many ties
        base = rng.integers(0, 2, (4, bits))
        bits01 = base[rng.integers(0, 4, n)] ^ (rng.random((n, bits)) < 0.05)
    else:
        bits01 = rng.integers(0, 2, (n, bits))
    return ops.pack_bits(torch.from_numpy(bits01.astype(np.uint8))), bits01


def _reference(q_bits, db_bits):
    dist = (q_bits[:, None, :] != db_bits[None, :, :]).sum(axis=2)
    order = np.argsort(dist, axis=1, kind="stable")
    return dist, order


@pytest.mark.parametrize("bits", [1, 12, 24, 32, 40, 48, 56, 64, 65, 128, 256, 512, 520, 1024, 4096])
@pytest.mark.parametrize("clustered", [False, True])
def test_topk_matches_stable_sort(bits, clustered):
    # 300 codes: a partial last group of 8; 23 queries: blocks of 8, 4 and 1.
    db, db_bits = _codes(300, bits, 1, clustered)
    q, q_bits = _codes(23, bits, 2, clustered)
    dist, order = _reference(q_bits, db_bits)
    for k in (1, 10, 300):
        d, i = ops.hamming_topk(q, db, k)
        assert d.dtype == torch.int32 and i.dtype == torch.int64
        np.testing.assert_array_equal(i.numpy(), order[:, :k])
        np.testing.assert_array_equal(d.numpy(), np.take_along_axis(dist, order[:, :k], axis=1))
    np.testing.assert_array_equal(ops.hamming_distance(q, db).numpy(), dist)


@pytest.mark.parametrize("bits", [8, 16, 24, 32, 48, 64, 128, 256, 512])
@pytest.mark.parametrize("rows, queries", [(257, 1), (4097, 6), (8195, 9)])
def test_vector_scans_at_odd_sizes(bits, rows, queries):
    """Rows eight to a vector (up to 32 bits), four (up to 64 bits) and in pairs (128 bits) with the last rows
    apart, database blocks of 4,096 with a remainder, query groups of four with a
    remainder: the same as the definition, for top-k and for all distances."""
    db, db_bits = _codes(rows, bits, 5, clustered=True)
    q, q_bits = _codes(queries, bits, 6, clustered=True)
    dist, order = _reference(q_bits, db_bits)
    d, i = ops.hamming_topk(q, db, 50)
    np.testing.assert_array_equal(i.numpy(), order[:, :50])
    np.testing.assert_array_equal(d.numpy(), np.take_along_axis(dist, order[:, :50], axis=1))
    # The block distances (a database block of 4,096 rows, an odd last row for 128 bits).
    np.testing.assert_array_equal(ops.hamming_distance(q, db).numpy(), dist)


@pytest.mark.parametrize("bits", [8, 48, 64, 100, 256, 512, 1000])
def test_radius_matches_reference(bits):
    db, db_bits = _codes(400, bits, 3, clustered=True)
    q, q_bits = _codes(9, bits, 4, clustered=True)
    dist, order = _reference(q_bits, db_bits)
    for radius in (0, 2, bits // 4, bits):
        lims, d, i = ops.hamming_radius(q, db, radius)
        assert lims[0] == 0 and lims[-1] == len(i)
        for row in range(len(q)):
            expected = [j for j in order[row] if dist[row, j] <= radius]
            got = i[lims[row]:lims[row + 1]].numpy()
            np.testing.assert_array_equal(got, expected)
            np.testing.assert_array_equal(d[lims[row]:lims[row + 1]].numpy(), dist[row, expected])


@pytest.mark.slow
@pytest.mark.parametrize("level", ["generic", "popcnt", "avx2"])
def test_every_instruction_set_build(level):
    """The builds this CPU does not pick by itself, through the same tests."""
    env = dict(os.environ, SSDH_CPU_POPCOUNT=level)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__,
         "-k", "topk_matches or radius_matches or rank_stats_match or ties or non_contiguous"],
        env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert " passed" in result.stdout


def test_bad_instruction_set_name():
    env = dict(os.environ, SSDH_CPU_POPCOUNT="sse9")
    code = "import torch, ssdh_port.ops as o; o.hamming_topk(torch.zeros(1, 1, dtype=torch.uint8), torch.zeros(2, 1, dtype=torch.uint8), 1)"
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode != 0 and "SSDH_CPU_POPCOUNT must be generic, popcnt, avx2 or avx512" in result.stderr


def test_ties_keep_database_order():
    db = torch.zeros(6, 1, dtype=torch.uint8)
    db[2, 0] = 1  # one code at distance 1, five at distance 0
    d, i = ops.hamming_topk(torch.zeros(1, 1, dtype=torch.uint8), db, 6)
    assert i.tolist() == [[0, 1, 3, 4, 5, 2]] and d.tolist() == [[0, 0, 0, 0, 0, 1]]


def test_non_contiguous_codes():
    db, _ = _codes(50, 64, 5)
    q, _ = _codes(8, 64, 6)
    wide = torch.cat([db, db], dim=1)[:, :8]
    assert not wide.is_contiguous()
    assert torch.equal(ops.hamming_topk(q, wide, 5)[1], ops.hamming_topk(q, db, 5)[1])


@pytest.mark.parametrize("call, error, message", [
    (lambda: ops.hamming_topk(torch.zeros(2, 3), torch.zeros(5, 3, dtype=torch.uint8), 1),
     TypeError, "queries must be 2-D uint8 packed codes"),
    (lambda: ops.hamming_topk(torch.zeros(2, 3, dtype=torch.uint8), torch.zeros(5, 4, dtype=torch.uint8), 1),
     ValueError, "queries have 3 bytes per code, the database 4"),
    (lambda: ops.hamming_topk(torch.zeros(2, 3, dtype=torch.uint8), torch.zeros(5, 3, dtype=torch.uint8), 6),
     ValueError, "k must be an int between 1 and the database size 5"),
    (lambda: ops.hamming_radius(torch.zeros(2, 3, dtype=torch.uint8), torch.zeros(5, 3, dtype=torch.uint8), -1),
     ValueError, "radius must be an int >= 0"),
    (lambda: ops.hamming_topk(torch.zeros(2, 3, dtype=torch.uint8),
                              torch.zeros(5, 3, dtype=torch.uint8, device="meta"), 1),
     ValueError, "the database on meta"),
])
def test_bad_input(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_opcheck():
    db, _ = _codes(40, 48, 7)
    q, _ = _codes(5, 48, 8)
    torch.library.opcheck(torch.ops.ssdh.hamming_topk.default, (q, db, 7))
    torch.library.opcheck(torch.ops.ssdh.hamming_distance.default, (q, db))
    torch.library.opcheck(torch.ops.ssdh.hamming_radius.default, (q, db, 20),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


@pytest.mark.parametrize("bits", [48, 64, 128])
@pytest.mark.parametrize("clustered", [False, True])
def test_few_queries_split_the_database(bits, clustered):
    # Fewer query blocks than threads: the database is scanned in segments in
    # parallel and the segments' candidates merged; ties must keep database order.
    db, db_bits = _codes(70_000, bits, 19, clustered)
    q, q_bits = _codes(3, bits, 20, clustered)
    dist, order = _reference(q_bits, db_bits)
    threads = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        for k in (1, 100, 5000):
            d, i = ops.hamming_topk(q, db, k)
            np.testing.assert_array_equal(i.numpy(), order[:, :k])
            np.testing.assert_array_equal(d.numpy(), np.take_along_axis(dist, order[:, :k], axis=1))
        lims, d, i = ops.hamming_radius(q, db, bits // 4)
        for row in range(3):
            within = np.flatnonzero(dist[row] <= bits // 4)
            expected = within[np.argsort(dist[row][within], kind="stable")]
            np.testing.assert_array_equal(i[lims[row]:lims[row + 1]].numpy(), expected)
    finally:
        torch.set_num_threads(threads)


needs_cuda = pytest.mark.cuda


@needs_cuda
@pytest.mark.parametrize("bits", [8, 48, 64, 65, 256, 1024, 4096])
def test_cuda_matches_cpu(bits):
    db, _ = _codes(3000, bits, 9, clustered=True)
    q, _ = _codes(37, bits, 10, clustered=True)
    for k in (1, 100, 3000):
        d_cpu, i_cpu = ops.hamming_topk(q, db, k)
        d_gpu, i_gpu = ops.hamming_topk(q.cuda(), db.cuda(), k)
        assert torch.equal(d_gpu.cpu(), d_cpu) and torch.equal(i_gpu.cpu(), i_cpu)
    cpu = ops.hamming_radius(q, db, bits // 8)
    gpu = ops.hamming_radius(q.cuda(), db.cuda(), bits // 8)
    for a, b in zip(cpu, gpu):
        assert torch.equal(a, b.cpu())
    assert torch.equal(ops.hamming_distance(q.cuda(), db.cuda()).cpu(), ops.hamming_distance(q, db))


@needs_cuda
@pytest.mark.parametrize("bits", [24, 48, 64, 128, 256, 320, 512, 520, 1024])
@pytest.mark.parametrize("clustered", [False, True])
def test_cuda_filtering_path_matches_cpu(bits, clustered):
    # 200,000 codes: large enough for the sampled bound and the candidate lists;
    # clustered codes overflow the lists and exercise the fallback per query.
    db, _ = _codes(200_000, bits, 14, clustered)
    q, _ = _codes(300, bits, 15, clustered)
    # Rows out of order, so that the strided sample does not see the database sorted.
    db = db[torch.randperm(len(db), generator=torch.Generator().manual_seed(0))]
    q_gpu, db_gpu = q.cuda(), db.cuda()
    for k in (1, 100, 256, 257):
        d_cpu, i_cpu = ops.hamming_topk(q, db, k)
        d_gpu, i_gpu = ops.hamming_topk(q_gpu, db_gpu, k)
        assert torch.equal(d_gpu.cpu(), d_cpu) and torch.equal(i_gpu.cpu(), i_cpu)
    # A view that starts inside a row: the kernels read from an aligned copy.
    d_cpu, i_cpu = ops.hamming_topk(q[1:], db[3:], 10)
    d_gpu, i_gpu = ops.hamming_topk(q_gpu[1:], db_gpu[3:], 10)
    assert torch.equal(d_gpu.cpu(), d_cpu) and torch.equal(i_gpu.cpu(), i_cpu)


@needs_cuda
@pytest.mark.parametrize("bits", [12, 48, 65])
@pytest.mark.parametrize("relevance", ["ids", "any", "exact"])
def test_cuda_rank_stats_match_cpu(bits, relevance):
    db, _ = _codes(5000, bits, 16, clustered=True)
    q, _ = _codes(77, bits, 17, clustered=True)
    rng = np.random.default_rng(18)
    if relevance == "ids":
        q_labels, d_labels = torch.from_numpy(rng.integers(0, 10, 77)), torch.from_numpy(rng.integers(0, 10, 5000))
    else:
        q_labels = torch.from_numpy(rng.random((77, 70)) < 0.05)
        d_labels = torch.from_numpy(rng.random((5000, 70)) < 0.05)
    q_words, d_words, exact = metrics.label_words(q_labels, d_labels, "exact" if relevance == "exact" else "any")
    for k in (1, 100, 5000):
        cpu = ops.hamming_rank_stats(q, db, q_words, d_words, k, exact)
        gpu = ops.hamming_rank_stats(q.cuda(), db.cuda(), q_words.cuda(), d_words.cuda(), k, exact)
        torch.testing.assert_close(gpu[0].cpu(), cpu[0], rtol=1e-12, atol=1e-15)
        for a, b in zip(cpu[1:], gpu[1:]):
            assert torch.equal(a, b.cpu())
    cpu = metrics.evaluate(q, db, q_labels, d_labels, topk=None)
    gpu = metrics.evaluate(q, db, q_labels, d_labels, topk=None, device="cuda")
    assert gpu["map"] == pytest.approx(cpu["map"], rel=1e-12)


@pytest.mark.parametrize("bits", [12, 48, 65])
@pytest.mark.parametrize("k", [1, 40, 250])
@pytest.mark.parametrize("labels", ["ids", "multi_hot", "multi_hot_exact", "wide"])
def test_rank_stats_match_reference(bits, k, labels):
    db, db_bits = _codes(250, bits, 11, clustered=True)
    q, q_bits = _codes(13, bits, 12, clustered=True)
    rng = np.random.default_rng(13)
    if labels == "ids":
        q_labels, db_labels = rng.integers(0, 4, 13), rng.integers(0, 4, 250)
        relevant = q_labels[:, None] == db_labels[None, :]
        words = (torch.from_numpy(q_labels)[:, None], torch.from_numpy(db_labels)[:, None], True)
    else:
        m = 130 if labels == "wide" else 5  # 130 labels: three words per row
        q_hot, db_hot = rng.random((13, m)) < 0.3, rng.random((250, m)) < 0.3
        exact = labels == "multi_hot_exact"
        if exact:  # few distinct label sets, so that exact matches happen
            q_hot, db_hot = q_hot[:, :3], db_hot[:, :3]
        relevant = ((q_hot[:, None, :] == db_hot[None, :, :]).all(axis=2) if exact
                    else (q_hot.astype(int) @ db_hot.T.astype(int)) > 0)
        q_words, d_words, exact_flag = metrics.label_words(
            torch.from_numpy(q_hot), torch.from_numpy(db_hot), "exact" if exact else "any")
        assert exact_flag == exact and q_words.shape[1] == (3 if labels == "wide" else 1)
        words = (q_words, d_words, exact)
    dist, order = _reference(q_bits, db_bits)
    ap, hits_at, hist_all, hist_rel = ops.hamming_rank_stats(q, db, *words[:2], k, words[2])
    hits = np.take_along_axis(relevant, order[:, :k], axis=1)
    cum = hits.cumsum(axis=1)
    expected_ap = [(cum[i] / np.arange(1, k + 1))[hits[i]].sum() / max(hits[i].sum(), 1)
                   for i in range(13)]
    np.testing.assert_allclose(ap.numpy(), expected_ap, rtol=1e-12)
    np.testing.assert_array_equal(hits_at.numpy(), cum.sum(axis=0))
    for i in range(13):
        np.testing.assert_array_equal(hist_all[i].numpy(), np.bincount(dist[i], minlength=8 * q.shape[1] + 1))
        np.testing.assert_array_equal(
            hist_rel[i].numpy(), np.bincount(dist[i], weights=relevant[i], minlength=8 * q.shape[1] + 1))
    if k == 40 and labels == "ids":
        torch.library.opcheck(torch.ops.ssdh.hamming_rank_stats.default, (q, db, *words[:2], k, words[2]))


def test_rank_stats_bad_labels():
    q, _ = _codes(13, 48, 12)
    db, _ = _codes(250, 48, 11)
    ids = torch.zeros(13, 1, dtype=torch.int64)
    with pytest.raises(ValueError, match="database_labels must be int64 label words with 250 rows"):
        ops.hamming_rank_stats(q, db, ids, torch.ones(250, 1), 10, True)
    with pytest.raises(RuntimeError, match="query labels have 1 words per row, database labels 2"):
        torch.ops.ssdh.hamming_rank_stats(q, db, ids, torch.zeros(250, 2, dtype=torch.int64), 10, True)
    with pytest.raises(ValueError, match="class ids must be whole numbers"):
        metrics.label_words(torch.tensor([0.5]), torch.tensor([1.0]))
    with pytest.raises(ValueError, match="the codes are on cpu, database_labels on meta"):
        ops.hamming_rank_stats(q, db, ids, torch.zeros(250, 1, dtype=torch.int64, device="meta"),
                               10, True)


