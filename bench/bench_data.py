#!/usr/bin/env python
"""Images/s of the AlexNet input path: Datum LMDB of 256 x 256 images -> batch of
256 crops of 227 x 227, random mirror, mean file subtracted (TRAIN phase), for
raw and JPEG-encoded records; this library's Data path vs a plain PIL/NumPy
pipeline measured in the same run.

    python bench/bench_data.py [--images 1024] [--batch 256] [--json out.json]
"""
import argparse
import io
import os
import tempfile

import numpy as np
import torch
from PIL import Image

from ssdh_port.caffe import io as caffe_io
from ssdh_port.fileio import write_json
from ssdh_port.caffe.proto import caffe_pb2 as pb
from ssdh_port.caffe.solver import read_solver
from ssdh_port.data.datum import array_to_datum, encoded_datum, parse_datum
from ssdh_port.data.db import DatumDBWriter, DatumLMDB
from ssdh_port.data.transformer import DataTransformer
from ssdh_port.pipeline.recipe import point_data_layers
from timer import time_calls


def recipe_solver(recipe, db, batch, mean_file=None):
    """A recipe folder's solver with its train_val net inlined, every data layer
    reading db in batches of `batch` (mean_file replacing the mean), no tests,
    display or snapshots: the solver the training benchmarks time."""
    net = caffe_io.read_net_prototxt(os.path.join(recipe, "train_val.prototxt"))
    point_data_layers(net, {"TRAIN": db, "TEST": db}, mean_file, {"TRAIN": batch, "TEST": batch})
    param = read_solver(os.path.join(recipe, "solver.yaml"))
    param.ClearField("net")
    param.net_param.CopyFrom(net)
    del param.test_iter[:]
    param.test_interval = param.display = param.snapshot = 0
    return param


def make_db(path, count, encoded, rng):
    with DatumDBWriter(path) as writer:
        for i in range(count):
            # Smooth random images, so that JPEG sizes are realistic.
            small = rng.integers(0, 256, (3, 32, 32), dtype=np.uint8)
            image = np.kron(small, np.ones((1, 8, 8), np.uint8))
            if encoded:
                buffer = io.BytesIO()
                Image.fromarray(image.transpose(1, 2, 0)).save(buffer, format="JPEG", quality=90)
                writer.put(f"{i:08d}", encoded_datum(buffer.getvalue(), i % 10))
            else:
                writer.put(f"{i:08d}", array_to_datum(image, i % 10))


def ours(db, transformer, batch):
    """What the Data layer does: raw records copied once from the mapped database into
    a reused uint8 batch (encoded ones decoded), then crop/mirror/mean/scale per batch."""
    staging = np.empty((batch, 3, 256, 256), np.uint8)
    for start in range(0, len(db) - batch + 1, batch):
        db.read_batch(range(start, start + batch), staging)
        transformer(torch.from_numpy(staging))


def baseline(db, mean, batch, rng):
    """Per image: parse the Datum, decode with PIL if encoded, crop, flip and
    subtract the mean in NumPy float32, then stack."""
    for start in range(0, len(db) - batch + 1, batch):
        out = []
        for i in range(start, start + batch):
            datum = parse_datum(db.raw(i))
            if datum.encoded:
                image = np.asarray(Image.open(io.BytesIO(datum.data))).transpose(2, 0, 1)[::-1]
            else:
                image = np.frombuffer(datum.data, np.uint8).reshape(3, 256, 256)
            h, w = rng.integers(0, 30, 2)
            crop = image[:, h:h + 227, w:w + 227].astype(np.float32) - mean[:, h:h + 227, w:w + 227]
            out.append(crop[:, :, ::-1] if rng.integers(2) else crop)
        np.stack(out)


def timed(fn, images, repeats=3):
    """Images per second of fn(), from its best of `repeats` calls."""
    return images / time_calls(fn, rounds=repeats).best


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--json")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    mean = rng.normal(120, 10, (3, 256, 256)).astype(np.float32)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        mean_path = os.path.join(tmp, "mean.binaryproto")
        from ssdh_port.caffe.io import write_blobproto

        write_blobproto(mean[None], mean_path)
        param = pb.TransformationParameter(crop_size=227, mirror=True, mean_file=mean_path)
        transformer = DataTransformer(param, "TRAIN", seed=0)
        print(f"torch threads {torch.get_num_threads()}, {args.images} images, batch {args.batch}")
        for encoded in (False, True):
            path = os.path.join(tmp, f"db_{encoded}")
            make_db(path, args.images, encoded, rng)
            db = DatumLMDB(path)
            ours_rate = timed(lambda: ours(db, transformer, args.batch), args.images)
            base_rate = timed(lambda: baseline(db, mean, args.batch, rng), args.images)
            kind = "encoded JPEG" if encoded else "raw"
            print(f"{kind:13s} ours {ours_rate:8.0f} img/s   PIL/NumPy {base_rate:8.0f} img/s   "
                  f"ratio {ours_rate / base_rate:.2f}x")
            results.append({"records": kind, "ours_img_s": ours_rate, "baseline_img_s": base_rate,
                            "ratio": ours_rate / base_rate})
    if args.json:
        write_json(args.json, results)


if __name__ == "__main__":
    main()
