"""Image search with a trained SSDH net: an image -> the net's latent layer -> its
code -> the nearest codes of a HammingIndex; the database images themselves come
from the Datum database the index was encoded from (ids = record positions).
Shared by tools/search.py and the web server (ssdh_port.server).
"""
import cv2
import numpy as np
import torch

from ssdh_port import ops
from ssdh_port.caffe.net import CaffeNet
from ssdh_port.caffe.proto import caffe_pb2 as pb
from ssdh_port.data.db import open_db
from ssdh_port.data.transformer import DataTransformer
from ssdh_port.errors import SSDHError
from ssdh_port.hashing.index import HammingIndex
from ssdh_port.pipeline.encode import find_latent_blob


class ImageSearch:
    def __init__(self, prototxt, weights, index_path, db_path=None, latent_blob=None,
                 mean_file=None, mean_value=None, scale=1.0, backend="lmdb"):
        self.net = CaffeNet(prototxt, weights=weights)
        if not self.net.input_names:
            raise SSDHError(f"{prototxt}: a deploy net with an Input layer is needed")
        self.input = self.net.input_names[0]
        self.shape = self.net.blob_shapes[self.input]  # N x C x H x W
        self.latent = latent_blob or find_latent_blob(self.net)
        param = pb.TransformationParameter(scale=scale)
        if mean_file:
            param.mean_file = mean_file
        param.mean_value.extend(mean_value or [])
        self.transformer = DataTransformer(param, "TEST")
        self.index = HammingIndex.load(index_path)
        self.db = open_db(db_path, backend) if db_path else None

    def encode_images(self, images):
        """BGR (or gray) H x W (x C) uint8 images -> packed codes, one row each."""
        _, channels, height, width = self.shape
        batch = []
        for image in images:
            if channels == 1 and image.ndim == 3:
                image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
            if channels == 3 and image.ndim == 2:
                image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
            image = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
            batch.append(image[None] if image.ndim == 2 else image.transpose(2, 0, 1))
        data = self.transformer(torch.from_numpy(np.stack(batch)))
        with torch.no_grad():
            latent = self.net(**{self.input: data})[self.latent]
        return ops.pack_bits(latent.reshape(len(batch), -1))

    def search(self, images, k=10):
        """[(ids, distances, labels or None)] of the k nearest codes per image."""
        distances, ids = self.index.search(self.encode_images(images), k)
        labels = self.index.labels
        return [(ids[i].tolist(), distances[i].tolist(),
                 labels[ids[i]].tolist() if labels is not None else None) for i in range(len(images))]

    def database_image(self, item):
        """The stored image of database item (BGR H x W x C or gray H x W uint8)."""
        if self.db is None:
            raise SSDHError("no image database given")
        array, _ = self.db.read(int(item))
        image = np.asarray(array)
        if image.dtype != np.uint8:
            image = np.clip(image, 0, 255).astype(np.uint8)
        return image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)



def read_images(paths):
    """Image files -> arrays as OpenCV reads them (unchanged depth and channels)."""
    images = []
    for path in paths:
        image = cv2.imread(path, cv2.IMREAD_UNCHANGED)
        if image is None:
            raise SSDHError(f"{path}: cannot read the image")
        images.append(image)
    return images
