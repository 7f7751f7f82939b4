"""Instance-level search with patch codes (SSDH TPAMI section 4.11, after the spatial
search of Razavian et al.): an image is coded as the binary codes of square patches at
several scales, and the distance of a query image Q to a gallery image I is the
mean over Q's patches of the minimum Hamming distance from that patch to I's patches.

patch_boxes(width, height, levels) lists the patches; PatchIndex holds patch codes
tagged with their image and searches by that set distance (ssdh_port.ops.
hamming_set_distance, CPU and CUDA kernels), exactly, ties in the order the images
were first added. A patch code file is the code-file format of HammingIndex with
the image id of each patch as its id and (level, x, y, side) as a 4-column label.
"""
import numpy as np
import torch

from ssdh_port import ops
from ssdh_port.errors import SSDHError
from ssdh_port.hashing.codes import as_packed
from ssdh_port.hashing.index import HammingIndex


def patch_boxes(width, height, levels=3):
    """Patch boxes (level, x, y, side) of a width x height image: level 1 is the whole
    image (side 0 stands for it); level l >= 2 has l x l square patches of side
    s = 2 * min(width, height) / (l + 1) at l evenly spaced positions per axis, which
    on the shorter side are strides of s / 2 (half-side overlaps) and cover it
    exactly, on the longer side span it end to end. Levels 1..3 give 1 + 4 + 9 = 14
    patches."""
    if width < 1 or height < 1:
        raise SSDHError(f"patch_boxes: an image of {width} x {height} pixels has no patches")
    if levels < 1:
        raise SSDHError(f"patch_boxes: levels must be at least 1, got {levels}")
    boxes = [(1, 0, 0, 0)]
    short = min(width, height)
    for level in range(2, levels + 1):
        side = max(1, int(round(2 * short / (level + 1))))
        xs = np.linspace(0, width - side, level).round().astype(int)
        ys = np.linspace(0, height - side, level).round().astype(int)
        boxes += [(level, int(x), int(y), side) for y in ys for x in xs]
    return boxes


def crop_patch(image, box):
    """The pixels of one patch box (H x W [x C] array)."""
    level, x, y, side = box
    if side == 0:
        return image
    return image[y:y + side, x:x + side]


class PatchIndex:
    """Patch codes tagged with their image; search(query patch codes, k) -> the k
    nearest images by the set distance, as float distances (ascending) and image ids,
    ties in the order the images were first added."""

    def __init__(self, bits, device="cpu"):
        self.bits, self.bytes = int(bits), (int(bits) + 7) // 8
        self.device = torch.device(device)
        self._codes, self._images, self._boxes = [], [], []
        self._order = {}  # image id -> rank of first appearance
        self._arranged = None

    def __len__(self):
        """The number of images."""
        return len(self._order)

    @property
    def patches(self):
        return sum(len(c) for c in self._codes)

    def add(self, codes, image_ids, boxes=None):
        """Patch codes (0/1 rows or packed bytes) with the image id of each; an
        image's patches may come in several calls, interleaved with others'."""
        packed = as_packed(codes, "PatchIndex.add: codes", self.bits).cpu()
        if packed.shape[1] != self.bytes:
            raise SSDHError(f"PatchIndex.add: codes of {packed.shape[1]} bytes; {self.bits}-bit patches take "
                            f"{self.bytes}")
        images = torch.as_tensor(np.asarray(image_ids), dtype=torch.int64).reshape(-1)
        if len(images) != len(packed):
            raise SSDHError(f"PatchIndex.add: {len(images)} image ids for {len(packed)} codes")
        if boxes is not None:
            boxes = torch.as_tensor(np.asarray(boxes), dtype=torch.int32).reshape(len(packed), 4)
        for image in images.tolist():
            self._order.setdefault(int(image), len(self._order))
        self._codes.append(packed)
        self._images.append(images)
        self._boxes.append(boxes if boxes is not None else torch.zeros(len(packed), 4, dtype=torch.int32))
        self._arranged = None

    def _arrange(self):
        """Patches grouped by image in first-added order (stable within an image),
        the segment offsets, and the image ids in that order."""
        if self._arranged is None:
            codes, images = torch.cat(self._codes), torch.cat(self._images)
            rank = torch.tensor([self._order[i] for i in images.tolist()], dtype=torch.int64)
            order = torch.sort(rank, stable=True).indices
            counts = torch.bincount(rank, minlength=len(self._order))
            segments = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(counts, 0)])
            ids = torch.tensor(sorted(self._order, key=self._order.get), dtype=torch.int64)
            self._arranged = (codes[order].to(self.device), segments.to(self.device), ids)
        return self._arranged

    def set_distances(self, query_codes, images=None):
        """(mean set distance to every image, float64, in first-added order; their ids);
        images: only these image ids (kept in first-added order)."""
        queries = as_packed(query_codes, "PatchIndex.search: query codes", self.bits)
        if queries.shape[1] != self.bytes or len(queries) == 0:
            raise SSDHError(f"PatchIndex.search: give one or more {self.bits}-bit query patch codes")
        if not len(self):
            raise SSDHError("PatchIndex.search: the index is empty")
        codes, segments, ids = self._arrange()
        if images is not None:
            unknown = [int(i) for i in images if int(i) not in self._order]
            if unknown:
                raise SSDHError(f"PatchIndex.search: images {unknown[:5]} are not in the index")
            ranks = sorted({self._order[int(i)] for i in images})
            if not ranks:
                raise SSDHError("PatchIndex.search: no candidate image")
            parts = [codes[segments[r]:segments[r + 1]] for r in ranks]
            sizes = torch.tensor([len(p) for p in parts], dtype=torch.int64)
            codes = torch.cat(parts)
            segments = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(sizes, 0)]).to(codes.device)
            ids = ids[torch.tensor(ranks)]
        sums = ops.hamming_set_distance(queries.to(self.device), codes, segments).cpu()
        return sums.double() / len(queries), ids

    def search(self, query_codes, k, candidates=None):
        """(distances k float64 ascending, image ids k): the k nearest images by the
        set distance, ties in the order the images were first added; candidates: only
        among these image ids (the second stage of a two-stage search)."""
        distances, ids = self.set_distances(query_codes, candidates)
        k = min(int(k), len(ids))
        order = torch.sort(distances, stable=True).indices[:k]
        return distances[order], ids[order]


    def labels_at(self, positions):
        return None  # patch code files carry boxes, not labels

    def image_codes(self, image_id):
        """The packed patch codes of one image (in the order they were added)."""
        if int(image_id) not in self._order:
            raise SSDHError(f"no image {image_id} in the patch index")
        codes, segments, ids = self._arrange()
        rank = self._order[int(image_id)]
        return codes[segments[rank]:segments[rank + 1]].cpu()

    # ------------------------------------------------------------ files

    def save(self, path):
        """A patch code file: the code-file format, ids = image ids, labels = boxes."""
        index = HammingIndex(self.bits)
        if self.patches:
            index.add(torch.cat(self._codes), torch.cat(self._images), torch.cat(self._boxes))
        index.save(path)

    @classmethod
    def load(cls, path, device="cpu"):
        index = HammingIndex.load(path)
        labels = index.labels
        if len(index) and (labels is None or labels.dim() != 2 or labels.shape[1] != 4):
            raise SSDHError(f"{path}: not a patch code file (each patch needs a 4-column box as its label)")
        patches = cls(index.bits, device)
        if len(index):
            patches.add(index.codes, index.ids.numpy(), labels.numpy())
        return patches


def two_stage_search(global_index, patches, query_code, query_patch_codes, shortlist, k):
    """The shortlist of `shortlist` images nearest by their whole-image codes
    (global_index: a HammingIndex whose ids are the image ids), re-ranked by the set
    distance of their patches (what the CVPRW coarse-to-fine search does with fc7):
    (distances k, image ids k). With a shortlist of every image it equals
    patches.search."""
    _, candidates = global_index.search(query_code, min(int(shortlist), len(global_index)))
    return patches.search(query_patch_codes, k, candidates=candidates.reshape(-1).tolist())
