"""Instance-level search: the patch boxes, PatchIndex against a NumPy brute force of
the set distance (random codes, many ties, 12 to 512 bits, patches interleaved
across add calls), the native op (opcheck, CUDA against CPU), the Oxford/Paris AP
against a transcription of compute_ap, and the ground-truth readers."""
import numpy as np
import pytest
import torch

from ssdh_port import ops
from ssdh_port.errors import SSDHError
from ssdh_port.hashing import PatchIndex, patch_boxes
from ssdh_port.hashing.instance import crop_query, mean_average_precision, read_ground_truth
from ssdh_port.hashing.metrics import instance_average_precision


def brute_force(query, patches, images):
    """mean over query rows of min over each image's rows of the Hamming distance,
    images in first-appearance order; then a stable sort."""
    order = list(dict.fromkeys(images.tolist()))
    distances = []
    for image in order:
        rows = patches[images == image]
        d = (query[:, None, :] != rows[None, :, :]).sum(-1)  # Q x P_image
        distances.append(d.min(1).mean())
    distances = np.array(distances)
    ranked = np.argsort(distances, kind="stable")
    return distances[ranked], np.array(order)[ranked]


@pytest.mark.parametrize("bits", [12, 64, 100, 512])
def test_patch_index_equals_the_definition(bits):
    rng = np.random.default_rng(bits)
    centres = rng.integers(0, 2, (3, bits))
    index = PatchIndex(bits)
    all_codes, all_images = [], []
    for call in range(4):  # images' patches interleaved across calls
        n = int(rng.integers(20, 60))
        images = rng.choice([7, 3, 11, 100, 42, 5, 9], n)
        codes = centres[rng.integers(0, 3, n)] ^ (rng.random((n, bits)) < (0.02 if bits > 12 else 0.1))
        index.add(codes.astype(np.uint8), images)
        all_codes.append(codes)
        all_images.append(images)
    patches, images = np.concatenate(all_codes), np.concatenate(all_images)
    for q in range(5):
        query = centres[rng.integers(0, 3, 6)] ^ (rng.random((6, bits)) < 0.05)
        expected_d, expected_ids = brute_force(query, patches, images)
        for k in (1, 3, len(expected_ids)):
            distances, ids = index.search(query.astype(np.uint8), k)
            np.testing.assert_allclose(distances.numpy(), expected_d[:k], rtol=0, atol=1e-12)
            assert ids.tolist() == expected_ids[:k].tolist()


def test_ties_go_to_the_image_first_added():
    index = PatchIndex(8)
    code = np.zeros((1, 8), np.int64)  # 0/1 columns (uint8 rows of 8 would read as 8 packed bytes)
    index.add(np.repeat(code, 3, 0), [5, 2, 9])
    index.add(code, [2])
    distances, ids = index.search(code, 3)
    assert ids.tolist() == [5, 2, 9] and distances.tolist() == [0.0, 0.0, 0.0]


def test_the_native_op():
    g = torch.Generator().manual_seed(0)
    queries = torch.randint(0, 256, (5, 9), dtype=torch.uint8, generator=g)
    database = torch.randint(0, 256, (40, 9), dtype=torch.uint8, generator=g)
    segments = torch.tensor([0, 3, 10, 11, 40])
    torch.library.opcheck(torch.ops.ssdh.hamming_set_distance, (queries, database, segments))
    full = ops.hamming_distance(queries, database)
    expected = torch.stack([full[:, a:b].min(1).values.sum() for a, b in zip(segments[:-1], segments[1:])])
    assert torch.equal(ops.hamming_set_distance(queries, database, segments), expected.long())
    with pytest.raises(RuntimeError, match="image 1 has no rows"):
        ops.hamming_set_distance(queries, database, torch.tensor([0, 3, 3, 40]))
    with pytest.raises(RuntimeError, match="from 0 to the database size 40"):
        ops.hamming_set_distance(queries, database, torch.tensor([0, 3, 39]))


@pytest.mark.cuda
def test_cuda_equals_cpu():
    g = torch.Generator().manual_seed(1)
    queries = torch.randint(0, 256, (30, 64), dtype=torch.uint8, generator=g)
    database = torch.randint(0, 256, (3000, 64), dtype=torch.uint8, generator=g)
    segments = torch.cat([torch.tensor([0]), torch.sort(torch.randperm(2999, generator=g)[:99] + 1).values,
                          torch.tensor([3000])])
    cpu = ops.hamming_set_distance(queries, database, segments)
    cuda = ops.hamming_set_distance(queries.cuda(), database.cuda(), segments.cuda())
    assert torch.equal(cpu, cuda.cpu())


def test_patch_boxes_and_files(tmp_path):
    boxes = patch_boxes(300, 200, 3)
    assert len(boxes) == 1 + 4 + 9 and boxes[0] == (1, 0, 0, 0)
    level2 = [b for b in boxes if b[0] == 2]
    side = level2[0][3]
    assert side == round(2 * 200 / 3)
    assert sorted({b[2] for b in level2}) == [0, 200 - side] and sorted({b[1] for b in level2}) == [0, 300 - side]
    level3 = [b for b in boxes if b[0] == 3]
    ys = sorted({b[2] for b in level3})
    assert ys[1] - ys[0] == pytest.approx(level3[0][3] / 2, abs=1)  # half-side strides on the short side
    with pytest.raises(SSDHError, match="levels must be at least 1"):
        patch_boxes(10, 10, 0)
    index = PatchIndex(16)
    rng = np.random.default_rng(2)
    index.add(rng.integers(0, 2, (14, 16)), [4] * 14, boxes)
    index.add(rng.integers(0, 2, (14, 16)), [8] * 14, boxes)
    index.save(tmp_path / "p.ssdh")
    back = PatchIndex.load(tmp_path / "p.ssdh")
    query = rng.integers(0, 2, (3, 16))
    assert [t.tolist() for t in back.search(query, 2)] == [t.tolist() for t in index.search(query, 2)]


def compute_ap_transcribed(pos, amb, ranked):
    """Oxford's compute_ap.cpp, step by step."""
    old_recall, old_precision, ap = 0.0, 1.0, 0.0
    intersect_size, j = 0, 0
    for i in range(len(ranked)):
        if ranked[i] in amb:
            continue
        if ranked[i] in pos:
            intersect_size += 1
        recall = intersect_size / float(len(pos))
        precision = intersect_size / (j + 1.0)
        ap += (recall - old_recall) * ((old_precision + precision) / 2.0)
        old_recall, old_precision = recall, precision
        j += 1
    return ap


def test_instance_ap_equals_compute_ap():
    assert instance_average_precision(["p", "n", "q"], ["p", "q"], [], []) == pytest.approx(
        0.5 + 0.5 * (0.5 + 2 / 3) / 2)
    assert instance_average_precision(["j", "p"], ["p"], [], ["j"]) == 1.0
    rng = np.random.default_rng(3)
    for _ in range(200):
        gallery = [f"img{i}" for i in range(40)]
        rng.shuffle(gallery)
        good, ok, junk = gallery[:5], gallery[5:8], gallery[8:12]
        ranked = list(rng.permutation(gallery))
        assert instance_average_precision(ranked, good, ok, junk) == pytest.approx(
            compute_ap_transcribed(set(good) | set(ok), set(junk), ranked), abs=1e-12)
    with pytest.raises(SSDHError, match="no good or ok"):
        instance_average_precision(["a"], [], [], ["a"])


def test_ground_truth_folders(tmp_path):
    (tmp_path / "all_souls_1_query.txt").write_text("oxc1_all_souls_000013 136.5 34.1 648.5 955.7\n")
    (tmp_path / "all_souls_1_good.txt").write_text("all_souls_000013\nall_souls_000026\n")
    (tmp_path / "all_souls_1_ok.txt").write_text("all_souls_000051\n")
    (tmp_path / "all_souls_1_junk.txt").write_text("all_souls_000099\n")
    (tmp_path / "radcliffe_2_query.txt").write_text("radcliffe_000001 0 0 10 10\n")
    (tmp_path / "radcliffe_2_good.txt").write_text("radcliffe_000002\n")
    (tmp_path / "radcliffe_2_ok.txt").write_text("")
    (tmp_path / "radcliffe_2_junk.txt").write_text("")
    queries = read_ground_truth(tmp_path)
    assert [q.name for q in queries] == ["all_souls_1", "radcliffe_2"]
    assert queries[0].image == "all_souls_000013" and queries[0].box == (136.5, 34.1, 648.5, 955.7)
    assert queries[0].good == ["all_souls_000013", "all_souls_000026"] and queries[0].junk == ["all_souls_000099"]
    image = np.zeros((1000, 700, 3), np.uint8)
    assert crop_query(image, queries[0].box).shape == (956 - 34, 648 - 136, 3)  # rounded, clipped
    assert crop_query(image, (10, 20, 30, 60)).shape == (40, 20, 3)
    rankings = {"all_souls_1": ["all_souls_000099", "all_souls_000013", "x", "all_souls_000051",
                                "all_souls_000026"],
                "radcliffe_2": ["radcliffe_000002"]}
    mean, per_query = mean_average_precision(rankings, queries)
    assert per_query["radcliffe_2"] == 1.0
    assert mean == pytest.approx((per_query["all_souls_1"] + 1.0) / 2)
    (tmp_path / "radcliffe_2_ok.txt").unlink()
    with pytest.raises(SSDHError, match="radcliffe_2_ok.txt: cannot read the ok list"):
        read_ground_truth(tmp_path)


def test_encode_patches_and_spatial_search_commands(tmp_path):
    from tests.commands import ssdh
    from tests.shared_data import ORACLE, shared

    import os
    if not os.path.isdir(ORACLE):
        pytest.skip("real Caffe artefacts not found")
    from ssdh_port.data import mnist
    from ssdh_port.data.datasets import write_array_db
    import cv2

    images, labels = mnist.load_split("test")
    write_array_db(tmp_path / "db", images[:20, None], labels[:20])
    prototxt, weights = shared("caffe-models", "lenet", "lenet.prototxt"), shared("caffe-models", "lenet",
                                                                                 "lenet_iter_10000.caffemodel")
    done = ssdh("encode", "--prototxt", prototxt, "--weights", weights, "--input", tmp_path / "db", "--blob", "ip1",
                "--scale", "0.00390625", "--patches", "2", "--output", tmp_path / "patches.ssdh")
    assert done.returncode == 0, done.stderr
    assert "100 patch codes of 20 images (500 bits, levels 1..2)" in done.stdout
    index = PatchIndex.load(tmp_path / "patches.ssdh")
    assert len(index) == 20 and index.patches == 100
    cv2.imwrite(str(tmp_path / "q.png"), images[13])
    found = ssdh("search", "--index", tmp_path / "patches.ssdh", "--spatial", "2", "--k", "3", tmp_path / "q.png")
    assert found.returncode == 0, found.stderr
    first = found.stdout.splitlines()[1].split()
    assert first[2] == "13" and first[-1] == "0.000"  # the image itself, at set distance 0
    bad = ssdh("encode", "--prototxt", prototxt, "--weights", weights, "--input", tmp_path / "db", "--patches", "2",
               "--milvus", tmp_path / "m.db")
    assert bad.returncode == 1 and "give --output (not --milvus)" in bad.stderr
    # The service answers with spatial search over the same file.
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from ssdh_port.service.search import SpatialSearch
    from ssdh_port.service.server import create_app

    api = TestClient(create_app(SpatialSearch(tmp_path / "patches.ssdh", tmp_path / "db", levels=2)))
    hits = api.post("/search?k=2", content=cv2.imencode(".png", images[13])[1].tobytes()).json()["results"]
    assert hits[0] == {"id": 13, "distance": 0.0, "label": None}
    near = api.get("/items/4/neighbors?k=1").json()["results"]
    assert near[0]["id"] == 4 and near[0]["distance"] == 0.0
    png = api.get("/items/4/image")
    assert png.status_code == 200 and np.array_equal(cv2.imdecode(np.frombuffer(png.content, np.uint8), 0), images[4])
    assert api.get("/items/99/neighbors").status_code == 404


def test_two_stage_search():
    from ssdh_port.hashing import HammingIndex, two_stage_search

    rng = np.random.default_rng(5)
    bits, images = 32, 40
    centres = rng.integers(0, 2, (images, bits))
    image_of = np.repeat(np.arange(images) * 3 + 1, 6)  # ids 1, 4, 7, ...
    patches = centres[(image_of - 1) // 3] ^ (rng.random((len(image_of), bits)) < 0.1)
    index = PatchIndex(bits)
    index.add(patches, image_of)
    whole = HammingIndex(bits)
    whole.add(centres, np.arange(images) * 3 + 1)
    query_id = 3 * 17 + 1
    query_patches = centres[17] ^ (rng.random((6, bits)) < 0.1)
    full = index.search(query_patches, 5)
    every = two_stage_search(whole, index, centres[17:18], query_patches, images, 5)
    assert [t.tolist() for t in every] == [t.tolist() for t in full]  # a shortlist of all: the same
    short = two_stage_search(whole, index, centres[17:18], query_patches, 4, 5)
    _, shortlist = whole.search(centres[17:18], 4)
    assert len(short[1]) == 4 and set(short[1].tolist()) == set(shortlist[0].tolist())
    assert short[1][0] == query_id and bool((short[0][1:] >= short[0][:-1]).all())
    with pytest.raises(SSDHError, match=r"images \[2\] are not in the index"):
        index.search(query_patches, 3, candidates=[2])
