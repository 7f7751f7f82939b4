"""HammingIndex (search, range search, save/load, faiss export), coarse-to-fine
re-ranking, and the LSH / ITQ / CCA-ITQ baselines."""
import numpy as np
import pytest
import torch

from ssdh_port import ops
from ssdh_port.errors import SSDHError
from ssdh_port.hashing import evaluate
from ssdh_port.hashing.baselines import CCAITQ, ITQ, LSH, itq_rotation
from ssdh_port.hashing.index import HammingIndex, IndexFileError, coarse_to_fine


def _bits(n, k, seed):
    return np.random.default_rng(seed).integers(0, 2, (n, k)).astype(np.uint8)


def test_index_search_matches_the_op_with_ids():
    db, q = _bits(500, 48, 0), _bits(7, 48, 1)
    index = HammingIndex(48)
    index.add(db[:200], ids=np.arange(1000, 1200))
    index.add(ops.pack_bits(torch.from_numpy(db[200:])), ids=np.arange(1200, 1500))
    assert len(index) == 500
    d, ids = index.search(q, 10)
    ref_d, ref_pos = ops.hamming_topk(ops.pack_bits(torch.from_numpy(q)),
                                      ops.pack_bits(torch.from_numpy(db)), 10)
    assert torch.equal(d, ref_d) and torch.equal(ids, ref_pos + 1000)
    lims, rd, rids = index.range_search(q, 20)
    assert lims[-1] == len(rids) and bool((rd <= 20).all())


def test_index_save_load_round_trip(tmp_path):
    db = _bits(301, 65, 2)
    labels = np.random.default_rng(3).integers(0, 10, 301)
    index = HammingIndex(65)
    index.add(db, labels=labels)
    index.save(tmp_path / "codes.ssdh")
    loaded = HammingIndex.load(tmp_path / "codes.ssdh")
    assert isinstance(loaded.codes.numpy().base, np.memmap) or loaded.codes.numpy().base is not None
    assert loaded.bits == 65 and len(loaded) == 301
    assert torch.equal(loaded.codes, index.codes) and torch.equal(loaded.ids, index.ids)
    np.testing.assert_array_equal(loaded.labels.numpy(), labels)
    q = _bits(4, 65, 4)
    assert torch.equal(loaded.search(q, 5)[1], index.search(q, 5)[1])
    raw = (tmp_path / "codes.ssdh").read_bytes()
    (tmp_path / "cut.ssdh").write_bytes(raw[:-10])
    with pytest.raises(IndexFileError, match="cut.ssdh: truncated code file .* bytes, the header's 301 codes need"):
        HammingIndex.load(tmp_path / "cut.ssdh")
    (tmp_path / "head.ssdh").write_bytes(raw[:20])
    with pytest.raises(IndexFileError, match="head.ssdh: truncated code file \\(20 bytes, the header alone is 64\\)"):
        HammingIndex.load(tmp_path / "head.ssdh")
    (tmp_path / "long.ssdh").write_bytes(raw + raw)
    with pytest.raises(IndexFileError, match="long.ssdh: .* bytes after the end of the header's 301 codes"):
        HammingIndex.load(tmp_path / "long.ssdh")
    (tmp_path / "bad.ssdh").write_bytes(b"not an index at all" * 5)
    with pytest.raises(IndexFileError, match="not an ssdh code file"):
        HammingIndex.load(tmp_path / "bad.ssdh")


def test_index_errors():
    index = HammingIndex(16)
    with pytest.raises(ValueError, match="index is empty"):
        index.search(_bits(1, 16, 0), 1)
    with pytest.raises(ValueError, match="codes have 24 columns; a 16-bit index takes 16 0/1 columns or 2 packed bytes"):
        index.add(_bits(2, 24, 0))
    index.add(_bits(5, 16, 0), labels=[1, 2, 3, 4, 5])
    with pytest.raises(ValueError, match="labels for every batch or for none"):
        index.add(_bits(2, 16, 1))


def test_faiss_export_gives_the_same_neighbours():
    faiss = pytest.importorskip("faiss")
    db, q = _bits(400, 64, 5), _bits(6, 64, 6)
    index = HammingIndex(64)
    index.add(db, ids=np.arange(400) * 3)
    d_faiss, ids_faiss = index.to_faiss().search(ops.pack_bits(torch.from_numpy(q)).numpy(), 8)
    d, ids = index.search(q, 8)
    np.testing.assert_array_equal(d_faiss, d.numpy())
    # Same distances; faiss may order ties differently, so compare per distance.
    for row in range(len(q)):
        for dist in set(d[row].tolist()[:-1]):
            assert set(ids_faiss[row][d_faiss[row] == dist]) == set(ids[row][d[row] == dist].tolist())
    assert faiss is not None


def test_coarse_to_fine_reranks_the_shortlist_by_euclidean_distance():
    rng = np.random.default_rng(7)
    features = rng.normal(size=(200, 16)).astype(np.float32)
    codes = (features[:, :12] > 0).astype(np.uint8)
    index = HammingIndex(12)
    index.add(codes)
    results = coarse_to_fine(index, codes[:3], features[:3], features, k=5, shortlist=50)
    for q, (ids, dist) in enumerate(results):
        assert ids[0] == q and dist[0] == pytest.approx(0.0, abs=1e-4)
        assert bool((dist[1:] >= dist[:-1]).all())
        shortlist = index.search(codes[q:q + 1], 50)[1][0]
        assert set(ids.tolist()) <= set(shortlist.tolist())


def test_itq_rotation_is_orthogonal_and_reduces_quantisation_loss():
    v = np.random.default_rng(8).normal(size=(500, 8))
    r = itq_rotation(v, 50)
    np.testing.assert_allclose(r @ r.T, np.eye(8), atol=1e-10)
    loss = lambda rot: np.linalg.norm(np.sign(v @ rot) - v @ rot)
    assert loss(r) < loss(np.eye(8))


def test_baselines_rank_as_expected_on_clustered_data():
    rng = np.random.default_rng(9)
    centres = rng.normal(scale=1.0, size=(10, 64))
    labels = rng.integers(0, 10, 3000)
    features = centres[labels] + 1.5 * rng.normal(size=(3000, 64))  # overlapping classes
    train, test = slice(0, 2500), slice(2500, 3000)
    maps = {}
    for name, cls in (("lsh", LSH), ("itq", ITQ), ("cca-itq", CCAITQ)):
        model = cls(32).fit(features[train], labels[train])
        maps[name] = evaluate(model.encode(features[test]), model.encode(features[train]),
                              labels[test], labels[train], topk=500)["map"]
    assert maps["cca-itq"] > maps["itq"] > maps["lsh"] > 0.1


def test_positions_of_ids_and_search_by_position():
    rng = np.random.default_rng(3)
    codes = rng.integers(0, 2, (50, 24), dtype=np.uint8)
    index = HammingIndex(24)
    ids = rng.permutation(np.arange(1000, 1100))[:50]
    index.add(codes[:30], ids=ids[:30])
    index.add(codes[30:], ids=ids[30:])
    assert index.positions_of(ids[[7, 42, 0]]).tolist() == [7, 42, 0]
    distances, positions = index.search_positions(codes[:5], 4)
    d2, found = index.search(codes[:5], 4)
    assert torch.equal(distances, d2) and torch.equal(torch.as_tensor(ids)[positions], found)
    with pytest.raises(SSDHError, match=r"ids \[5\] are not in the index"):
        index.positions_of([int(ids[0]), 5])
    index.add(codes[:1], ids=[5])  # the lookup follows additions
    assert index.positions_of([5]).tolist() == [50]
