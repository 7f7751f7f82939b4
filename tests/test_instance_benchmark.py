"""The cross-domain instance benchmark and its evaluation: the scenes and ground truth
of data.instances (seeded, in the Oxford layout, the query box holding the instance),
pipeline.instance's four searches against a NumPy brute force of each definition
scored with a transcription of compute_ap, and `ssdh eval-instance`."""
import hashlib
import os

import cv2
import numpy as np
import pytest
import torch

from ssdh_port.data.instances import make_instance_benchmark
from ssdh_port.errors import SSDHError
from ssdh_port.hashing.instance import crop_query, read_ground_truth
from ssdh_port.hashing.patches import crop_patch, patch_boxes
from ssdh_port.pipeline.instance import evaluate_instances
from ssdh_port.pipeline.patches import PatchCoder
from tests.test_patches import compute_ap_transcribed

CLASSES = ("a", "b", "c")


def objects(n=60, seed=3):
    """Small distinct object images (C x H x W uint8, a Datum's layout) of three classes."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    images = np.stack([cv2.GaussianBlur(i.transpose(1, 2, 0), (5, 5), 0).transpose(2, 0, 1) for i in images])
    return images, np.arange(n) % 3


def folder_digest(folder):
    digest = hashlib.sha256()
    for root, _, files in sorted(os.walk(folder)):
        for name in sorted(files):
            digest.update(name.encode())
            with open(os.path.join(root, name), "rb") as f:
                digest.update(f.read())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def benchmark(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    images, labels = objects()
    made = make_instance_benchmark(images, labels, CLASSES, out, seed=7, per_class=2, positives=4, gallery=40,
                                   size=64, sides=(20, 40))
    return out, images, labels, made


def test_the_benchmark_is_seeded_and_in_the_oxford_layout(benchmark, tmp_path):
    out, images, labels, made = benchmark
    again = make_instance_benchmark(images, labels, CLASSES, tmp_path, seed=7, per_class=2, positives=4,
                                    gallery=40, size=64, sides=(20, 40))
    assert again == made and folder_digest(tmp_path) == folder_digest(out)
    other = tmp_path / "other"
    make_instance_benchmark(images, labels, CLASSES, other, seed=8, per_class=2, positives=4, gallery=40,
                            size=64, sides=(20, 40))
    assert folder_digest(other) != folder_digest(out)

    gallery = (out / "gallery.txt").read_text().split()
    assert len(gallery) == 40 and len(set(gallery)) == 40
    queries = read_ground_truth(out / "gt")
    assert [q.name for q in queries] == ["a_1", "a_2", "b_1", "b_2", "c_1", "c_2"]
    listed = []
    for query, record in zip(queries, made["queries"]):
        assert query.image not in gallery                       # a view apart from the gallery
        assert len(query.good) + len(query.ok) + len(query.junk) <= 4
        assert len(query.good) >= 2                             # half the views are whole
        listed += query.good + query.ok + query.junk
        # The box holds the instance: cropped and shrunk back, it is the object (or its mirror).
        scene = cv2.imread(str(out / "images" / f"{query.image}.png"))
        crop = cv2.resize(crop_query(scene, query.box), (32, 32), interpolation=cv2.INTER_AREA).astype(float)
        obj = images[record["object"]].transpose(1, 2, 0).astype(float)
        assert labels[record["object"]] == CLASSES.index(record["class"])
        best = max(np.corrcoef(crop.ravel(), o.ravel())[0, 1] for o in (obj, obj[:, ::-1]))
        assert best > 0.9
    assert len(listed) == len(set(listed)) and set(listed) <= set(gallery)   # a view belongs to one instance
    with pytest.raises(SSDHError, match="cannot hold 6 instances x 8 views"):
        make_instance_benchmark(images, labels, CLASSES, tmp_path / "x", per_class=2, positives=8, gallery=40)


class BlockMeans:
    """A latent source for the tests: each channel's 4 x 4 block means / 255 (48 values)."""
    channels, size, bits, latent = 3, (16, 16), 48, "blocks"

    def __call__(self, batch):
        x = batch.double().reshape(len(batch), 3, 4, 4, 4, 4).mean(dim=(3, 5)) / 255
        return x.reshape(len(batch), 48).float()


def brute_force_rankings(coder, out, levels):
    """Each search's ranking of every query, from the definitions, in NumPy."""
    gallery = (out / "gallery.txt").read_text().split()

    def activations(image):
        patches = [coder.prepared(crop_patch(image, box)) for box in patch_boxes(image.shape[1], image.shape[0],
                                                                                  levels)]
        return BlockMeans()(torch.from_numpy(np.stack(patches))).double().numpy()

    acts = [activations(cv2.imread(str(out / "images" / f"{name}.png"))) for name in gallery]
    rankings = {}
    for query in read_ground_truth(out / "gt"):
        q = activations(crop_query(cv2.imread(str(out / "images" / f"{query.image}.png")), query.box))
        qa = q.astype(np.float32) > 0.5
        per = {"global": [], "spatial": [], "l2 global": [], "l2 spatial": []}
        for a in acts:
            ga = a.astype(np.float32) > 0.5
            hamming = (qa[:, None, :] != ga[None, :, :]).sum(-1)
            l2 = np.sqrt(((q[:, None, :] - a[None, :, :]) ** 2).sum(-1))
            per["global"].append(hamming[0, 0])
            per["spatial"].append(hamming.min(1).mean())
            per["l2 global"].append(l2[0, 0])
            per["l2 spatial"].append(l2.min(1).mean())
        rankings[query.name] = {m: [gallery[i] for i in np.argsort(np.array(d), kind="stable")]
                                for m, d in per.items()}
    return rankings


def test_the_four_searches_equal_the_definitions(benchmark):
    out, *_ = benchmark
    coder = PatchCoder(BlockMeans(), batch_size=7)
    evaluation = evaluate_instances(coder, out / "images", out / "gt", levels=2, progress=False)
    assert (evaluation.queries, evaluation.gallery, evaluation.patches) == (6, 40, 40 * 5)
    truth = brute_force_rankings(coder, out, 2)
    queries = {q.name: q for q in read_ground_truth(out / "gt")}
    for result in evaluation.results:
        expected = {name: compute_ap_transcribed(set(q.good + q.ok), set(q.junk), truth[name][result.method])
                    for name, q in queries.items()}
        # l2 distances may differ in the last bits (cdist vs NumPy); their rankings agree here.
        assert result.per_query == pytest.approx(expected), result.method
        assert result.map == pytest.approx(np.mean(list(expected.values())))
        assert result.ms_per_query > 0
    assert [r.bits for r in evaluation.results] == [48, 48, None, None]


def test_eval_instance_command(benchmark, tmp_path):
    from tests.commands import ssdh
    from tests.shared_data import shared

    out, *_ = benchmark
    prototxt = shared("caffe-models", "cifar10_quick", "cifar10_quick.prototxt")
    if not os.path.isfile(prototxt):
        pytest.skip("the real cifar10_quick model is not at hand")
    done = ssdh("eval-instance", "--ground-truth", out / "gt", "--images", out / "images", "--prototxt", prototxt,
                "--weights", shared("caffe-models", "cifar10_quick", "cifar10_quick_iter_4000.caffemodel"),
                "--blob", "ip1", "--mean-file", shared("caffe-models", "cifar10_quick", "mean.binaryproto"),
                "--levels", "2", "--out-dir", tmp_path / "eval")
    assert done.returncode == 0, done.stderr
    table = (tmp_path / "eval" / "table.md").read_text()
    assert "6 queries, 40 gallery images, 200 patches" in table
    for search in ("whole-image codes, Hamming", "patch codes L=2, spatial", "whole-image activations, l2",
                   "patch activations L=2, l2 spatial"):
        assert f"cifar10_quick_iter_4000: {search}" in table
    bad = ssdh("eval-instance", "--ground-truth", tmp_path / "none", "--images", out / "images", "--weights", "w.pt")
    assert bad.returncode == 1 and bad.stderr.strip().endswith("--ground-truth " + str(tmp_path / "none") +
                                                               ": not a folder")
    caffemodel = ssdh("eval-instance", "--ground-truth", out / "gt", "--images", out / "images", "--weights",
                      "w.caffemodel")
    assert caffemodel.returncode == 1 and "needs its deploy prototxt" in caffemodel.stderr
