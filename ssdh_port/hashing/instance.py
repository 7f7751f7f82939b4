"""The instance-retrieval protocol of the Oxford and Paris buildings datasets:
their ground-truth folders, and mean AP over the queries.

A ground-truth folder holds, per query, <landmark>_<n>_query.txt (one line: the
query's image name, without extension, and its box x1 y1 x2 y2, which is what the
query is cropped to; Oxford's names carry an "oxc1_" prefix that the image files
lack) and <landmark>_<n>_good.txt, _ok.txt, _junk.txt (an image name per line).
AP is metrics.instance_average_precision; mean AP is over the queries (55 for both
datasets).
"""
import dataclasses
import glob
import os

from ssdh_port.errors import SSDHError
from ssdh_port.hashing.metrics import instance_average_precision


@dataclasses.dataclass
class InstanceQuery:
    name: str             # <landmark>_<n>
    image: str            # the query's image name (no extension, no "oxc1_" prefix)
    box: tuple            # (x1, y1, x2, y2) in pixels, floats as given
    good: list
    ok: list
    junk: list


def read_ground_truth(folder):
    """[InstanceQuery] of a ground-truth folder, in name order; a missing or malformed
    file is an error that names it."""
    queries = []
    for path in sorted(glob.glob(os.path.join(folder, "*_query.txt"))):
        name = os.path.basename(path)[:-len("_query.txt")]
        with open(path) as f:
            fields = f.read().split()
        if len(fields) != 5:
            raise SSDHError(f"{path}: expected an image name and a box x1 y1 x2 y2, got {fields}")
        try:
            box = tuple(float(v) for v in fields[1:])
        except ValueError:
            raise SSDHError(f"{path}: the box {fields[1:]} is not four numbers") from None
        image = fields[0][len("oxc1_"):] if fields[0].startswith("oxc1_") else fields[0]
        lists = {}
        for kind in ("good", "ok", "junk"):
            list_path = os.path.join(folder, f"{name}_{kind}.txt")
            try:
                with open(list_path) as f:
                    lists[kind] = [line.strip() for line in f if line.strip()]
            except OSError as err:
                raise SSDHError(f"{list_path}: cannot read the {kind} list ({err.strerror})") from None
        if not lists["good"] and not lists["ok"]:
            raise SSDHError(f"{name}: no good or ok image")
        queries.append(InstanceQuery(name, image, box, lists["good"], lists["ok"], lists["junk"]))
    if not queries:
        raise SSDHError(f"{folder}: no *_query.txt ground-truth file")
    return queries


def crop_query(image, box):
    """The query image cropped to its box (pixels x1..x2, y1..y2, clipped to the image)."""
    x1, y1, x2, y2 = box
    height, width = image.shape[:2]
    x1, y1 = max(0, int(round(x1))), max(0, int(round(y1)))
    x2, y2 = min(width, int(round(x2))), min(height, int(round(y2)))
    if x2 <= x1 or y2 <= y1:
        raise SSDHError(f"the box {box} leaves nothing of a {width} x {height} image")
    return image[y1:y2, x1:x2]


def mean_average_precision(rankings, queries):
    """(mean AP, {query name: AP}) of rankings {query name: gallery image names in
    ranked order} against the ground truth."""
    per_query = {}
    for query in queries:
        if query.name not in rankings:
            raise SSDHError(f"no ranking for query {query.name}")
        per_query[query.name] = instance_average_precision(rankings[query.name], query.good, query.ok, query.junk)
    return sum(per_query.values()) / len(per_query), per_query
