"""Caffe files in and out: text prototxt (NetParameter, SolverParameter), binary
.caffemodel (current and V1; float or double blobs; also Caffe's HDF5
.caffemodel.h5 snapshots), .binaryproto blobs (mean files), and BlobProto <->
numpy arrays. Every writer goes through a temporary file and a rename, so a
failed write never leaves a file that looks complete.
"""

import re

import numpy as np
from google.protobuf import message as pb_message
from google.protobuf import text_format

from ssdh_port.caffe.proto import caffe_pb2 as pb
from ssdh_port.caffe.upgrade import UpgradeError, upgrade_net
from ssdh_port.errors import SSDHError
from ssdh_port.fileio import atomic_write


class CaffeFileError(SSDHError):
    """A Caffe file that cannot be read; the message names the file."""


# ---------------------------------------------------------------- writing


def write_text_proto(message, path):
    with atomic_write(path, "w") as f:
        f.write(text_format.MessageToString(message))


def write_binary_proto(message, path):
    with atomic_write(path) as f:
        f.write(message.SerializeToString())


# ---------------------------------------------------------------- reading


def parse_text_proto(text, message, source="<string>"):
    """Parse prototxt text into message; errors carry source:line:column where
    Caffe (protobuf's C++ parser) puts them."""
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as err:
        if not err.GetLine():
            raise CaffeFileError(f"{source}: malformed prototxt: {err}") from None
        line, column = _cpp_position(text, err)
        reason = re.sub(r"^\d+:\d+ : ", "", str(err))
        reason = re.sub(r"^'[^\n]*': ", "", reason)  # Python's echo of the whole line
        raise CaffeFileError(f"{source}:{line}:{column}: malformed prototxt: {reason}") from None
    return message


def _cpp_position(text, err):
    """(line, column) of a parse error as protobuf's C++ text parser reports it:
    for an unknown field or enum value, the token after the name (Python's parser
    points at the name itself); columns count a tab to the next multiple of 8."""
    lines = text.split("\n")
    row, index = err.GetLine() - 1, err.GetColumn() - 1
    if row >= len(lines):
        return err.GetLine(), err.GetColumn()
    if "has no field named" in str(err) or "has no value named" in str(err):
        identifier = re.match(r"[\w.\[\]/]*", lines[row][index:])
        index += identifier.end()
        # Skip blanks, line ends and # comments to the next token.
        while row < len(lines):
            rest = lines[row][index:]
            stripped = rest.lstrip(" \t\r\f\v")
            index += len(rest) - len(stripped)
            if stripped and not stripped.startswith("#"):
                break
            row, index = row + 1, 0
        if row >= len(lines):
            row, index = len(lines) - 1, len(lines[-1])
    column = 0
    for char in lines[row][:index]:
        column += 8 - column % 8 if char == "\t" else 1
    return row + 1, column + 1


def _read(path, mode="rb"):
    try:
        with open(path, mode) as f:
            return f.read()
    except OSError as err:
        raise CaffeFileError(f"{path}: cannot read ({err.strerror})") from None


def read_text_proto(path, message):
    return parse_text_proto(_read(path, "r"), message, source=path)


def read_binary_proto(path, message, what):
    data = _read(path)
    try:
        message.ParseFromString(data)
    except pb_message.DecodeError as err:
        raise CaffeFileError(
            f"{path}: not a valid {what} (truncated or not a Caffe protobuf file: {err})"
        ) from None
    return message


def _upgraded(net, path):
    try:
        return upgrade_net(net)
    except UpgradeError as err:
        raise CaffeFileError(f"{path}: {err}") from None


def read_net_prototxt(path):
    """Text NetParameter, upgraded to the current format."""
    return _upgraded(read_text_proto(path, pb.NetParameter()), path)


def parse_net_prototxt(text, source="<string>"):
    return _upgraded(parse_text_proto(text, pb.NetParameter(), source), source)


def read_caffemodel(path):
    """Trained weights: binary NetParameter (current or V1) or Caffe's HDF5 snapshot."""
    if path.endswith(".h5"):
        return _read_caffemodel_h5(path)
    net = read_binary_proto(path, pb.NetParameter(), "caffemodel (binary NetParameter)")
    if not net.layer and not net.layers:
        raise CaffeFileError(f"{path}: caffemodel holds no layers (empty or not a caffemodel)")
    return _upgraded(net, path)


def _read_caffemodel_h5(path):
    """Caffe's HDF5 snapshot: group data/<layer>/<i> per parameter blob."""
    import h5py

    net = pb.NetParameter()
    try:
        with h5py.File(path, "r") as f:
            if "data" not in f:
                raise CaffeFileError(f"{path}: HDF5 caffemodel without a 'data' group")
            for name, group in f["data"].items():
                layer = net.layer.add(name=name)
                for i in range(len(group)):
                    if str(i) not in group:
                        raise CaffeFileError(f"{path}: layer '{name}' lacks blob {i}")
                    layer.blobs.add().CopyFrom(array_to_blob(group[str(i)][()]))
    except OSError as err:
        raise CaffeFileError(f"{path}: not a readable HDF5 caffemodel ({err})") from None
    return net


def read_solver_prototxt(path):
    return read_text_proto(path, pb.SolverParameter())


# ---------------------------------------------------------------- blobs


def blob_shape(blob):
    """Shape of a BlobProto: its BlobShape, or the legacy 4-D num/channels/height/width."""
    if blob.HasField("shape"):
        return tuple(int(d) for d in blob.shape.dim)
    return (blob.num, blob.channels, blob.height, blob.width)


def blob_to_array(blob, name="blob"):
    """BlobProto -> numpy array (float32, or float64 for double_data)."""
    shape = blob_shape(blob)
    count = int(np.prod(shape))
    if blob.double_data:
        data = np.asarray(blob.double_data, dtype=np.float64)
    else:
        data = np.asarray(blob.data, dtype=np.float32)
    if data.size != count:
        raise CaffeFileError(
            f"{name}: shape {shape} needs {count} values, the blob holds {data.size}")
    return data.reshape(shape)


def array_to_blob(array):
    """numpy array -> BlobProto with a BlobShape (double_data for float64)."""
    a = np.asarray(array)
    blob = pb.BlobProto()
    blob.shape.dim.extend(a.shape)
    if a.dtype == np.float64:
        blob.double_data.extend(a.ravel().tolist())
    else:
        blob.data.extend(a.astype(np.float32).ravel().tolist())
    return blob


def read_blobproto(path):
    """.binaryproto (e.g. a mean file from compute_image_mean) -> numpy array."""
    blob = read_binary_proto(path, pb.BlobProto(), "binaryproto (BlobProto)")
    return blob_to_array(blob, name=path)


def write_blobproto(array, path, legacy_shape=True):
    """numpy array -> .binaryproto. legacy_shape writes 4-D arrays with
    num/channels/height/width as compute_image_mean does."""
    a = np.asarray(array)
    if legacy_shape and a.ndim == 4:
        blob = pb.BlobProto(num=a.shape[0], channels=a.shape[1], height=a.shape[2], width=a.shape[3])
        blob.data.extend(a.astype(np.float32).ravel().tolist())
    else:
        blob = array_to_blob(a)
    write_binary_proto(blob, path)
