"""Caffe Datum records: raw CHW uint8 bytes (BGR for color images) or an
encoded image file (JPEG/PNG), a label, or float_data.

Decoding follows Caffe's DecodeDatumToCVMat: OpenCV, color unless the image is
gray (or force_gray), channels BGR, then HWC -> CHW.
"""
import cv2
import numpy as np

from ssdh_port.caffe.proto import caffe_pb2 as pb
from ssdh_port.errors import SSDHError


class DatumError(SSDHError):
    """A record that is not a valid Datum; the message names the record."""


def parse_datum(raw, where="record"):
    datum = pb.Datum()
    try:
        datum.ParseFromString(raw)
    except Exception as err:  # noqa: BLE001 - protobuf raises DecodeError and others
        raise DatumError(f"{where}: not a Caffe Datum ({err})") from None
    return datum


def decode_image(data, where="image", force_color=False, force_gray=False):
    """Encoded image bytes -> uint8 CHW array (BGR, or 1 channel for gray)."""
    if force_color and force_gray:
        raise DatumError(f"{where}: force_color and force_gray are exclusive")
    # Caffe: force_color -> color, force_gray -> gray, else the file's own
    # colour (DecodeDatumToCVMatNative, OpenCV's ANYCOLOR).
    flag = cv2.IMREAD_COLOR if force_color else (
        cv2.IMREAD_GRAYSCALE if force_gray else cv2.IMREAD_ANYCOLOR)
    image = cv2.imdecode(np.frombuffer(data, np.uint8), flag)
    if image is None:
        raise DatumError(f"{where}: cannot decode the encoded image ({len(data)} bytes)")
    if image.ndim == 2:
        return image[None]
    return np.ascontiguousarray(image.transpose(2, 0, 1))


def datum_to_array(datum, where="record", force_color=False, force_gray=False):
    """Datum -> (C x H x W array: uint8 for bytes and encoded images, float32
    for float_data, label). force_color / force_gray act on encoded datums."""
    if datum.encoded:
        return decode_image(datum.data, where, force_color, force_gray), datum.label
    shape = (datum.channels, datum.height, datum.width)
    count = int(np.prod(shape))
    if datum.data:
        if len(datum.data) != count:
            raise DatumError(
                f"{where}: {len(datum.data)} bytes of data for a {shape} datum ({count} expected)")
        array = np.frombuffer(datum.data, np.uint8).reshape(shape)
    elif datum.float_data:
        if len(datum.float_data) != count:
            raise DatumError(
                f"{where}: {len(datum.float_data)} float_data values for a {shape} datum")
        array = np.asarray(datum.float_data, np.float32).reshape(shape)
    else:
        raise DatumError(f"{where}: datum holds neither data nor float_data")
    # As in Caffe, force_color / force_gray apply to encoded datums only.
    return array, datum.label


def array_to_datum(array, label=0):
    """C x H x W uint8 (raw bytes) or float array (float_data) -> Datum."""
    a = np.asarray(array)
    if a.ndim != 3:
        raise DatumError(f"a datum holds a C x H x W array, got shape {a.shape}")
    datum = pb.Datum(channels=a.shape[0], height=a.shape[1], width=a.shape[2], label=int(label))
    if a.dtype == np.uint8:
        datum.data = a.tobytes()
    else:
        datum.float_data.extend(a.astype(np.float32).ravel().tolist())
    return datum


def encoded_datum(data, label=0):
    """Encoded image bytes -> Datum with encoded = true (dims left 0, as Caffe does)."""
    return pb.Datum(data=bytes(data), label=int(label), encoded=True)


def float_datum(values, label=0):
    """A label vector (multi-label) as float_data of a C x 1 x 1 datum."""
    v = np.asarray(values, np.float32).ravel()
    datum = pb.Datum(channels=len(v), height=1, width=1, label=int(label))
    datum.float_data.extend(v.tolist())
    return datum
