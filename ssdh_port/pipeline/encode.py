"""Encoding: a trained net's latent activations over a split -> binary codes.

encode_split() runs the net over a batch source (ssdh_port.pipeline.features),
thresholds the latent activations at 0.5 (0.5 gives 0), packs them into a
HammingIndex with the source's labels, and keeps any other blobs asked for (class
scores for the accuracy, fc7 for re-ranking). code_report() says when the codes
are degenerate.
"""
import dataclasses
import os

import numpy as np
import torch

from ssdh_port import ops
from ssdh_port.fileio import atomic_write
from ssdh_port.errors import SSDHError
from ssdh_port.hashing.codes import code_report
from ssdh_port.hashing.index import HammingIndex
from ssdh_port.service.model_card import ModelCard, make_card, write_card
from ssdh_port import distributed
from ssdh_port.caffe import parallel
from ssdh_port.caffe.net import find_latent_blob
from ssdh_port.caffe.proto import caffe_pb2 as pb
from ssdh_port.data.db import open_db
from ssdh_port.device import resolve_device
from ssdh_port.pipeline.features import batch_source, extract, load_net


@dataclasses.dataclass
class EncodedSplit:
    """Codes of one split, with the blobs kept beside them."""
    index: HammingIndex
    latent_blob: str
    features: dict
    health: dict
    path: str | None = None
    card: ModelCard | None = None     # how the codes were made; saved beside them

    @property
    def labels(self):
        return None if self.index.labels is None else self.index.labels.numpy()

    def accuracy(self, scores_blob):
        """Classification accuracy of the arg-max of a score blob against the labels."""
        scores = self.features[scores_blob]
        return float((scores.reshape(len(scores), -1).argmax(axis=1) == self.labels).mean())

    def save(self, path, feature_paths=None):
        """The code file at path, its model card (<path>.card.json, when known) and each
        kept blob at feature_paths[name] (default <path>.<blob>.npy), each written whole
        or not at all."""
        self.index.save(path)
        self.path = os.fspath(path)
        if self.card is not None:
            write_card(self.card, path)
        for name, array in self.features.items():
            target = (feature_paths or {}).get(name) or f"{path}.{name}.npy"
            with atomic_write(target) as f:
                np.save(f, array)
        return self


    def to_milvus(self, uri, collection="ssdh_codes", card=None):
        """Append the codes (ids, labels) to a Milvus collection and write the model card
        (default: beside a Milvus Lite file); returns the MilvusIndex."""
        from ssdh_port.hashing.milvus import MilvusIndex
        from ssdh_port.service.model_card import milvus_card_path

        index = MilvusIndex(self.index.bits, uri, collection)
        labels = self.index.labels
        index.add(self.index.codes, self.index.ids.numpy(), None if labels is None else labels.numpy(),
                  progress=True)
        target = card or milvus_card_path(uri, collection)
        if self.card is not None and target:
            write_card(self.card, path=target)
        return index


def codes_from_activations(activations, labels=None, ids=None):
    """N x K activations -> a HammingIndex of their codes (a > 0.5)."""
    a = torch.as_tensor(np.asarray(activations)).reshape(len(activations), -1)
    index = HammingIndex(a.shape[1])
    index.add(ops.pack_bits(a, 0.5), ids=ids, labels=labels)
    return index


def encode_batches(net, batches, *, latent_blob=None, features=(), iterations=None, device="cpu",
                   labels=None, gather=None, precision="fp32"):
    """Encode what `batches` yields (None: the net's data layers for `iterations`);
    labels (class ids or multi-hot rows) replace those of the source. gather(arrays,
    labels) -> (arrays, labels) or None puts a sharded run's pieces together (None:
    this process keeps no result)."""
    blob = latent_blob or find_latent_blob(net)
    wanted = [blob] + [name for name in features if name != blob]
    arrays, source_labels = extract(net, wanted, batches, iterations, resolve_device(device), precision=precision)
    if gather is not None:
        gathered = gather(arrays, source_labels)
        if gathered is None:
            return None
        arrays, source_labels = gathered
    labels = source_labels if labels is None else labels
    activations = arrays.pop(blob)
    activations = activations.reshape(len(activations), -1)
    kept = {name: arrays[name].reshape(len(arrays[name]), -1) for name in features if name != blob}
    if blob in features:
        kept[blob] = activations
    return EncodedSplit(codes_from_activations(activations, labels), blob, kept, code_report(activations))


def encode_split(prototxt, weights, source, *, transform=None, batch_size=64, latent_blob=None,
                 features=(), iterations=None, backend="lmdb", resize=None, device="cpu", precision="fp32"):
    """Encode a split with a deploy (or test) net: source is a Datum database, an
    image list, an .npy / .npz array file, or None for the net's own data layers
    (then give iterations); precision "bf16": under bfloat16 autocast (features.extract). Under torchrun, the ranks encode interleaved batches
    (rank r: batches r, r + N, ...) and rank 0 returns the whole split, identical to
    one process's; the other ranks return None."""
    net = load_net(prototxt, weights, batch_size if source is not None else None)
    if source is None and not iterations:
        raise SSDHError("without a source, give the number of iterations of the net's data layers")
    device = distributed.rank_device(resolve_device(device))
    ranks = distributed.from_environment(device) if source is not None else distributed.Ranks()
    batches = batch_source(source, net, batch_size, transform, backend, resize, shard=(ranks.rank, ranks.world))
    gather = None
    if ranks.world > 1:
        def gather(arrays, labels):
            return parallel.gather_batches(arrays, labels, batch_size, ranks)
    encoded = encode_batches(net, batches, latent_blob=latent_blob, features=features,
                             iterations=iterations, device=device, gather=gather, precision=precision)
    if encoded is None:
        return None
    transform, image_size = _preprocessing(net, source, transform, backend, resize)
    encoded.card = make_card(prototxt, weights, encoded.latent_blob, encoded.index.bits, len(encoded.index),
                             transform, image_size, source)
    return encoded


def _preprocessing(net, source, transform, backend, resize):
    """(the TransformationParameter the codes went through, the H x W of the images
    before it) for the model card: the tool's options for a database or a list, the
    net's own data layer otherwise; arrays go in as they are."""
    if source is None:
        layer = next((m for m in net.layers if hasattr(m, "transformer")), None)
        param = layer.param.transform_param if layer is not None and hasattr(layer, "param") else None
        return param or pb.TransformationParameter(), None
    source = os.fspath(source)
    if source.endswith((".npy", ".npz")):
        return pb.TransformationParameter(), None
    transform = transform or pb.TransformationParameter()
    if os.path.isfile(source):
        return transform, list(resize) if resize and all(resize) else None
    array, _ = open_db(source, backend).read(0)
    return transform, list(np.shape(array)[-2:])
