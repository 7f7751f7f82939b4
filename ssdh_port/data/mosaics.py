"""Multi-label sets made from a single-label one: each image is put side by side
with another image of the set and labelled with both classes (one class when
both show the same one). Labels follow the authors' Caffe multi-label
convention, +1 present, -1 absent, 0 don't care, and the sets go to HDF5 files
with `data` and `label` datasets, as their multi-label data did."""
import os

import numpy as np

from ssdh_port.fileio import atomic_write
from ssdh_port.errors import SSDHError


def pair_mosaics(images, labels, num_classes, seed):
    """(N x H x W uint8, N class ids) -> (N x H x 2W mosaics, N x num_classes
    multi-hot uint8). Image i is the left half of mosaic i and the right half of
    exactly one other mosaic (a random derangement)."""
    images, labels = np.asarray(images), np.asarray(labels)
    if images.ndim != 3 or len(images) != len(labels) or len(images) < 2:
        raise SSDHError(f"need N >= 2 images N x H x W and N labels, got {images.shape} and {labels.shape}")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(images))
    partner = np.empty_like(order)
    partner[order] = np.roll(order, 1)  # a cycle: nobody is paired with itself
    mosaics = np.concatenate([images, images[partner]], axis=2)
    multi_hot = np.zeros((len(images), num_classes), dtype=np.uint8)
    rows = np.arange(len(images))
    multi_hot[rows, labels] = 1
    multi_hot[rows, labels[partner]] = 1
    return mosaics, multi_hot


def signed_labels(multi_hot, dont_care=0.0, seed=0):
    """Multi-hot rows -> +1 / -1 labels, with round(dont_care * M) entries of each
    row, picked at random, set to 0 (don't care: no loss, no gradient; paper
    section 4.11's incomplete labels)."""
    multi_hot = np.asarray(multi_hot)
    signed = np.where(multi_hot > 0, 1.0, -1.0).astype(np.float32)
    hidden = int(round(dont_care * multi_hot.shape[1]))
    if hidden:
        rng = np.random.default_rng(seed)
        picks = np.argsort(rng.random(multi_hot.shape), axis=1)[:, :hidden]
        np.put_along_axis(signed, picks, 0.0, axis=1)
    return signed


def write_hdf5_set(folder, name, images, labels, scale=1.0):
    """<folder>/<name>.h5 (data: N x 1 x H x W float32 = images * scale; label:
    N x M float32) and the HDF5Data list file <folder>/<name>_h5.txt naming it.
    Both are written to temporary files and renamed when complete."""
    import h5py

    os.makedirs(folder, exist_ok=True)
    path = os.path.abspath(os.path.join(folder, f"{name}.h5"))
    data = (np.asarray(images, dtype=np.float32) * np.float32(scale))[:, None]
    with atomic_write(path) as f:
        with h5py.File(f, "w") as h5:
            # Compressed: mosaics of digits are mostly zeros (Caffe reads gzip HDF5).
            h5.create_dataset("data", data=data, compression="gzip", compression_opts=1,
                              chunks=(min(len(data), 256),) + data.shape[1:])
            h5.create_dataset("label", data=np.asarray(labels, dtype=np.float32))
    listing = os.path.join(folder, f"{name}_h5.txt")
    with atomic_write(listing, "w") as f:
        f.write(path + "\n")
    return listing


def prepare_mnist_mosaics(folder, scale):
    """Two-digit MNIST mosaics of both splits (seeded) and their HDF5 sets in
    folder: train, train_half_labels (half of each row's labels don't care) and
    test. Returns ({split: (mosaics, multi_hot)}, {set name: list file path});
    sets already written are kept."""
    from ssdh_port.data import mnist
    from ssdh_port.progress import logger

    sets = {}
    for split, seed in (("train", 1), ("test", 2)):
        images, labels = mnist.load_split(split)
        sets[split] = pair_mosaics(images, labels, 10, seed=seed)
    lists = {}
    wanted = {"train": ("train", 0.0), "train_half_labels": ("train", 0.5), "test": ("test", 0.0)}
    for name, (split, dont_care) in wanted.items():
        listing = os.path.join(folder, f"{name}_h5.txt")
        if not os.path.isfile(listing):
            logger.info("writing %s (%d mosaics) to %s", name, len(sets[split][0]), folder)
            write_hdf5_set(folder, name, sets[split][0], signed_labels(sets[split][1], dont_care, seed=3),
                           scale=scale)
        lists[name] = os.path.abspath(listing)
    return sets, lists
