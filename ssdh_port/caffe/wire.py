"""Streaming caffemodel blobs, straight from and to the protobuf wire format.

A trained VGG16 is 500+ MB of float data. Parsing it with protobuf holds the file
and the parsed message (and numpy copies) at once. Here the file is memory-mapped
and walked field by field: each blob's packed floats become a numpy view of the
mapped pages (no copy until a parameter takes the values). Writing emits each
layer's parameters with protobuf and its blobs as raw little-endian bytes, one
blob at a time. Only names and blobs are read; layer parameters come from the
prototxt, as in Caffe's CopyTrainedLayersFrom.
"""
import collections
import mmap

import numpy as np

from ssdh_port.errors import SSDHError

# Field numbers (caffe.proto).
NET_LAYER, NET_LAYERS = 100, 2
LAYER_NAME, LAYER_BLOBS = 1, 7            # LayerParameter
V1_NAME, V1_BLOBS, V1_LAYER = 4, 6, 1     # V1LayerParameter (V1_LAYER: nested V0)
V0_NAME, V0_BLOBS = 1, 50                 # V0LayerParameter
BLOB_SHAPE, BLOB_DATA, BLOB_DOUBLE = 7, 5, 8
BLOB_LEGACY = (1, 2, 3, 4)                # num, channels, height, width
SHAPE_DIM = 1

VARINT, FIXED64, LENGTH, FIXED32 = 0, 1, 2, 5


class WireError(SSDHError):
    """Bytes that are not a well-formed message; the message says where."""


def _varint(buf, pos, end):
    result = shift = 0
    while True:
        if pos >= end:
            raise WireError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise WireError("varint longer than 10 bytes")


def fields(buf, start, end):
    """(field number, wire type, value or (offset, length)) of a message's fields."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos, end)
        number, kind = key >> 3, key & 7
        if kind == VARINT:
            value, pos = _varint(buf, pos, end)
        elif kind == LENGTH:
            length, pos = _varint(buf, pos, end)
            if pos + length > end:
                raise WireError(f"field {number}: {length} bytes run past the end of the message")
            value = (pos, length)
            pos += length
        elif kind == FIXED32:
            value = (pos, 4)
            pos += 4
        elif kind == FIXED64:
            value = (pos, 8)
            pos += 8
        else:
            raise WireError(f"field {number}: unsupported wire type {kind}")
        if pos > end:
            raise WireError(f"field {number} runs past the end of the message")
        yield number, kind, value


def _blob(buf, start, end):
    shape, legacy, data = None, [0, 0, 0, 0], []
    dtype = None
    for number, kind, value in fields(buf, start, end):
        if number == BLOB_SHAPE and kind == LENGTH:
            shape = []
            for dim_number, dim_kind, dim in fields(buf, value[0], value[0] + value[1]):
                if dim_number != SHAPE_DIM:
                    continue
                if dim_kind == LENGTH:  # packed
                    pos, stop = dim[0], dim[0] + dim[1]
                    while pos < stop:
                        d, pos = _varint(buf, pos, stop)
                        shape.append(d)
                else:
                    shape.append(dim)
        elif number in BLOB_LEGACY and kind == VARINT:
            legacy[number - 1] = value
        elif number in (BLOB_DATA, BLOB_DOUBLE):
            kind_dtype = "<f4" if number == BLOB_DATA else "<f8"
            if dtype not in (None, kind_dtype):
                continue  # float data wins when both are present, as in Caffe
            dtype = kind_dtype
            data.append(value)  # (offset, length): packed run, or one unpacked value
    count = int(np.prod(shape if shape is not None else legacy))
    dims = tuple(shape) if shape is not None else tuple(legacy)
    if dtype is None:
        return np.zeros(dims, np.float32) if count == 0 else _missing(dims)
    arrays = [np.frombuffer(buf, dtype, length // np.dtype(dtype).itemsize, offset)
              for offset, length in data]
    values = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
    if values.size != count:
        raise WireError(f"blob of shape {dims} holds {values.size} values ({count} expected)")
    return values.reshape(dims)


def _missing(dims):
    raise WireError(f"blob of shape {dims} holds no data")


def _layer(buf, start, end, name_field, blob_field, nested_field=None):
    name, blobs = None, []
    for number, kind, value in fields(buf, start, end):
        if number == name_field and kind == LENGTH:
            name = bytes(buf[value[0]:value[0] + value[1]]).decode("utf-8")
        elif number == blob_field and kind == LENGTH:
            blobs.append(_blob(buf, value[0], value[0] + value[1]))
        elif nested_field is not None and number == nested_field and kind == LENGTH:
            nested_name, nested_blobs = _layer(buf, value[0], value[0] + value[1], V0_NAME, V0_BLOBS)
            name = name or nested_name
            blobs.extend(nested_blobs)
    return name, blobs


def read_blobs(path):
    """{layer name: [arrays in Caffe order]} of a binary caffemodel (current, V1
    or V0), the arrays being read-only views of the mapped file."""
    with open(path, "rb") as f:
        size = f.seek(0, 2)
        if size == 0:
            raise WireError(f"{path}: empty file")
        buf = memoryview(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ))
    result = collections.OrderedDict()
    try:
        for number, kind, value in fields(buf, 0, len(buf)):
            if kind != LENGTH or number not in (NET_LAYER, NET_LAYERS):
                continue
            start, stop = value[0], value[0] + value[1]
            if number == NET_LAYER:
                name, blobs = _layer(buf, start, stop, LAYER_NAME, LAYER_BLOBS)
            else:
                name, blobs = _layer(buf, start, stop, V1_NAME, V1_BLOBS, V1_LAYER)
            if name is None:
                raise WireError("a layer without a name")
            result[name] = blobs
    except WireError as err:
        raise WireError(f"{path}: not a valid caffemodel ({err})") from None
    if not result:
        raise WireError(f"{path}: not a valid caffemodel (no layers)")
    return result


# ---------------------------------------------------------------- writing


def _key(number, kind):
    return _encode_varint((number << 3) | kind)


def _encode_varint(value):
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _length_delimited(number, payload_length):
    return _key(number, LENGTH) + _encode_varint(payload_length)


def blob_chunks(array):
    """The wire bytes of a BlobProto (BlobShape + packed float data), as chunks."""
    a = np.ascontiguousarray(array)
    dims = b"".join(_encode_varint(int(d)) for d in a.shape)
    shape = _length_delimited(SHAPE_DIM, len(dims)) + dims
    if a.dtype == np.float64:
        number, raw = BLOB_DOUBLE, a.astype("<f8", copy=False)
    else:
        number, raw = BLOB_DATA, a.astype("<f4", copy=False)
    head = _length_delimited(BLOB_SHAPE, len(shape)) + shape + _length_delimited(number, raw.nbytes)
    return [head, memoryview(raw).cast("B")]


def write_net(f, name, layers):
    """Write a NetParameter: layers is a list of (LayerParameter without blobs,
    [arrays]). f is a binary file opened for writing."""
    if name:
        encoded = name.encode("utf-8")
        f.write(_length_delimited(1, len(encoded)) + encoded)
    for param, arrays in layers:
        head = param.SerializeToString()
        blobs = [blob_chunks(a) for a in arrays]
        blob_bytes = [sum(len(c) for c in chunks) for chunks in blobs]
        body = len(head) + sum(len(_length_delimited(LAYER_BLOBS, n)) + n for n in blob_bytes)
        f.write(_length_delimited(NET_LAYER, body))
        f.write(head)
        for chunks, n in zip(blobs, blob_bytes):
            f.write(_length_delimited(LAYER_BLOBS, n))
            for chunk in chunks:
                f.write(chunk)


__all__ = ["read_blobs", "write_net", "WireError"]
