"""MilvusIndex on the embedded Milvus Lite: results identical to HammingIndex (top-k
with ties, radius), persistence across reopening, labels and filters, and bad
input as clear errors."""
import numpy as np
import pytest
import torch

from ssdh_port.errors import SSDHError
from ssdh_port.hashing import HammingIndex

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

from ssdh_port.hashing.milvus import MAX_TOPK, MilvusIndex  # noqa: E402


@pytest.fixture(scope="module")
def uri(tmp_path_factory):
    return str(tmp_path_factory.mktemp("milvus") / "codes.db")


def codes(n, bits, clustered, seed):
    rng = np.random.default_rng(seed)
    if not clustered:
        return rng.integers(0, 2, (n, bits), dtype=np.uint8)
    centers = rng.integers(0, 2, (4, bits), dtype=np.uint8)
    return centers[rng.integers(0, 4, n)] ^ (rng.random((n, bits)) < 0.02).astype(np.uint8)


def pair(uri, name, bits, db, ids=None, labels=None):
    hamming = HammingIndex(bits)
    hamming.add(db, ids=ids, labels=labels)
    milvus = MilvusIndex(bits, uri, name)
    milvus.add(db, ids=ids, labels=labels)
    return hamming, milvus


@pytest.mark.parametrize("bits", [12, 48, 64, 1024])
@pytest.mark.parametrize("clustered", [False, True])
def test_results_equal_hamming_index(uri, bits, clustered):
    db = codes(2000, bits, clustered, bits)
    queries = np.concatenate([codes(6, bits, clustered, bits + 1), db[:2]])
    ids = np.arange(2000) * 3 + 11
    hamming, milvus = pair(uri, f"equal_{bits}_{int(clustered)}", bits, db, ids, np.arange(2000) % 10)
    assert len(milvus) == 2000
    for k in (1, 17, 300):
        d1, i1 = hamming.search(queries, k)
        d2, i2 = milvus.search(queries, k)
        assert torch.equal(d1, d2) and torch.equal(i1, i2), k
    radius = {12: 2, 48: 3, 64: 4, 1024: 420}[bits]
    for a, b in zip(hamming.range_search(queries, radius), milvus.range_search(queries, radius)):
        assert torch.equal(a, b)


def test_ties_beyond_the_first_answer_are_the_earliest_inserted(uri):
    # 3000 identical codes: every result ties, HammingIndex returns them in insertion order.
    db = np.zeros((3000, 24), np.uint8)
    db[1500:, 0] = 1
    hamming, milvus = pair(uri, "ties", 24, db)
    d1, i1 = hamming.search(db[:1], 700)
    d2, i2 = milvus.search(db[:1], 700)
    assert torch.equal(i2, torch.arange(700)[None]) and torch.equal(d1, d2) and torch.equal(i1, i2)
    one = np.zeros((1, 24), np.uint8)
    one[0, 0] = 1
    assert torch.equal(milvus.search(one, 5)[1], torch.arange(1500, 1505)[None])


def test_a_radius_with_more_than_milvus_limit_of_results(uri):
    db = np.zeros((MAX_TOPK + 3000, 16), np.uint8)
    db[::9, 1] = 1
    hamming, milvus = pair(uri, "wide", 16, db)
    zero = np.zeros((1, 16), np.uint8)
    for a, b in zip(hamming.range_search(zero, 1), milvus.range_search(zero, 1)):
        assert torch.equal(a, b)
    lims, _, ids = milvus.range_search(zero, 0)
    assert int(lims[-1]) == len(db) - len(db[::9]) > MAX_TOPK and bool((ids % 9 != 0).all())


def test_persistence_labels_and_filters(uri):
    db = codes(500, 40, True, 5)
    labels = np.random.default_rng(5).integers(0, 2, (500, 6))
    hamming, milvus = pair(uri, "multi", 40, db, labels=labels)
    del milvus
    reopened = MilvusIndex.open(uri, "multi")
    assert reopened.bits == 40 and len(reopened) == 500 and reopened.label_kind == "multi:6"
    assert torch.equal(reopened.search(db[:3], 9)[1], hamming.search(db[:3], 9)[1])
    assert torch.equal(reopened.labels_at([4, 0]), torch.as_tensor(labels[[4, 0]]))
    assert torch.equal(reopened.codes_at([7]), hamming.codes[7:8])
    assert reopened.positions_of([9, 2]).tolist() == [9, 2]
    classes = MilvusIndex(16, uri, "classes")
    classes.add(codes(300, 16, False, 6), labels=np.arange(300) % 5)
    distances, ids = classes.search(codes(2, 16, False, 7), 10, where="label == 3")
    assert set((ids % 5).tolist()[0]) == {3} and bool((distances >= 0).all())


def test_copy_of_a_code_file(uri, tmp_path):
    index = HammingIndex(20)
    index.add(codes(100, 20, False, 8), ids=np.arange(100) + 1000, labels=np.arange(100) % 3)
    index.save(tmp_path / "c.ssdh")
    milvus = MilvusIndex.from_hamming(str(tmp_path / "c.ssdh"), uri, "copied")
    assert torch.equal(milvus.search(index.codes[:4], 6)[1], index.search(index.codes[:4], 6)[1])
    with pytest.raises(SSDHError, match="already holds 100 codes"):
        MilvusIndex.from_hamming(index, uri, "copied")


def test_bad_input_is_a_clear_error(uri):
    milvus = MilvusIndex(16, uri, "errors")
    with pytest.raises(SSDHError, match="a 16-bit collection takes 16 0/1 columns or 2 packed bytes"):
        milvus.add(np.zeros((3, 3), np.uint8))
    with pytest.raises(SSDHError, match="collection 'errors' is empty"):
        milvus.search(np.zeros((1, 16), np.uint8), 3)
    milvus.add(np.zeros((3, 16), np.uint8))
    with pytest.raises(SSDHError, match="query codes have 8 columns"):
        milvus.search(np.zeros((1, 8), np.uint8), 3)
    with pytest.raises(SSDHError, match="holds labels none, this batch class"):
        milvus.add(np.zeros((1, 16), np.uint8), labels=[1])
    with pytest.raises(SSDHError, match="holds 16-bit codes, not 24"):
        MilvusIndex(24, uri, "errors")
    with pytest.raises(SSDHError, match="no collection 'nothing'"):
        MilvusIndex.open(uri, "nothing")
    with pytest.raises(SSDHError, match=r"ids \[99\] are not in collection"):
        milvus.positions_of([99])


def test_encode_search_and_serve_through_a_collection(tmp_path):
    import os

    import cv2
    from fastapi.testclient import TestClient

    from ssdh_port.caffe.net import CaffeNet
    from ssdh_port.data import mnist
    from ssdh_port.data.datasets import write_array_db
    from ssdh_port.service.search import ImageSearch, open_index
    from ssdh_port.service.server import create_app
    from tests.shared_data import ROOT

    images, labels = mnist.load_split("test")
    write_array_db(tmp_path / "db", images[:150, None], labels[:150])
    deploy = os.path.join(ROOT, "prototxt", "lenet_ssdh", "deploy.prototxt")
    CaffeNet(deploy).save_caffemodel(tmp_path / "w.caffemodel")
    cv2.imwrite(str(tmp_path / "q.png"), images[4])

    from tests.commands import ssdh as tool
    uri = tmp_path / "lite.db"
    coded = tool("encode", "--prototxt", deploy, "--weights", tmp_path / "w.caffemodel", "--input", tmp_path / "db",
                 "--scale", "0.00390625", "--out", tmp_path / "c.ssdh", "--milvus", uri, "--collection", "mnist")
    assert coded.returncode == 0, coded.stderr
    assert os.path.exists(f"{uri}.mnist.card.json")
    by_file = tool("search", "--index", tmp_path / "c.ssdh", tmp_path / "q.png", "--k", "8")
    by_milvus = tool("search", "--milvus", uri, "--collection", "mnist", tmp_path / "q.png", "--k", "8")
    assert by_file.returncode == 0 and by_milvus.returncode == 0, by_milvus.stderr
    assert by_file.stdout == by_milvus.stdout and "distance   0" in by_milvus.stdout
    neither = tool("search", tmp_path / "q.png")
    assert neither.returncode == 1 and "give a code file (--index) or a Milvus collection" in neither.stderr

    index, card = open_index(milvus=str(uri), collection="mnist")
    api = TestClient(create_app(ImageSearch(index, tmp_path / "db", card=card)))
    answer = api.post("/search?k=5", content=cv2.imencode(".png", images[4])[1].tobytes()).json()
    assert answer["results"][0] == {"id": 4, "distance": 0, "label": int(labels[4])}
    assert api.get("/items/4/neighbors?k=3").json()["results"][0]["same_label"] is True
    assert api.get("/health").json()["index"] == "MilvusIndex"


def test_adds_and_removes_search_as_a_fresh_index(uri):
    """MilvusIndex.add / remove (upserts included) give the results of a fresh
    HammingIndex of the surviving items in insertion order, as the live code file does."""
    rng = np.random.default_rng(21)
    milvus = MilvusIndex(16, uri, "live")
    items = {}  # id -> code, in insertion order
    base = codes(60, 16, True, 1)
    milvus.add(base, ids=list(range(60)), labels=[i % 3 for i in range(60)])
    items.update({i: base[i] for i in range(60)})
    for step in range(6):
        gone = rng.choice(list(items), 7, replace=False).tolist()
        assert milvus.remove(gone) == 7
        for i in gone:
            del items[i]
        new = codes(10, 16, True, 100 + step)
        ids = milvus.next_ids(10)
        assert ids[0] == max(items) + 1 if items else 0
        milvus.add(new, ids=ids, labels=[i % 3 for i in ids])
        items.update(dict(zip(ids, new)))
        again = list(items)[:2]
        milvus.add(np.stack([items[i] for i in again]), ids=again, labels=[i % 3 for i in again], upsert=True)
        for i in again:
            items[i] = items.pop(i)
        fresh = HammingIndex(16)
        fresh.add(np.stack(list(items.values())), ids=list(items), labels=[i % 3 for i in items])
        queries = codes(5, 16, True, 200 + step)
        for k in (1, 9, len(items)):
            d1, i1 = milvus.search(queries, k)
            d2, i2 = fresh.search(queries, k)
            assert torch.equal(d1, d2) and torch.equal(i1, i2), (step, k)
    with pytest.raises(SSDHError, match=r"ids \[9999\] are not in collection"):
        milvus.remove([list(items)[0], 9999])
    with pytest.raises(SSDHError, match="already in collection"):
        milvus.add(np.stack([items[list(items)[0]]]), ids=[list(items)[0]], labels=[0])
    assert len(milvus) == len(items)
