"""An instance-retrieval benchmark composed from small object images, written in the
layout of the Oxford and Paris buildings sets, for measuring instance search where
those sets are not at hand.

make_instance_benchmark(objects, labels, class_names, out_dir, seed=...) picks
`per_class` object images of each class as the instances (the other images are
distractors) and paints scenes: a procedural textured background (smooth noise
and a grating, random colours) with objects pasted as squares at random sides
(default 56 to 88 pixels of a 96-pixel scene: an object fills most of its picture,
as the buildings of Oxford and Paris do theirs), positions and mirrors, with a
brightness change each. Per instance:

    a query scene   the instance whole, at another side, mirror, brightness and
                    background than any of its gallery views; its box in the
                    ground truth is the instance's square, so the query is the
                    instance cropped out of that scene (as Oxford queries are)
    `positives` gallery scenes
                    the instance with 0-2 distractors, about half of them fully
                    visible, the rest cut by the border or covered by a
                    distractor pasted after it

The rest of the gallery is scenes of 1-3 distractors (other images of every
class, so also other instances of the query's class). A gallery view's
visible share v (pixels of its square inside the scene and not covered)
decides its list: good v >= 0.8, ok 0.25 <= v < 0.8, junk 0 < v < 0.25, the
bands of the Oxford protocol (good and ok are positives, junk is ignored).

Written: out_dir/images/<name>.png (BGR as read by OpenCV), out_dir/gallery.txt
(the gallery's image names, a line each, in gallery order), out_dir/gt/
<class>_<n>_query.txt (query image name and box x1 y1 x2 y2) and _good.txt,
_ok.txt, _junk.txt, and out_dir/benchmark.json (the parameters and the seed:
the same call writes the same files). Everything comes from one
numpy.random.Generator(seed).
"""
import json
import os

import cv2
import numpy as np

from ssdh_port.errors import SSDHError
from ssdh_port.fileio import atomic_write, write_json

GOOD, OK = 0.8, 0.25
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
SCHEMA = "ssdh_port.instance_benchmark/1"


def _background(rng, size):
    """A textured size x size BGR background: smooth noise plus a grating, random colours."""
    grid = rng.random((rng.integers(3, 9), rng.integers(3, 9), 3)).astype(np.float32)
    noise = cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    angle, period = rng.uniform(0, np.pi), rng.uniform(4, 24)
    grating = 0.5 + 0.5 * np.sin((x * np.cos(angle) + y * np.sin(angle)) * 2 * np.pi / period)
    colour = rng.random(3).astype(np.float32)
    image = 0.6 * noise + 0.4 * grating[..., None] * colour
    return np.clip(image * 255, 0, 255).astype(np.uint8)


def _paste(scene, owner, obj, owner_id, rng, side, x, y):
    """Paste obj (H x W x 3 uint8) as a side x side square at (x, y), which may cross
    the border; owner records which object each pixel shows."""
    size = scene.shape[0]
    patch = cv2.resize(obj, (side, side), interpolation=cv2.INTER_LINEAR)
    if rng.random() < 0.5:
        patch = patch[:, ::-1]
    patch = np.clip(patch.astype(np.float32) * rng.uniform(0.8, 1.2), 0, 255).astype(np.uint8)
    x1, y1, x2, y2 = max(x, 0), max(y, 0), min(x + side, size), min(y + side, size)
    if x2 <= x1 or y2 <= y1:
        return
    scene[y1:y2, x1:x2] = patch[y1 - y:y2 - y, x1 - x:x2 - x]
    owner[y1:y2, x1:x2] = owner_id


def _visible(owner, owner_id, side):
    return float((owner == owner_id).sum()) / (side * side)


def _scene(rng, size, objects, placements):
    """A scene of objects [(image, id)] placed as [(side, x, y)] in paste order;
    -> (scene, owner map)."""
    scene = _background(rng, size)
    owner = np.full((size, size), -1, dtype=np.int64)
    for (obj, obj_id), (side, x, y) in zip(objects, placements):
        _paste(scene, owner, obj, obj_id, rng, side, x, y)
    return scene, owner


def _inside(rng, size, side):
    return side, int(rng.integers(0, size - side + 1)), int(rng.integers(0, size - side + 1))


def _crossing(rng, size, side):
    """A placement with a quarter to three quarters of the square outside the scene."""
    out = int(side * rng.uniform(0.25, 0.75))
    edge = rng.integers(4)
    along = int(rng.integers(0, size - side + 1))
    return [(side, -out, along), (side, size - side + out, along),
            (side, along, -out), (side, along, size - side + out)][edge]


def _bgr(image):
    """C x H x W (a Datum's layout) or H x W x C uint8 -> H x W x 3."""
    image = np.asarray(image, dtype=np.uint8)
    if image.ndim == 3 and image.shape[0] in (1, 3) and image.shape[2] not in (1, 3):
        image = image.transpose(1, 2, 0)
    if image.ndim == 2 or image.shape[2] == 1:
        image = np.repeat(image.reshape(image.shape[0], image.shape[1], 1), 3, axis=2)
    return np.ascontiguousarray(image)


def make_instance_benchmark(objects, labels, class_names, out_dir, *, seed=0, per_class=5, positives=6,
                            gallery=1000, size=96, sides=(56, 88)):
    """Write the benchmark (see the module docstring) into out_dir; -> its description
    (also out_dir/benchmark.json). objects: N images (C x H x W or H x W x C uint8,
    BGR), labels: their classes (0..len(class_names) - 1)."""
    labels = np.asarray(labels)
    lo, hi = sides
    if not 8 <= lo <= hi <= size:
        raise SSDHError(f"instance benchmark: object sides {sides} must lie within 8..{size} (the scene side)")
    classes = len(class_names)
    chosen = []
    rng = np.random.default_rng(seed)
    for c in range(classes):
        members = np.flatnonzero(labels == c)
        if len(members) < per_class + 1:
            raise SSDHError(f"instance benchmark: class {class_names[c]} has {len(members)} images, "
                            f"{per_class} instances and distractors need more")
        chosen += [int(i) for i in rng.choice(members, per_class, replace=False)]
    instances = set(chosen)
    distractors = np.array([i for i in range(len(labels)) if i not in instances])
    n_positive = len(chosen) * positives
    if gallery < n_positive:
        raise SSDHError(f"instance benchmark: a gallery of {gallery} cannot hold {len(chosen)} instances x "
                        f"{positives} views")
    images_dir, gt_dir = os.path.join(out_dir, "images"), os.path.join(out_dir, "gt")
    os.makedirs(images_dir, exist_ok=True)
    os.makedirs(gt_dir, exist_ok=True)

    def image(i):
        return _bgr(objects[i])

    def distractor_set(count):
        return [(image(int(i)), -2 - k) for k, i in enumerate(rng.choice(distractors, count, replace=False))]

    # Gallery scenes: the instances' views, then distractor scenes, in a shuffled order.
    scenes = []   # (scene, instance index or None, visible share)
    for n, obj in enumerate(chosen):
        for view in range(positives):
            side = int(rng.integers(lo, hi + 1))
            kind = "whole" if view < positives // 2 else ("border" if rng.random() < 0.5 else "covered")
            others = distractor_set(int(rng.integers(0, 3)) if kind != "covered" else 1)
            placements = [_inside(rng, size, int(rng.integers(lo, hi + 1))) for _ in others]
            mine = _crossing(rng, size, side) if kind == "border" else _inside(rng, size, side)
            if kind == "covered":
                # The distractor lands on the instance's square, pasted after it.
                s, x, y = mine
                cover = int(rng.integers(lo, hi + 1))
                cx = int(np.clip(x + rng.integers(-cover // 2, s - cover // 2 + 1), 0, size - cover))
                cy = int(np.clip(y + rng.integers(-cover // 2, s - cover // 2 + 1), 0, size - cover))
                order, where = [(image(obj), n)] + others, [mine, (cover, cx, cy)]
            else:
                order, where = others + [(image(obj), n)], placements + [mine]
            scene, owner = _scene(rng, size, order, where)
            scenes.append((scene, n, _visible(owner, n, side)))
    for _ in range(gallery - n_positive):
        others = distractor_set(int(rng.integers(1, 4)))
        scene, _ = _scene(rng, size, others, [_inside(rng, size, int(rng.integers(lo, hi + 1))) for _ in others])
        scenes.append((scene, None, 0.0))
    order = rng.permutation(len(scenes))
    names = [f"scene_{k:05d}" for k in range(len(scenes))]
    lists = {n: {"good": [], "ok": [], "junk": []} for n in range(len(chosen))}
    for name, position in zip(names, order):
        scene, owner_n, visible = scenes[position]
        cv2.imwrite(os.path.join(images_dir, name + ".png"), scene)
        if owner_n is not None and visible > 0:
            lists[owner_n]["good" if visible >= GOOD else "ok" if visible >= OK else "junk"].append(name)
    with atomic_write(os.path.join(out_dir, "gallery.txt"), "w") as f:
        f.write("".join(name + "\n" for name in names))
    queries = []
    for n, obj in enumerate(chosen):
        label = int(labels[obj])
        query_name = f"{class_names[label]}_{n % per_class + 1}"
        side, x, y = _inside(rng, size, int(rng.integers(lo, hi + 1)))
        scene, _ = _scene(rng, size, [(image(obj), n)], [(side, x, y)])
        image_name = f"query_{n:03d}"
        cv2.imwrite(os.path.join(images_dir, image_name + ".png"), scene)
        with open(os.path.join(gt_dir, f"{query_name}_query.txt"), "w") as f:
            f.write(f"{image_name} {x} {y} {x + side} {y + side}\n")
        for kind, members in lists[n].items():
            with open(os.path.join(gt_dir, f"{query_name}_{kind}.txt"), "w") as f:
                f.write("".join(m + "\n" for m in members))
        queries.append({"name": query_name, "object": obj, "class": class_names[label],
                        **{kind: len(members) for kind, members in lists[n].items()}})
    description = {"schema": SCHEMA, "seed": seed, "per_class": per_class, "positives": positives,
                   "gallery": gallery, "size": size, "sides": list(sides), "good": GOOD, "ok": OK,
                   "queries": queries}
    write_json(os.path.join(out_dir, "benchmark.json"), description)
    return description


def read_benchmark(out_dir):
    """benchmark.json of a written benchmark, or None."""
    path = os.path.join(out_dir, "benchmark.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)
