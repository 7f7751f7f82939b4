"""Image search with a trained SSDH net: an image -> the net's latent layer -> its
code -> the nearest codes of a HammingIndex.

The net, the weights, the latent blob and the preprocessing come from the model
card beside the code file (ssdh_port.service.model_card); arguments override it. Results
carry each item's id and its label; labels (and database images) are looked up by
the item's position in the code file, which is its record in the database the
codes were encoded from. Shared by tools/search.py and the retrieval service
(ssdh_port.service.server).
"""
import dataclasses
import io
import os
import warnings

import cv2
import numpy as np
import torch

from ssdh_port import ops
from ssdh_port.caffe.net import CaffeNet, find_latent_blob
from ssdh_port.data.db import open_db
from ssdh_port.data.transformer import DataTransformer, transform_param
from ssdh_port.errors import SSDHError
from ssdh_port.hashing.index import HammingIndex
from ssdh_port.hashing.live import LiveIndex
from ssdh_port.service.model_card import ModelCard, card_path, read_card_file

# Formats accepted from clients (Pillow's names): what OpenCV decodes as well.
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "WEBP", "PPM", "GIF")


class ImageInputError(SSDHError):
    """An uploaded image that cannot be used; `status` is the HTTP status that says why
    (400 empty, 415 not an image, 422 undecodable or too many pixels)."""

    def __init__(self, message, status):
        super().__init__(message)
        self.status = status


@dataclasses.dataclass
class Hit:
    id: int
    distance: int
    label: object        # int, a multi-hot list, or None without labels
    position: int


def decode_image(data, max_pixels=None, name="the image"):
    """Encoded image bytes -> an OpenCV array (BGR or gray, as stored). The size is read
    from the header first: an image over max_pixels is refused before any pixel is
    decoded (a small PNG can claim 30000 x 30000 pixels)."""
    from PIL import Image

    if not data:
        raise ImageInputError(f"{name} is empty", 400)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data)) as header:
                width, height, kind = header.width, header.height, header.format
        except Image.DecompressionBombError as err:
            raise ImageInputError(f"{name}: too many pixels ({err}); the limit is {max_pixels}", 422) from None
        except Exception:  # Pillow raises several types for bytes that are no image
            raise ImageInputError(f"{name} is not an image (expected one of {', '.join(IMAGE_FORMATS)})",
                                  415) from None
    if kind not in IMAGE_FORMATS:
        raise ImageInputError(f"{name}: {kind} images are not accepted (expected one of "
                              f"{', '.join(IMAGE_FORMATS)})", 415)
    if max_pixels and width * height > max_pixels:
        raise ImageInputError(f"{name}: {width} x {height} pixels, more than the limit of {max_pixels}", 422)
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ImageInputError(f"{name}: a {kind} header but the pixels cannot be decoded", 422)
    if image.dtype != np.uint8:
        image = cv2.convertScaleAbs(image, alpha=255.0 / max(1, np.iinfo(image.dtype).max))
    if image.ndim == 3 and image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    return image


class ImageSearch:
    """search(images, k) and neighbors(item ids, k) over a code file with its net;
    with a LiveIndex, also add_images / add_codes / remove, each durable when it
    returns, while searches go on (each reads one state of the index)."""

    def __init__(self, index, db_path=None, *, backend="lmdb", card=None, prototxt=None, weights=None,
                 latent_blob=None, mean_file=None, mean_value=None, scale=None, writable=False):
        """index: a code file (its card is read from beside it), or an open index (a
        HammingIndex, a LiveIndex or a MilvusIndex; then `card` names its model card,
        if any). A LiveIndex takes changes; a MilvusIndex too when writable."""
        if isinstance(index, (str, os.PathLike)):
            card = card or card_path(index)
            index = HammingIndex.load(index)
        self.live = index if isinstance(index, LiveIndex) else None
        self.writer = self.live or (index if writable and hasattr(index, "remove") else None)
        if writable and self.writer is None:
            raise SSDHError(f"a {type(index).__name__} does not take changes (a LiveIndex or a MilvusIndex does)")
        self._index = index
        self._last_id = -1  # the largest id this engine has added
        found = read_card_file(card) or ModelCard()
        self.card = found.with_overrides(prototxt=prototxt, weights=weights, latent_blob=latent_blob,
                                         mean_file=mean_file, mean_value=mean_value, scale=scale)
        self.card.require("prototxt", "weights")
        self.card.check_files()
        view = self.view()
        if self.live is not None:
            self.has_labels = bool(self.live.label_width)
        elif hasattr(index, "label_kind"):
            self.has_labels = index.label_kind is not None
        else:
            self.has_labels = view.labels_at([0]) is not None if len(view) else False
        # Database images by the item's record, its position in the code file that encode
        # wrote: for a live index, the file's items while it was never compacted (a
        # compaction moves positions; items added later have no record).
        self._records = None
        if self.live is not None:
            self._records = ({int(i): p for p, i in enumerate(self.live.base_ids)}
                             if self.live.generation == 0 else {})
        self.net = CaffeNet(self.card.prototxt, weights=self.card.weights)
        if not self.net.input_names:
            raise SSDHError(f"{self.card.prototxt}: a deploy net with an Input layer is needed")
        self.input = self.net.input_names[0]
        self.shape = self.net.blob_shapes[self.input]  # N x C x H x W
        self.latent = self.card.latent_blob or find_latent_blob(self.net)
        self.transformer = DataTransformer(self._transform_param(), "TEST")
        self.db = open_db(db_path, backend) if db_path else None
        if self.db is not None and len(self.db) < self.items:
            raise SSDHError(f"{db_path}: {len(self.db)} records for the {self.items} indexed items")

    @property
    def index(self):
        """What searches read: the index, or a live index's current state."""
        return self.view()

    def view(self):
        return self.live.view() if self.live is not None else self._index

    @property
    def items(self):
        return len(self.view())

    def _transform_param(self):
        t = self.card.transform
        return transform_param(float(t["scale"]), t["mean_file"], t["mean_value"], int(t["crop_size"] or 0))


    def encode_images(self, images):
        """BGR (or gray) H x W (x C) uint8 images -> packed codes, one row each. Each is
        resized to the size the database images had (the card's image_size; else the
        net's input) and goes through the same transformation (crop, mean, scale)."""
        _, channels, height, width = self.shape
        if self.card.image_size:
            height, width = self.card.image_size
        batch = []
        for image in images:
            if channels == 1 and image.ndim == 3:
                image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
            if channels == 3 and image.ndim == 2:
                image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
            image = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
            batch.append(image[None] if image.ndim == 2 else image.transpose(2, 0, 1))
        data = self.transformer(torch.from_numpy(np.stack(batch)))
        with torch.inference_mode():
            latent = self.net(**{self.input: data})[self.latent]
        return ops.pack_bits(latent.reshape(len(batch), -1))

    def _hits(self, view, distances, positions):
        flat = positions.reshape(-1)
        ids = view.ids_at(flat).tolist()
        labels = view.labels_at(flat)
        labels = None if labels is None else labels.tolist()
        out, n = [], 0
        for row_d, row_p in zip(distances.tolist(), positions.tolist()):
            hits = []
            for d, p in zip(row_d, row_p):
                hits.append(Hit(ids[n], d, None if labels is None else labels[n], p))
                n += 1
            out.append(hits)
        return out

    def search_codes(self, codes, k):
        """[[Hit] * k] per packed code."""
        view = self.view()
        return self._hits(view, *view.search_positions(codes, k))

    def search(self, images, k=10):
        """[[Hit] * k] per image: the k nearest database items, ties in database order."""
        return self.search_codes(self.encode_images(images), k)

    def item(self, item_id, view=None):
        """(position, label) of a database item; an unknown id is an error that names it."""
        view = view or self.view()
        position = int(view.positions_of([item_id])[0])
        labels = view.labels_at([position])
        return position, None if labels is None else labels[0].tolist()

    def neighbors(self, item_id, k=10):
        """[Hit] * k nearest to a database item's own code (the item itself first)."""
        view = self.view()
        position, _ = self.item(item_id, view)
        return self._hits(view, *view.search_positions(view.codes_at([position]), k))[0]

    def database_image(self, item_id):
        """The stored image of a database item (BGR H x W x C or gray H x W uint8)."""
        if self.db is None:
            raise SSDHError("no image database given")
        position, _ = self.item(item_id)
        if self._records is not None:
            position = self._records.get(int(item_id))
            if position is None:
                raise SSDHError(f"item {item_id} has no record in the image database (added after it was "
                                "made, or the code file was compacted since)")
        array, _ = self.db.read(position)
        image = np.asarray(array)
        if image.dtype != np.uint8:
            image = np.clip(image, 0, 255).astype(np.uint8)
        return image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)


    # ------------------------------------------------------------ changes (a live index)

    def _writable(self):
        if self.writer is None:
            raise SSDHError("the index is read-only (ssdh serve --writable takes changes)")
        return self.writer

    def next_ids(self, count):
        """Ids for items added without one: after the largest id the index has held."""
        writer = self._writable()
        if self.live is None:
            return writer.next_ids(count)
        start = max(max(self.live.view().where, default=-1), self._last_id) + 1  # writer thread
        self._last_id = start + count - 1
        return list(range(start, start + count))

    def add_codes(self, codes, ids=None, labels=None):
        """Add packed codes (or 0/1 rows) with their ids (None: the next ones, chosen
        here, in the caller's one writer thread); returns the ids once the change is
        durable."""
        writer = self._writable()
        if ids is None:
            ids = self.next_ids(len(codes))
        writer.add(codes, ids, labels)
        self._last_id = max([self._last_id, *[int(i) for i in ids]])
        return [int(i) for i in ids]

    def remove(self, ids):
        return self._writable().remove(ids)


class SpatialSearch(ImageSearch):
    """Instance search over a patch code file (ssdh encode --patches L): a query
    image's patches at levels 1..L go through the net as whole images would, and
    images are ranked by the set distance (hashing.patches.PatchIndex); hits carry
    the image id and the mean distance (a float). Database images by image id, the
    record the patches were cut from."""

    def __init__(self, path, db_path=None, *, levels, card=None, **overrides):
        from ssdh_port.hashing.patches import PatchIndex

        self.levels = int(levels)
        if self.levels < 1:
            raise SSDHError(f"spatial search needs patch levels >= 1, got {levels}")
        super().__init__(PatchIndex.load(path), db_path, card=card or card_path(path), **overrides)

    def encode_images(self, images):
        """[packed patch codes] per image."""
        from ssdh_port.hashing.patches import crop_patch, patch_boxes

        out = []
        for image in images:
            boxes = patch_boxes(image.shape[1], image.shape[0], self.levels)
            out.append(super().encode_images([crop_patch(image, box) for box in boxes]))
        return out

    def search_codes(self, codes, k):
        out = []
        for patch_codes in codes:
            distances, ids = self.index.search(patch_codes, k)
            out.append([Hit(int(i), float(d), None, int(i)) for d, i in zip(distances.tolist(), ids.tolist())])
        return out

    def item(self, item_id, view=None):
        self.index.image_codes(item_id)  # an unknown image is an error that names it
        return int(item_id), None

    def neighbors(self, item_id, k=10):
        return self.search_codes([self.index.image_codes(item_id)], k)[0]

    def database_image(self, item_id):
        if self.db is None:
            raise SSDHError("no image database given")
        self.item(item_id)
        array, _ = self.db.read(int(item_id))
        image = np.asarray(array)
        return image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)


def open_index(path=None, milvus=None, collection="ssdh_codes", card=None, writable=False):
    """(the index to search, its model card's path): a code file, or a Milvus collection
    (uri: a Milvus Lite file or http://host:19530), whose card lies beside a Lite file
    unless `card` names it."""
    if (path is None) == (milvus is None):
        raise SSDHError("give a code file (--index) or a Milvus collection (--milvus URI), not both")
    if path is not None:
        return (LiveIndex(path) if writable else HammingIndex.load(path)), card or card_path(path)
    from ssdh_port.hashing.milvus import MilvusIndex
    from ssdh_port.service.model_card import milvus_card_path

    return MilvusIndex.open(milvus, collection), card or milvus_card_path(milvus, collection)


def read_images(paths):
    """Image files -> arrays as OpenCV reads them (unchanged depth and channels)."""
    images = []
    for path in paths:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as err:
            raise SSDHError(f"{path}: cannot read the image ({err.strerror})") from None
        try:
            images.append(decode_image(data, name=str(path)))
        except ImageInputError as err:
            raise SSDHError(str(err)) from None
    return images
