"""Caffe's dataset tools as functions: convert_imageset (list file -> LMDB of
Datum records) and compute_image_mean (LMDB -> mean BlobProto).

convert_imageset keeps Caffe's behaviour: list lines 'relative/path label'
(split at the last space), keys '%08d_<path>', OpenCV decoding (color unless
gray), optional bilinear resize, raw CHW BGR bytes, or with encoded the image
file itself when no resize or re-encoding is needed (else re-encoded to
encode_type).
"""
import os

import cv2
import numpy as np

from ssdh_port.caffe import io as caffe_io
from ssdh_port.data.datum import array_to_datum, encoded_datum
from ssdh_port.data.db import DatumDBWriter, open_db
from ssdh_port.errors import SSDHError
from ssdh_port.progress import bar, logger

# OpenCV reports unreadable files itself on stderr; the messages here say it once, naming the list line.
cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)


class ImagesetError(SSDHError):
    """Bad list file or image; the message names the file and line."""


def read_list(path):
    """[(relative path, int label)] of a Caffe list file."""
    entries = []
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError as err:
        raise ImagesetError(f"{path}: cannot read the list file ({err.strerror})") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        name, _, label = line.rstrip().rpartition(" ")
        if not name:
            raise ImagesetError(f"{path}:{number}: expected 'path label', got {line!r}")
        try:
            entries.append((name, int(label)))
        except ValueError:
            raise ImagesetError(f"{path}:{number}: label {label!r} is not an integer") from None
    return entries


def image_datum(path, label, resize_height=0, resize_width=0, gray=False, encode_type=""):
    """One image file -> Datum, as Caffe's ReadImageToDatum does."""
    flag = cv2.IMREAD_GRAYSCALE if gray else cv2.IMREAD_COLOR
    image = cv2.imread(path, flag)
    if image is None:
        raise ImagesetError(f"{path}: cannot read the image")
    resized = bool(resize_height and resize_width)
    if resized:
        image = cv2.resize(image, (resize_width, resize_height), interpolation=cv2.INTER_LINEAR)
    if encode_type:
        extension = os.path.splitext(path)[1][1:].lower()
        same_format = extension in (encode_type, "jpeg" if encode_type == "jpg" else encode_type)
        original_colour = (image.ndim == 3) != gray
        if not resized and same_format and original_colour:
            with open(path, "rb") as f:
                return encoded_datum(f.read(), label)
        ok, buffer = cv2.imencode("." + encode_type, image)
        if not ok:
            raise ImagesetError(f"{path}: cannot encode as {encode_type}")
        return encoded_datum(buffer.tobytes(), label)
    chw = image[None] if image.ndim == 2 else image.transpose(2, 0, 1)
    return array_to_datum(np.ascontiguousarray(chw), label)


def convert_imageset(root, list_file, db_path, resize_height=0, resize_width=0, shuffle=False,
                     gray=False, encoded=False, encode_type="", check_size=False, seed=None,
                     overwrite=False, backend="lmdb", strict=False):
    """Write the images of list_file (paths relative to root) to a new LMDB (or
    LevelDB); returns the number of records written. An image that cannot be
    read is skipped with a logged error, as Caffe does (its key number stays
    unused); strict=True makes it an error instead."""
    entries = read_list(list_file)
    if not entries:
        raise ImagesetError(f"{list_file}: no images listed")
    if shuffle:
        order = np.random.default_rng(seed).permutation(len(entries))
        entries = [entries[i] for i in order]
    size, skipped = None, 0
    with DatumDBWriter(db_path, overwrite=overwrite, backend=backend) as writer:
        for index, (name, label) in enumerate(bar(entries, desc="convert_imageset", unit="img")):
            enc = encode_type
            if encoded and not enc:
                enc = os.path.splitext(name)[1][1:].lower()  # Caffe guesses from the name
            try:
                datum = image_datum(os.path.join(root, name), label, resize_height, resize_width,
                                    gray, enc if encoded else "")
            except ImagesetError as err:
                if strict:
                    raise ImagesetError(f"{list_file}:{index + 1}: {err}") from None
                logger.error("%s:%d: %s; skipped", list_file, index + 1, err)
                skipped += 1
                continue
            if check_size and not datum.encoded:
                shape = (datum.channels, datum.height, datum.width)
                if size is not None and shape != size:
                    raise ImagesetError(f"{name}: size {shape} differs from the first image {size}")
                size = shape
            writer.put(f"{index:08d}_{name}", datum)
        if skipped == len(entries):  # inside the writer: the empty database is not committed
            raise ImagesetError(f"{list_file}: none of the {len(entries)} listed images could be read")
    return len(entries) - skipped


def compute_image_mean(db_path, backend="lmdb"):
    """Mean image (1 x C x H x W float32) of an LMDB, as compute_image_mean computes
    it: a float32 sum (exact for byte images up to 65,000 records) divided in float32."""
    db = open_db(db_path, backend)
    total = None
    for index in bar(range(len(db)), desc="image mean", unit="img"):
        array, _ = db.read(index)
        if total is None:
            total = np.zeros(array.shape, np.float32)
        elif array.shape != total.shape:
            raise ImagesetError(
                f"{db_path} record {db.keys[index]!r}: shape {array.shape} differs from the "
                f"first record's {total.shape}; a mean needs images of one size")
        total += array
    return (total / np.float32(len(db)))[None]


def write_image_mean(db_path, mean_path, backend="lmdb"):
    mean = compute_image_mean(db_path, backend)
    caffe_io.write_blobproto(mean, mean_path)
    return mean


def read_triplet_list(path):
    """[(anchor, similar, dissimilar)] of a DNNH triplet list (three paths a line)."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError as err:
        raise ImagesetError(f"{path}: cannot read the triplet list ({err.strerror})") from None
    triplets = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        names = line.split()
        if len(names) != 3:
            raise ImagesetError(f"{path}:{number}: expected 'anchor similar dissimilar' (three paths), "
                                f"got {len(names)} field(s): {line!r}")
        triplets.append((number, tuple(names)))
    return triplets


def triplet_datum(images, label=1):
    """Three C x H x W uint8 images of one size -> one Datum of 3C channels
    (anchor, similar, dissimilar), as caffe-dnnh stores a triplet."""
    return array_to_datum(np.concatenate(images, axis=0), label)


def _read_chw(path, resize_height, resize_width, gray):
    image = cv2.imread(path, cv2.IMREAD_GRAYSCALE if gray else cv2.IMREAD_COLOR)
    if image is None:
        raise ImagesetError(f"{path}: cannot read the image")
    if resize_height and resize_width:
        image = cv2.resize(image, (resize_width, resize_height), interpolation=cv2.INTER_LINEAR)
    return image[None] if image.ndim == 2 else image.transpose(2, 0, 1)


def convert_triplet_imageset(root, list_file, db_path, count=None, resize_height=0, resize_width=0, gray=False,
                             overwrite=False, backend="lmdb"):
    """caffe-dnnh's convert_triplet_imageset: the first `count` triplets of
    list_file (all when None), paths relative to root -> one 3C-channel Datum
    each (anchor, similar, dissimilar; BGR CHW, or gray), label 1, keys
    '%08d_<anchor path>', in list order. An unreadable image, a bad line or images
    of different sizes are errors naming list_file:line; the database is written
    to a temporary folder and renamed when complete. Returns the count written."""
    triplets = read_triplet_list(list_file)
    if count is not None:
        if count < 1 or count > len(triplets):
            raise ImagesetError(f"{list_file}: {len(triplets)} triplets listed, {count} asked for")
        triplets = triplets[:count]
    if not triplets:
        raise ImagesetError(f"{list_file}: no triplets listed")
    shape = None
    with DatumDBWriter(db_path, overwrite=overwrite, backend=backend) as writer:
        for index, (number, names) in enumerate(bar(triplets, desc="convert_triplet_imageset", unit="triplet")):
            try:
                images = [_read_chw(os.path.join(root, name), resize_height, resize_width, gray) for name in names]
            except ImagesetError as err:
                raise ImagesetError(f"{list_file}:{number}: {err}") from None
            shapes = {im.shape for im in images} | ({shape} if shape else set())
            if len(shapes) != 1:
                raise ImagesetError(f"{list_file}:{number}: images of different sizes {sorted(shapes)} "
                                    "(give --resize_height and --resize_width)")
            shape = images[0].shape
            writer.put(f"{index:08d}_{names[0]}", triplet_datum(images))
    return len(triplets)
