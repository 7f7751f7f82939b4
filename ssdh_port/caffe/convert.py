"""Weights between Caffe and PyTorch files (tools/convert_caffemodel.py).

convert_weights() reads any weights file ssdh_port.caffe.net.load_weights
knows (told by content), copies the blobs into the net by layer name with
Caffe's shape checks, and writes the format the output's name says: .caffemodel
(Caffe's protobuf, loadable by Caffe) or .pt ({"prototxt", "blobs"}). A net
whose data layers cannot be opened (a train_val whose databases are elsewhere:
weights need no data) is converted without the net: the layers with blobs are
taken from the prototxt by name and the shapes are not checked, which the
report says.
"""
import dataclasses
import os

import numpy as np
import torch
from google.protobuf import text_format

from ssdh_port.caffe import io as caffe_io
from ssdh_port.caffe import wire
from ssdh_port.caffe.net import CaffeNet, load_net_parameter, load_weights
from ssdh_port.caffe.proto import caffe_pb2 as pb
from ssdh_port.data.db import DatabaseError
from ssdh_port.errors import SSDHError

FORMATS = {".caffemodel": "caffemodel", ".pt": "pt"}


@dataclasses.dataclass
class Conversion:
    out: str
    format: str
    report: dict             # loaded, not_in_weights, unused, skipped (as CaffeNet.copy_from)
    net: object              # the CaffeNet, or None when it could not be built
    shapes_checked: bool


def output_format(out, to_caffemodel=False):
    """The format the name asks for; a contradicting flag is an error."""
    if out.endswith(".h5"):
        raise SSDHError(f"output {out}: HDF5 caffemodels are read, not written; name the output .caffemodel or .pt")
    fmt = next((f for suffix, f in FORMATS.items() if out.endswith(suffix)), None)
    if fmt is None:
        raise SSDHError(f"--out {out}: name the output .caffemodel (Caffe's format) or .pt (PyTorch)")
    if to_caffemodel and fmt != "caffemodel":
        raise SSDHError(f"--to-caffemodel contradicts the output {out}: name it .caffemodel")
    return fmt


def convert_weights(prototxt, weights, out, phase="TEST", allow_shape_mismatch=False, to_caffemodel=False):
    fmt = output_format(os.fspath(out), to_caffemodel)
    try:
        net = CaffeNet(prototxt, phase=phase)
    except DatabaseError:
        return _convert_without_net(prototxt, weights, out, phase, fmt)
    report = net.copy_from(weights, allow_shape_mismatch=allow_shape_mismatch)
    if fmt == "caffemodel":
        net.save_caffemodel(out)
    else:
        net.save_pt(out)
    return Conversion(os.fspath(out), fmt, report, net, True)


def _convert_without_net(prototxt, weights, out, phase, fmt):
    from ssdh_port.caffe.net import layer_included

    param = load_net_parameter(prototxt)
    source = load_weights(weights)
    layers = [layer for layer in param.layer if layer_included(layer, phase)]
    names = {layer.name for layer in layers}
    report = {"loaded": [n for n in source if n in names and len(source[n])],
              "not_in_weights": [], "unused": [n for n in source if n not in names and len(source[n])],
              "skipped": []}
    if fmt == "caffemodel":
        def stripped(layer):
            copy = pb.LayerParameter()
            copy.CopyFrom(layer)
            del copy.blobs[:]
            return copy
        entries = [(stripped(layer), source[layer.name]) for layer in layers if layer.name in report["loaded"]]
        with caffe_io.atomic_write(out) as f:
            wire.write_net(f, param.name, entries)
    else:
        payload = {"prototxt": text_format.MessageToString(param),
                   "blobs": {name: [torch.from_numpy(np.array(a, dtype=np.float32)) for a in source[name]]
                             for name in report["loaded"]}}
        with caffe_io.atomic_write(out) as f:
            torch.save(payload, f)
    return Conversion(os.fspath(out), fmt, report, None, False)
