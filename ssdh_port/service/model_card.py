"""The model card: what turned images into the codes of a code file.

encode writes it beside the code file (<codes>.card.json); search and serve read
it, so the deploy net, the weights, the latent blob and the preprocessing (mean,
scale, crop, gray, the image size the transformer saw) travel with the codes and
are not repeated by hand. A flag given to search or serve overrides the card's
value; a flag that differs from the card is logged as a warning that names the
field, because codes computed one way and queries computed another do not match.

{
  "schema": "ssdh_port.model_card/1",
  "prototxt": "deploy.prototxt",      # relative to the card's folder when below it
  "prototxt_sha256": "...", "weights": "...", "weights_sha256": "...",
  "latent_blob": "latent_sigmoid", "bits": 48, "items": 10000,
  "transform": {"scale": 0.0039, "mean_file": null, "mean_value": [], "crop_size": 0, "gray": false},
  "image_size": [28, 28],             # H, W of the images before the crop
  "source": "mnist_test_lmdb", "created": "2026-12-06T06:00:00+00:00"
}
"""
import dataclasses
import datetime
import hashlib
import json
import os

from ssdh_port.fileio import write_json
from ssdh_port.errors import SSDHError
from ssdh_port.progress import logger

SCHEMA = "ssdh_port.model_card/1"
TRANSFORM_FIELDS = ("scale", "mean_file", "mean_value", "crop_size", "gray")


class ModelCardError(SSDHError):
    """A model card that cannot be read or used; the message names the file and field."""


@dataclasses.dataclass
class ModelCard:
    prototxt: str | None = None
    weights: str | None = None
    latent_blob: str | None = None
    bits: int | None = None
    items: int | None = None
    transform: dict = dataclasses.field(default_factory=lambda: {
        "scale": 1.0, "mean_file": None, "mean_value": [], "crop_size": 0, "gray": False})
    image_size: list | None = None
    source: str | None = None
    prototxt_sha256: str | None = None
    weights_sha256: str | None = None
    created: str | None = None
    path: str | None = None          # where it was read from (not written)

    def with_overrides(self, **flags):
        """A copy with the given flags (None = not given) in place of the card's values;
        each that differs from a value the card holds is logged as a warning."""
        card = dataclasses.replace(self, transform=dict(self.transform))
        where = self.path or "the model card"
        for name, value in flags.items():
            if value is None:
                continue
            if name in TRANSFORM_FIELDS:
                old, card.transform[name] = card.transform.get(name), value
            elif name in ("prototxt", "weights", "latent_blob"):
                old = getattr(card, name)
                setattr(card, name, os.fspath(value) if name != "latent_blob" else value)
            else:
                raise ModelCardError(f"no model card field {name!r}")
            if old not in (None, value) and not _same_path(name, old, value):
                logger.warning("%s: %s %r overridden by %r: queries are encoded differently from the "
                               "database codes unless both describe the same thing", where, name, old, value)
        return card

    def require(self, *fields):
        missing = [f for f in fields if not getattr(self, f)]
        if missing:
            raise ModelCardError(
                f"{self.path or 'no model card'}: no {', '.join(missing)} known; give --"
                + " and --".join(m.replace("_", "-") for m in missing)
                + " or encode the codes with tools/encode.py, which writes the card beside them")
        return self

    def check_files(self):
        """Warn when the weights or the prototxt changed since the codes were written."""
        for name in ("prototxt", "weights"):
            recorded = getattr(self, f"{name}_sha256")
            path = getattr(self, name)
            if recorded and path and os.path.isfile(path) and file_sha256(path) != recorded:
                logger.warning("%s: %s %s is not the file the codes were encoded with (its content changed)",
                               self.path or "model card", name, path)


def _same_path(name, old, new):
    return name in ("prototxt", "weights") and os.path.abspath(old) == os.path.abspath(os.fspath(new))


def file_sha256(path, chunk=1 << 20):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def card_path(codes_path):
    return os.fspath(codes_path) + ".card.json"


def make_card(prototxt, weights, latent_blob, bits, items, transform, image_size, source):
    """A card for codes just encoded (transform: a TransformationParameter)."""
    return ModelCard(
        prototxt=os.fspath(prototxt), weights=os.fspath(weights) if weights else None,
        latent_blob=latent_blob, bits=int(bits), items=int(items),
        transform={"scale": float(transform.scale), "mean_file": transform.mean_file or None,
                   "mean_value": [float(v) for v in transform.mean_value],
                   "crop_size": int(transform.crop_size), "gray": bool(transform.force_gray)},
        image_size=list(image_size) if image_size else None, source=os.fspath(source) if source else None,
        prototxt_sha256=file_sha256(prototxt), weights_sha256=file_sha256(weights) if weights else None,
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))


def _relative(path, folder):
    if not path:
        return path
    absolute = os.path.abspath(path)
    inside = os.path.commonpath([absolute, folder]) == folder
    return os.path.relpath(absolute, folder) if inside else absolute


def write_card(card, codes_path=None, path=None):
    """Write the card beside the code file (or at path), atomically; file paths below
    the card's folder are stored relative to it, so the folder can move."""
    path = path or card_path(codes_path)
    folder = os.path.dirname(os.path.abspath(path))
    record = {"schema": SCHEMA, **dataclasses.asdict(card)}
    record.pop("path")
    for name in ("prototxt", "weights", "source"):
        record[name] = _relative(record[name], folder)
    record["transform"] = dict(record["transform"], mean_file=_relative(record["transform"]["mean_file"], folder))
    write_json(path, record)
    return path


def milvus_card_path(uri, collection):
    """Where the card of a Milvus Lite collection lives (beside its database file);
    None for a Milvus server, whose card is named explicitly."""
    uri = os.fspath(uri)
    return None if "://" in uri else f"{uri}.{collection}.card.json"


def read_card(codes_path, required=False):
    """The card beside a code file (None when there is none and it is not required)."""
    return read_card_file(card_path(codes_path), required)


def read_card_file(path, required=False):
    """A model card (None when the file does not exist and it is not required)."""
    if not path or not os.path.exists(path):
        if required:
            raise ModelCardError(f"{path}: no model card there")
        return None
    try:
        with open(path) as f:
            record = json.load(f)
    except (OSError, ValueError) as err:
        raise ModelCardError(f"{path}: not a readable model card ({err})") from None
    if not isinstance(record, dict) or record.get("schema") != SCHEMA:
        raise ModelCardError(f"{path}: schema {record.get('schema') if isinstance(record, dict) else None!r}, "
                             f"expected {SCHEMA!r}")
    record.pop("schema")
    known = {f.name for f in dataclasses.fields(ModelCard)} - {"path"}
    unknown = sorted(set(record) - known)
    if unknown:
        raise ModelCardError(f"{path}: unknown fields {unknown}")
    transform = record.get("transform") or {}
    if not isinstance(transform, dict) or set(transform) - set(TRANSFORM_FIELDS):
        raise ModelCardError(f"{path}: transform must hold only {list(TRANSFORM_FIELDS)}")
    folder = os.path.dirname(os.path.abspath(path))
    for name in ("prototxt", "weights", "source"):
        if record.get(name):
            record[name] = os.path.join(folder, record[name])
    if transform.get("mean_file"):
        transform["mean_file"] = os.path.join(folder, transform["mean_file"])
    card = ModelCard(**record, path=path)
    card.transform = {**ModelCard().transform, **transform}
    return card
