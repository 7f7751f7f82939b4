"""DNNH's CIFAR-10 data, rebuilt from the authors' CIFAR-10 JPEG archive in the
layout caffe-dnnh's nets read (docs/SPEC.md section 1, DNNH).

The original triplet set (cifar_hash_dataset) is not available, so it is
sampled again, with a seed:

* all 60,000 images (the 50,000 training images in the authors' order, then the
  10,000 test images in canonical order) form one set;
* queries: for each class, 100 images drawn without replacement
  (numpy.random.default_rng(seed).choice), kept in set order: 1,000; the pool:
  the other 59,000, in set order;
* triplets: `count` draws from the same generator, after the queries: an
  anchor uniformly over the pool, a similar image uniformly over the pool images
  of the anchor's class other than the anchor, a dissimilar image uniformly over
  the pool images of the other classes (so each other class in proportion to
  its size);
* files: query.txt / pool.txt ('path label'), query_label.txt / pool_label.txt
  (labels 1..10, one a line, as caffe-dnnh's evaluate_map reads them),
  triplets.txt ('anchor similar dissimilar'); databases of 9-channel Datums:
  triplet_lmdb (anchor, similar, dissimilar) and query_lmdb / pool_lmdb (the
  image three times, so the author's test nets, which slice the 9 channels and
  run stream 1, read them unchanged); triplet_mean.binaryproto, the 9-channel
  mean of the triplet database, and image_mean.binaryproto, its first three
  channels, for the deploy nets that encode single images.
"""
import os

import numpy as np

from ssdh_port.caffe import io as caffe_io
from ssdh_port.data.datasets import DatasetError, _log, extract_cifar10_jpg
from ssdh_port.data.imageset import convert_triplet_imageset, read_list, write_image_mean


def split_queries(labels, per_class, rng):
    """(query positions, pool positions), both ascending: per_class of each class."""
    labels = np.asarray(labels)
    queries = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        if len(members) <= per_class:
            raise DatasetError(f"class {c} has {len(members)} images; {per_class} queries leave no pool")
        queries.append(rng.choice(members, per_class, replace=False))
    queries = np.sort(np.concatenate(queries))
    pool = np.setdiff1d(np.arange(len(labels)), queries)
    return queries, pool


def sample_triplets(pool_labels, count, rng):
    """count (anchor, similar, dissimilar) positions into the pool (see the module)."""
    pool_labels = np.asarray(pool_labels)
    anchors = rng.integers(0, len(pool_labels), count)
    similar = np.empty(count, np.int64)
    dissimilar = np.empty(count, np.int64)
    for c in np.unique(pool_labels[anchors]):
        rows = np.flatnonzero(pool_labels[anchors] == c)
        members = np.flatnonzero(pool_labels == c)
        others = np.flatnonzero(pool_labels != c)
        if len(members) < 2 or not len(others):
            raise DatasetError(f"class {c} needs two pool images and other classes for triplets")
        # A uniform pick among the members other than the anchor: draw among
        # len - 1 and step over the anchor's own place.
        anchor_rank = np.searchsorted(members, anchors[rows])
        pick = rng.integers(0, len(members) - 1, len(rows))
        similar[rows] = members[pick + (pick >= anchor_rank)]
        dissimilar[rows] = others[rng.integers(0, len(others), len(rows))]
    return anchors, similar, dissimilar


def prepare_cifar10_dnnh(archive, out_dir, triplets=50000, seed=0, per_class=100, overwrite=False):
    """Build DNNH's data in out_dir (see the module); returns the paths."""
    if triplets < 1:
        raise DatasetError(f"--triplets must be >= 1, got {triplets}")
    images_dir, lists = extract_cifar10_jpg(archive, out_dir)
    entries = read_list(lists["train_list"]) + read_list(lists["test_list"])
    names = np.array([name for name, _ in entries])
    labels = np.array([label for _, label in entries])
    rng = np.random.default_rng(seed)
    queries, pool = split_queries(labels, per_class, rng)
    anchor, similar, dissimilar = sample_triplets(labels[pool], triplets, rng)
    paths = {name: os.path.join(out_dir, name) for name in (
        "query.txt", "pool.txt", "query_label.txt", "pool_label.txt", "triplets.txt")}
    for split, positions in (("query", queries), ("pool", pool)):
        with open(paths[f"{split}.txt"], "w") as f:
            f.writelines(f"{names[i]} {labels[i]}\n" for i in positions)
        with open(paths[f"{split}_label.txt"], "w") as f:
            f.writelines(f"{labels[i] + 1}\n" for i in positions)
        with open(os.path.join(out_dir, f"{split}_triplets.txt"), "w") as f:
            f.writelines(f"{names[i]} {names[i]} {names[i]}\n" for i in positions)
    with open(paths["triplets.txt"], "w") as f:
        f.writelines(f"{names[pool[a]]} {names[pool[s]]} {names[pool[d]]}\n"
                     for a, s, d in zip(anchor, similar, dissimilar))
    for db, listing in (("triplet_lmdb", "triplets.txt"), ("query_lmdb", "query_triplets.txt"),
                        ("pool_lmdb", "pool_triplets.txt")):
        paths[db] = os.path.join(out_dir, db)
        if os.path.exists(paths[db]) and not overwrite:
            _log(f"{paths[db]} exists, kept")
            continue
        convert_triplet_imageset(images_dir, os.path.join(out_dir, listing), paths[db], overwrite=overwrite)
    paths["triplet_mean"] = os.path.join(out_dir, "triplet_mean.binaryproto")
    if overwrite or not os.path.exists(paths["triplet_mean"]):
        write_image_mean(paths["triplet_lmdb"], paths["triplet_mean"])
    # The deploy nets encode one 3-channel image: the anchor channels of the mean.
    paths["image_mean"] = os.path.join(out_dir, "image_mean.binaryproto")
    caffe_io.write_blobproto(caffe_io.read_blobproto(paths["triplet_mean"])[:, :3], paths["image_mean"])
    return paths


def split_image_dbs(data_dir, out_dir, overwrite=False):
    """The same split as 3-channel 32 x 32 image databases for the other methods
    (SSDH trained on the same images): out_dir/train_lmdb_32 holds the pool images
    (the anchor channels of pool_lmdb, BGR as stored) and out_dir/test_lmdb_32 the
    queries, labels 0..9 (the label files' 1..10 minus one)."""
    from ssdh_port.data.datasets import write_array_db
    from ssdh_port.data.db import DatumLMDB

    paths = {}
    for split, db in (("query", "test_lmdb_32"), ("pool", "train_lmdb_32")):
        paths[split] = os.path.join(out_dir, db)
        if os.path.isdir(paths[split]) and not overwrite:
            _log(f"{paths[split]} exists, kept")
            continue
        source = DatumLMDB(os.path.join(data_dir, f"{split}_lmdb"))
        labels = np.loadtxt(os.path.join(data_dir, f"{split}_label.txt"), dtype=np.int64) - 1
        if len(labels) != len(source):
            raise DatasetError(f"{data_dir}: {split}_label.txt has {len(labels)} labels for {len(source)} records")
        triplets = np.empty((len(source), 9, 32, 32), np.uint8)
        source.read_batch(range(len(source)), triplets)
        write_array_db(paths[split], triplets[:, :3], labels, overwrite=overwrite)
    return {"train": paths["pool"], "test": paths["query"]}
