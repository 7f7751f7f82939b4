"""Instance retrieval on a ground-truth folder (the Oxford / Paris layout, or the
benchmark of ssdh_port.data.instances): every gallery image coded as its patches
at levels 1..L, every query cropped to its box and coded the same way, and four
searches ranked over the whole gallery, each scored by mean AP
(hashing.instance.mean_average_precision):

    global       Hamming distance between the whole query's code and each whole
                 gallery image's code (the level-1 patches)
    spatial      the set distance of hashing.patches.PatchIndex: the mean over the
                 query's patches of the minimum Hamming distance to an image's patches
    l2 global    Euclidean distance between the latent activations of the whole query
                 and of each whole gallery image (real-valued, 32 bits a dimension)
    l2 spatial   the set distance with Euclidean distances of the activations

Ties keep the gallery's order. Search times are per query, the query's coding
apart (it is the same for all four and reported on its own).
"""
import dataclasses
import os
import time

import cv2
import torch

from ssdh_port import ops
from ssdh_port.errors import SSDHError
from ssdh_port.hashing.index import HammingIndex
from ssdh_port.hashing.instance import crop_query, mean_average_precision, read_ground_truth
from ssdh_port.hashing.patches import PatchIndex
from ssdh_port.progress import bar

METHODS = ("global", "spatial", "l2 global", "l2 spatial")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm")


@dataclasses.dataclass
class InstanceResult:
    method: str
    map: float
    per_query: dict
    ms_per_query: float               # the search alone
    bits: int | None                  # None: real-valued


@dataclasses.dataclass
class InstanceEvaluation:
    results: list                     # [InstanceResult] in METHODS order
    queries: int
    gallery: int
    patches: int
    levels: int
    encode_ms_per_query: float
    encode_seconds_gallery: float


def image_files(images_dir):
    """{name (file name without extension): path} of the images below a folder (sub-
    folders too, as Paris keeps one per landmark); a name found twice is an error."""
    found = {}
    for root, _, files in os.walk(images_dir):
        for file in sorted(files):
            stem, ext = os.path.splitext(file)
            if ext.lower() in IMAGE_EXTENSIONS:
                if stem in found:
                    raise SSDHError(f"{images_dir}: two images are named {stem} ({found[stem]}, {root})")
                found[stem] = os.path.join(root, file)
    if not found:
        raise SSDHError(f"{images_dir}: no image ({', '.join(IMAGE_EXTENSIONS)})")
    return found


def gallery_images(images_dir, gallery=None):
    """The gallery's image names, in gallery order: the lines of a gallery file
    (default images_dir/../gallery.txt when there is one), else every image of the
    folder in name order."""
    files = image_files(images_dir)
    gallery = gallery or os.path.join(os.path.dirname(os.path.abspath(images_dir)), "gallery.txt")
    if not os.path.isfile(gallery):
        return sorted(files), files
    with open(gallery) as f:
        names = [line.strip() for line in f if line.strip()]
    missing = [n for n in names if n not in files]
    if missing:
        raise SSDHError(f"{gallery}: images {missing[:3]} are not in {images_dir}")
    return names, files


def read_image(path):
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        raise SSDHError(f"{path}: cannot read the image")
    return image


def encode_gallery(coder, paths, levels, progress=True):
    """(activations of every patch, the gallery position of each) of images in order."""
    activations, owners, pending, pending_owners = [], [], [], []
    ticker = bar(total=len(paths), desc="gallery patches", unit="image", disable_if=not progress)
    for position, path in enumerate(paths):
        patches, _ = coder.image_patches(read_image(path), levels)
        pending += patches
        pending_owners += [position] * len(patches)
        if len(pending) >= 8 * coder.batch_size or position == len(paths) - 1:
            activations.append(coder.activations(pending))
            owners += pending_owners
            pending, pending_owners = [], []
        ticker.update(1)
    ticker.close()
    return torch.cat(activations), torch.tensor(owners, dtype=torch.int64)


def _ranking(distances):
    return torch.sort(torch.as_tensor(distances), stable=True).indices


def _l2_set_distance(query, gallery, owners, images):
    """The mean over query rows of the minimum Euclidean distance to each image's rows."""
    d = torch.cdist(query.double(), gallery.double())                 # Pq x patches
    per_image = torch.full((len(query), images), float("inf"), dtype=torch.float64)
    per_image.scatter_reduce_(1, owners.expand(len(query), -1), d, reduce="amin")
    return per_image.mean(dim=0)


def evaluate_instances(coder, images_dir, gt_dir, levels=3, gallery=None, progress=True):
    """InstanceEvaluation of a ground-truth folder: four searches, mean AP and ms per query."""
    queries = read_ground_truth(gt_dir)
    names, files = gallery_images(images_dir, gallery)
    missing = sorted({q.image for q in queries} - set(files))
    if missing:
        raise SSDHError(f"{gt_dir}: query images {missing[:3]} are not in {images_dir}")
    t0 = time.perf_counter()
    activations, owners = encode_gallery(coder, [files[n] for n in names], levels, progress)
    gallery_seconds = time.perf_counter() - t0
    codes = ops.pack_bits(activations)
    whole = torch.zeros(len(owners), dtype=torch.bool)
    whole[torch.searchsorted(owners, torch.arange(len(names)))] = True   # level 1 comes first per image
    global_index = HammingIndex(coder.bits)
    global_index.add(codes[whole], torch.arange(len(names)))
    patch_index = PatchIndex(coder.bits)
    patch_index.add(codes, owners)
    whole_activations = activations[whole]

    rankings = {method: {} for method in METHODS}
    seconds = dict.fromkeys(METHODS, 0.0)
    encode_seconds = 0.0
    for query in queries:
        t0 = time.perf_counter()
        patches, _ = coder.image_patches(crop_query(read_image(files[query.image]), query.box), levels)
        q_act = coder.activations(patches)
        q_codes = ops.pack_bits(q_act)
        encode_seconds += time.perf_counter() - t0
        searches = {
            "global": lambda: global_index.search(q_codes[:1], len(names))[1][0],
            "spatial": lambda: patch_index.search(q_codes, len(names))[1],
            "l2 global": lambda: _ranking(torch.cdist(q_act[:1].double(), whole_activations.double())[0]),
            "l2 spatial": lambda: _ranking(_l2_set_distance(q_act, activations, owners, len(names))),
        }
        for method, search in searches.items():
            t0 = time.perf_counter()
            order = search()
            seconds[method] += time.perf_counter() - t0
            rankings[method][query.name] = [names[i] for i in order.tolist()]
    results = []
    for method in METHODS:
        mean_ap, per_query = mean_average_precision(rankings[method], queries)
        results.append(InstanceResult(method, mean_ap, per_query, 1000 * seconds[method] / len(queries),
                                      None if method.startswith("l2") else coder.bits))
    return InstanceEvaluation(results, len(queries), len(names), len(owners), levels,
                              1000 * encode_seconds / len(queries), gallery_seconds)


def instance_reports(evaluation, name, accuracy=None):
    """RetrievalReport rows of an InstanceEvaluation: the mean AP over the whole ranking
    (map_whole_ranking), the search time per query in extra["ms_per_query"];
    accuracy: the net's class accuracy, when known."""
    from ssdh_port.pipeline.evaluate import RetrievalReport

    rows = []
    for result in evaluation.results:
        what = {"global": "whole-image codes, Hamming", "spatial": f"patch codes L={evaluation.levels}, spatial",
                "l2 global": "whole-image activations, l2",
                "l2 spatial": f"patch activations L={evaluation.levels}, l2 spatial"}[result.method]
        rows.append(RetrievalReport(
            method=f"{name}: {what}", bits=result.bits, queries=evaluation.queries, database=evaluation.gallery,
            topk=0, map_at_topk=None, map_whole_ranking=result.map, classification_accuracy=accuracy, extra={
                "ms_per_query": result.ms_per_query, "search": result.method,
                "patches": evaluation.patches, "levels": evaluation.levels,
                "encode_ms_per_query": evaluation.encode_ms_per_query,
                "encode_seconds_gallery": evaluation.encode_seconds_gallery,
                "per_query_ap": result.per_query}))
    return rows
