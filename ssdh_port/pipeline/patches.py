"""Patch codes: every image of a source coded as the square patches of
hashing.patches.patch_boxes at levels 1..L, each patch resized to the size the net's
input was made from (the model card's image size, else the net's input) and
transformed as whole images are (crop, mean, scale), the patches of many images
going through the net in shared batches. The result is a PatchIndex, saved as a
patch code file (with the model card beside it, so that `ssdh search --spatial` codes
a query image the same way).
"""
import os

import cv2
import numpy as np
import torch

from ssdh_port import ops
from ssdh_port.caffe.net import find_latent_blob
from ssdh_port.data.db import open_db
from ssdh_port.data.imageset import read_list
from ssdh_port.data.transformer import DataTransformer
from ssdh_port.errors import SSDHError
from ssdh_port.hashing.patches import PatchIndex, crop_patch, patch_boxes
from ssdh_port.pipeline.features import load_net
from ssdh_port.progress import bar


def read_source_images(source, backend="lmdb", root=""):
    """(id, label, BGR or gray H x W [x C] uint8 image) of each item of an image list
    file (ids: line numbers) or a Datum database (ids: record positions)."""
    source = os.fspath(source)
    if os.path.isdir(source):
        db = open_db(source, backend)
        for i in range(len(db)):
            array, label = db.read(i)
            image = np.asarray(array)
            yield i, label, (image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0))
        return
    for i, (name, label) in enumerate(read_list(source)):
        path = os.path.join(root or os.path.dirname(source), name)
        image = cv2.imread(path, cv2.IMREAD_UNCHANGED)
        if image is None:
            raise SSDHError(f"{path}: cannot read the image (line {i + 1} of {source})")
        yield i, label, image


class CaffeLatent:
    """Latent activations of a Caffe deploy net: uint8 C x H x W patches of the net's
    input size, transformed as its data layers transform images (crop, mean, scale)."""

    def __init__(self, prototxt, weights, transform, latent_blob=None, image_size=None, batch_size=64,
                 device="cpu"):
        self.net = load_net(prototxt, weights, batch_size).to(device)
        if not self.net.input_names:
            raise SSDHError(f"{prototxt}: a deploy net with an Input layer is needed for patch codes")
        self.input = self.net.input_names[0]
        _, self.channels, height, width = self.net.blob_shapes[self.input]
        self.size = tuple(image_size) if image_size else (height, width)
        self.latent = latent_blob or find_latent_blob(self.net)
        self.bits = int(np.prod(self.net.blob_shapes[self.latent][1:]))
        self.transformer = DataTransformer(transform, "TEST")
        self.batch_size, self.device = batch_size, torch.device(device)

    def __call__(self, batch):
        data = self.transformer(batch)
        with torch.inference_mode():
            latent = self.net(**{self.input: data.to(self.device)})[self.latent]
        return latent.reshape(len(data), -1).float().cpu()


class TorchLatent:
    """Latent activations of a model trained by pipeline.trainer (its model.pt):
    normalised as its training images were, averaged over its test-time views."""

    def __init__(self, weights, batch_size=500, device="cpu"):
        from ssdh_port.pipeline import trainer

        model, self.config = trainer.load_trained(weights)
        train_images, _ = trainer.load_images(self.config.train_db, self.config.limit)
        self.normalise = trainer.Normaliser(train_images, self.config.normalise)
        self.channels, self.size = train_images.shape[1], tuple(train_images.shape[2:])
        self.device = torch.device(device)
        self.memory_format = trainer._memory_format(self.config, self.device)
        self.model = model.to(self.device, memory_format=self.memory_format)
        self.bits, self.latent, self.batch_size = self.config.bits, "latent", batch_size
        self._evaluate = trainer.evaluate

    def __call__(self, batch):
        latent, _ = self._evaluate(self.model, batch.to(self.device), self.normalise, self.config,
                                   self.memory_format, batch=self.batch_size)
        return latent


def latent_source(weights, prototxt=None, transform=None, latent_blob=None, image_size=None, batch_size=64,
                  device="cpu"):
    """The latent activations of a trained net: a Caffe deploy net (prototxt and
    weights) or, without a prototxt, a model.pt of the torch trainer."""
    if prototxt:
        return CaffeLatent(prototxt, weights, transform, latent_blob, image_size, batch_size, device)
    if not weights or not str(weights).endswith(".pt"):
        raise SSDHError(f"{weights}: without --prototxt the weights must be a model.pt of `ssdh run` (torch "
                        "models); a .caffemodel needs its deploy prototxt")
    return TorchLatent(weights, max(batch_size, 1), device)


class PatchCoder:
    """Codes (latent activations > 0.5) and activations of image patches through a
    latent source (CaffeLatent, TorchLatent), patches resized to its input size."""

    def __init__(self, latent, batch_size=64):
        self.latent_fn, self.batch_size = latent, batch_size
        self.channels, self.size, self.bits = latent.channels, latent.size, latent.bits
        self.latent = latent.latent

    def prepared(self, patch):
        if self.channels == 1 and patch.ndim == 3:
            patch = cv2.cvtColor(patch, cv2.COLOR_BGR2GRAY)
        if self.channels == 3 and patch.ndim == 2:
            patch = cv2.cvtColor(patch, cv2.COLOR_GRAY2BGR)
        patch = cv2.resize(patch, (self.size[1], self.size[0]), interpolation=cv2.INTER_LINEAR)
        return patch[None] if patch.ndim == 2 else patch.transpose(2, 0, 1)

    def activations(self, patches):
        """Latent activations (N x bits float) of prepared patches (C x H x W uint8 each)."""
        out = [self.latent_fn(torch.from_numpy(np.stack(patches[s:s + self.batch_size])))
               for s in range(0, len(patches), self.batch_size)]
        return torch.cat(out)

    def codes(self, patches):
        """Packed codes of prepared patches."""
        return ops.pack_bits(self.activations(patches))

    def image_patches(self, image, levels):
        """(prepared patches, boxes) of one image."""
        boxes = patch_boxes(image.shape[1], image.shape[0], levels)
        return [self.prepared(crop_patch(image, box)) for box in boxes], boxes


def encode_patches(coder, items, levels=3, progress=True):
    """A PatchIndex of the items' (id, label, image) patches."""
    index = None
    pending, ids, boxes = [], [], []

    def flush():
        nonlocal index, pending, ids, boxes
        if not pending:
            return
        codes = coder.codes(pending)
        if index is None:
            index = PatchIndex(coder.bits)
        index.add(codes, ids, boxes)
        pending, ids, boxes = [], [], []

    ticker = bar(desc="patch codes", unit="image", disable_if=not progress)
    for item_id, _, image in items:
        patches, item_boxes = coder.image_patches(image, levels)
        pending += patches
        ids += [item_id] * len(patches)
        boxes += item_boxes
        if len(pending) >= 8 * coder.batch_size:
            flush()
        ticker.update(1)
    flush()
    ticker.close()
    if index is None:
        raise SSDHError("no image to code")
    return index
