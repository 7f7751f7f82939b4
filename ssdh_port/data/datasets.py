"""Dataset preparers: the archives people have -> Caffe list files and Datum
databases, as the authors' pipeline made them.

* MNIST idx files -> train/test LMDBs of 1 x 28 x 28 raw bytes.
* The authors' CIFAR-10 JPEG archive (cvprw15-cifar10-dataset-jpg.tar.gz) -> the
  images, Caffe list files (train in the authors' train.txt order, test in the
  canonical order test/1.jpg .. test/10000.jpg), LMDBs at 32 x 32 (OpenCV
  decoding, BGR) and, like the authors' AlexNet pipeline, resized to 256 x 256,
  with mean files.
* The standard CIFAR-10 python or binary tarballs -> LMDBs of the stored RGB
  planar bytes (what Caffe's convert_cifar_data writes).
* A folder of class sub-folders -> a list file.
"""
import os
import pickle
import tarfile

import numpy as np

from ssdh_port.data import mnist
from ssdh_port.data.db import DatumDBWriter
from ssdh_port.data.imageset import convert_imageset, write_image_mean
from ssdh_port.errors import SSDHError
from ssdh_port.progress import logger

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff")


class DatasetError(SSDHError):
    """An archive that is not what it should be; the message names it."""


def _log(message):
    logger.info(message)


def write_array_db(path, images, labels, overwrite=False, backend="lmdb"):
    """N x C x H x W uint8 images + labels -> a database with keys '%08d'."""
    with DatumDBWriter(path, overwrite=overwrite, backend=backend) as writer:
        for i, (image, label) in enumerate(zip(images, labels)):
            writer.put_array(f"{i:08d}", image, int(label))
    return len(images)


def prepare_mnist(out_dir, idx_dir=mnist.DEFAULT_ROOT, overwrite=False):
    """MNIST -> out_dir/train_lmdb and out_dir/test_lmdb (raw 1 x 28 x 28 bytes)."""
    paths = {}
    for split in ("train", "test"):
        images, labels = mnist.load_split(split, idx_dir)
        path = os.path.join(out_dir, f"{split}_lmdb")
        if os.path.exists(path) and not overwrite:
            _log(f"{path} exists, kept")
        else:
            write_array_db(path, images[:, None], labels, overwrite=overwrite)
            _log(f"wrote {len(images)} MNIST {split} images to {path}")
        paths[split] = path
    return paths


def _safe_members(archive, prefix):
    for member in archive.getmembers():
        name = os.path.normpath(member.name)
        if name.startswith("..") or os.path.isabs(name):
            raise DatasetError(f"{archive.name}: unsafe path {member.name!r} in the archive")
        if name.startswith(prefix) and (member.isfile() or member.isdir()):
            yield member


def extract_cifar10_jpg(archive, out_dir):
    """The authors' CIFAR-10 JPEG archive -> out_dir/images (once) and the list
    files train.txt (the authors' order) and test.txt (canonical order);
    returns (images folder, {"train_list", "test_list"})."""
    prefix = os.path.join("examples", "cvprw15-cifar10", "dataset")
    images_dir = os.path.join(out_dir, "images")
    try:
        with tarfile.open(archive) as tar:
            if not os.path.exists(os.path.join(images_dir, "val.txt")):
                _log(f"extracting {archive} ...")
                members = list(_safe_members(tar, prefix))
                if not members:
                    raise DatasetError(f"{archive}: no {prefix}/ folder: not the authors' CIFAR-10 archive")
                for member in members:
                    member.name = os.path.relpath(os.path.normpath(member.name), prefix)
                tar.extractall(images_dir, members=members, filter="data")
    except (tarfile.TarError, OSError) as err:
        raise DatasetError(f"{archive}: cannot read the archive ({err})") from None
    return images_dir, _cifar_lists(images_dir, out_dir)


def prepare_cifar10_jpg(archive, out_dir, sizes=(32,), overwrite=False, layout="bgr"):
    """The authors' CIFAR-10 JPEG archive -> images, list files, LMDBs and means.

    layout "bgr": convert_imageset's records (OpenCV BGR), as the authors' own
    pipeline made them. layout "rgb": RGB planar bytes at 32 x 32, what Caffe's
    convert_cifar_data writes from the binary set, for models trained on that
    (the cifar10_quick example). Returns {"train_list", "test_list",
    "<split>_lmdb_<size>", "mean_<size>"}."""
    if layout not in ("bgr", "rgb"):
        raise DatasetError(f"layout must be 'bgr' or 'rgb', got {layout!r}")
    images_dir, lists = extract_cifar10_jpg(archive, out_dir)
    result = dict(lists)
    for size in sizes:
        for split in ("train", "test"):
            db = os.path.join(out_dir, f"{split}_lmdb_{size}")
            if os.path.exists(db) and not overwrite:
                _log(f"{db} exists, kept")
            elif layout == "rgb":
                _write_rgb_db(images_dir, lists[f"{split}_list"], db, size, overwrite)
            else:
                resize = (size, size) if size != 32 else (0, 0)
                convert_imageset(images_dir, lists[f"{split}_list"], db, *resize, overwrite=overwrite)
            result[f"{split}_lmdb_{size}"] = db
        mean = os.path.join(out_dir, f"mean_{size}.binaryproto")
        if overwrite or not os.path.exists(mean):
            write_image_mean(result[f"train_lmdb_{size}"], mean)
        result[f"mean_{size}"] = mean
    return result


def _write_rgb_db(root, list_file, db, size, overwrite):
    import cv2

    from ssdh_port.data.imageset import read_list

    entries = read_list(list_file)
    images = np.zeros((len(entries), 3, size, size), np.uint8)
    for i, (name, _) in enumerate(entries):
        bgr = cv2.imread(os.path.join(root, name), cv2.IMREAD_COLOR)
        if bgr is None:
            raise DatasetError(f"{os.path.join(root, name)}: cannot read the image")
        if bgr.shape[:2] != (size, size):
            bgr = cv2.resize(bgr, (size, size), interpolation=cv2.INTER_LINEAR)
        images[i] = bgr[:, :, ::-1].transpose(2, 0, 1)
    write_array_db(db, images, [label for _, label in entries], overwrite=overwrite)


def _cifar_lists(images_dir, out_dir):
    """train.txt as the authors listed it; the test set in canonical order."""
    train_src, val_src = os.path.join(images_dir, "train.txt"), os.path.join(images_dir, "val.txt")
    for path in (train_src, val_src):
        if not os.path.exists(path):
            raise DatasetError(f"{path} missing: not the authors' CIFAR-10 archive")
    test = []
    with open(val_src) as f:
        for line in f:
            name, label = line.split()
            test.append((int(os.path.splitext(os.path.basename(name))[0]), name, label))
    test.sort()
    os.makedirs(out_dir, exist_ok=True)
    lists = {"train_list": os.path.join(out_dir, "train.txt"),
             "test_list": os.path.join(out_dir, "test.txt")}
    with open(train_src) as src, open(lists["train_list"], "w") as dst:
        dst.write(src.read())
    with open(lists["test_list"], "w") as dst:
        dst.writelines(f"{name} {label}\n" for _, name, label in test)
    return lists


def read_cifar10_python(archive):
    """cifar-10-python.tar.gz -> {split: (N x 3 x 32 x 32 uint8 RGB, labels)}."""
    splits = {"train": ([], []), "test": ([], [])}
    try:
        with tarfile.open(archive) as tar:
            for member in tar.getmembers():
                base = os.path.basename(member.name)
                if not (base.startswith("data_batch_") or base == "test_batch"):
                    continue
                batch = pickle.load(tar.extractfile(member), encoding="bytes")
                split = "test" if base == "test_batch" else "train"
                splits[split][0].append(np.asarray(batch[b"data"], np.uint8).reshape(-1, 3, 32, 32))
                splits[split][1].append(np.asarray(batch[b"labels"], np.int64))
    except (tarfile.TarError, OSError, pickle.UnpicklingError, KeyError) as err:
        raise DatasetError(f"{archive}: not a CIFAR-10 python archive ({err})") from None
    return _joined(splits, archive)


def read_cifar10_binary(archive):
    """cifar-10-binary.tar.gz -> {split: (N x 3 x 32 x 32 uint8 RGB, labels)}."""
    splits = {"train": ([], []), "test": ([], [])}
    try:
        with tarfile.open(archive) as tar:
            for member in tar.getmembers():
                base = os.path.basename(member.name)
                if not (base.startswith("data_batch_") or base == "test_batch.bin"):
                    continue
                raw = np.frombuffer(tar.extractfile(member).read(), np.uint8)
                if raw.size % 3073:
                    raise DatasetError(f"{archive}: {member.name} is not a whole number of records")
                rows = raw.reshape(-1, 3073)
                split = "test" if base == "test_batch.bin" else "train"
                splits[split][0].append(rows[:, 1:].reshape(-1, 3, 32, 32))
                splits[split][1].append(rows[:, 0].astype(np.int64))
    except (tarfile.TarError, OSError) as err:
        raise DatasetError(f"{archive}: not a CIFAR-10 binary archive ({err})") from None
    return _joined(splits, archive)


def _joined(splits, archive):
    result = {}
    for split, (images, labels) in splits.items():
        if not images:
            raise DatasetError(f"{archive}: no {split} batches found")
        result[split] = (np.concatenate(images), np.concatenate(labels))
    return result


def prepare_cifar10_batches(archive, out_dir, overwrite=False):
    """Standard CIFAR-10 tarball (python or binary) -> train/test LMDBs and mean."""
    reader = read_cifar10_binary if "binary" in os.path.basename(archive) else read_cifar10_python
    splits = reader(archive)
    result = {}
    for split, (images, labels) in splits.items():
        path = os.path.join(out_dir, f"{split}_lmdb_32")
        write_array_db(path, images, labels, overwrite=overwrite)
        result[f"{split}_lmdb_32"] = path
    result["mean_32"] = os.path.join(out_dir, "mean_32.binaryproto")
    write_image_mean(result["train_lmdb_32"], result["mean_32"])
    return result


def folder_to_list(root, list_path):
    """root/<class>/<image> -> a Caffe list file; classes numbered in sorted order."""
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    if not classes:
        raise DatasetError(f"{root}: no class sub-folders")
    count = 0
    with open(list_path, "w") as f:
        for label, name in enumerate(classes):
            for file in sorted(os.listdir(os.path.join(root, name))):
                if file.lower().endswith(IMAGE_SUFFIXES):
                    f.write(f"{name}/{file} {label}\n")
                    count += 1
    return classes, count
