"""Caffe's databases of Datum records: LMDB (the default here) and LevelDB (the
default of Caffe's DataParameter, used by the authors' CIFAR-10 nets).

Reading is read-only, in key order, as Caffe's Data layer reads them; LMDB
reading is lock-free (one environment per process or DataLoader worker).
Writing goes to a temporary folder renamed into place on success, so a failed
conversion leaves no database that looks complete.
"""
import os
import shutil
import tempfile

import lmdb
import numpy as np

from ssdh_port.data.datum import DatumError, array_to_datum, datum_to_array, parse_datum
from ssdh_port.errors import SSDHError


class DatabaseError(SSDHError):
    """A database that cannot be opened or read; the message names it."""


BACKENDS = ("lmdb", "leveldb")


# LMDB allows one environment per database and process: readers share it.
_ENVIRONMENTS = {}
_LEVELDBS = {}


def _shared_environment(path):
    real = os.path.realpath(path)
    key = (real, os.getpid())
    env = _ENVIRONMENTS.get(key)
    if env is None:
        # After a fork (a DataLoader worker) the parent's handle is inherited and
        # LMDB refuses a second one for the same file: drop the inherited one.
        for old in [k for k in _ENVIRONMENTS if k[0] == real]:
            _ENVIRONMENTS.pop(old).close()
        try:
            env = lmdb.open(path, readonly=True, lock=False, readahead=False, meminit=False,
                            subdir=os.path.isdir(path), max_readers=512)
        except lmdb.Error as err:
            raise DatabaseError(f"{path}: cannot open LMDB ({err})") from None
        _ENVIRONMENTS[key] = env
    return env


def _data_file(path):
    return path if os.path.isfile(path) else os.path.join(path, "data.mdb")


class _DatumDB:
    """Records by index (keys in order) of a Datum database."""

    def __len__(self):
        return len(self.keys)

    def datum(self, index):
        return parse_datum(self.raw(index), f"{self.path} record {self.keys[index]!r}")

    def read(self, index, force_color=False, force_gray=False):
        """(C x H x W array, label) of record index."""
        where = f"{self.path} record {self.keys[index]!r}"
        try:
            return datum_to_array(self.datum(index), where, force_color, force_gray)
        except DatumError:
            raise
        except Exception as err:  # noqa: BLE001
            raise DatumError(f"{where}: {err}") from None


class DatumLMDB(_DatumDB):
    """Read-only view of a Caffe LMDB: len, keys in order, records by index."""

    def __init__(self, path):
        self.path = os.fspath(path)
        if not os.path.exists(_data_file(self.path)):
            raise DatabaseError(f"{self.path}: no LMDB database here (data.mdb not found)")
        with self._environment().begin() as txn:
            self.keys = [key for key, _ in txn.cursor()]
        if not self.keys:
            raise DatabaseError(f"{self.path}: the database is empty")

    def _environment(self):
        # Keyed by process: a DataLoader worker opens its own after the fork.
        return _shared_environment(self.path)

    def read_batch(self, indices, out):
        """Raw uint8 records indices -> out (N x C x H x W uint8, preallocated) in one
        read transaction, copying each record's bytes once from the mapped file;
        encoded or float records fall back to read(). Returns the labels."""
        from ssdh_port.caffe.wire import LENGTH, VARINT, WireError, fields

        labels = []
        with self._environment().begin(buffers=True) as txn:
            for slot, index in enumerate(indices):
                value = txn.get(self.keys[index])
                if value is None:
                    raise DatabaseError(f"{self.path}: record {self.keys[index]!r} vanished while reading")
                header, data = {}, None
                try:
                    for number, kind, item in fields(value, 0, len(value)):
                        if kind == VARINT:
                            header[number] = item
                        elif number == 4 and kind == LENGTH:
                            data = item
                except WireError as err:
                    raise DatumError(f"{self.path} record {self.keys[index]!r}: not a Caffe Datum ({err})") from None
                shape = (header.get(1, 0), header.get(2, 0), header.get(3, 0))
                if header.get(7) or data is None or shape != out.shape[1:] or data[1] != out[slot].size:
                    array, label = self.read(index)  # the general path names any problem
                    if array.shape != out.shape[1:]:
                        raise DatumError(f"{self.path} record {self.keys[index]!r}: shape {array.shape}, "
                                         f"the batch holds {out.shape[1:]} (one size per batch)")
                    out[slot] = array
                    labels.append(label)
                    continue
                out[slot] = np.frombuffer(value, np.uint8, data[1], data[0]).reshape(shape)
                label = header.get(5, 0)
                labels.append(label - (1 << 64) if label >= 1 << 63 else label)
        return labels

    def raw(self, index):
        key = self.keys[index]
        with self._environment().begin(buffers=False) as txn:
            value = txn.get(key)
        if value is None:
            raise DatabaseError(f"{self.path}: record {key!r} vanished while reading")
        return value


class DatumLevelDB(_DatumDB):
    """Read-only view of a Caffe LevelDB (one process at a time: LevelDB locks it)."""

    def __init__(self, path):
        import plyvel

        self.path = os.fspath(path)
        if not os.path.exists(os.path.join(self.path, "CURRENT")):
            raise DatabaseError(f"{self.path}: no LevelDB database here (CURRENT not found)")
        key = (os.path.realpath(self.path), os.getpid())
        if key not in _LEVELDBS:  # LevelDB locks the database: readers share one handle
            try:
                _LEVELDBS[key] = plyvel.DB(self.path, create_if_missing=False)
            except plyvel.Error as err:
                raise DatabaseError(f"{self.path}: cannot open LevelDB ({err})") from None
        self._db = _LEVELDBS[key]
        self.keys = list(self._db.iterator(include_value=False))
        if not self.keys:
            raise DatabaseError(f"{self.path}: the database is empty")

    def raw(self, index):
        value = self._db.get(self.keys[index])
        if value is None:
            raise DatabaseError(f"{self.path}: record {self.keys[index]!r} vanished while reading")
        return value


def open_db(path, backend="lmdb"):
    """A Datum database reader for backend 'lmdb' or 'leveldb'."""
    if backend not in BACKENDS:
        raise DatabaseError(f"{path}: backend must be one of {BACKENDS}, got {backend!r}")
    return DatumLMDB(path) if backend == "lmdb" else DatumLevelDB(path)


class DatumDBWriter:
    """Write Datum records to a new LMDB (or LevelDB with backend="leveldb");
    commit() renames it into place.

    Use as a context manager: leaving the block without an exception commits,
    an exception discards everything written."""

    def __init__(self, path, map_size=1 << 40, overwrite=False, backend="lmdb"):
        self.path = os.fspath(path)
        if backend not in BACKENDS:
            raise DatabaseError(f"{self.path}: backend must be one of {BACKENDS}, got {backend!r}")
        if os.path.exists(self.path) and not overwrite:
            raise DatabaseError(f"{self.path}: already exists (remove it or pass overwrite)")
        parent = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(parent, exist_ok=True)
        self._tmp = tempfile.mkdtemp(prefix="." + os.path.basename(self.path) + ".", dir=parent)
        self.backend = backend
        if backend == "lmdb":
            self._env = lmdb.open(self._tmp, map_size=map_size, subdir=True, meminit=False)
            self._txn = self._env.begin(write=True)
        else:
            import plyvel

            self._env = plyvel.DB(self._tmp, create_if_missing=True)
            self._txn = self._env.write_batch()
        self._pending = 0
        self.count = 0

    def put(self, key, datum):
        self.put_raw(key, datum.SerializeToString())

    def put_raw(self, key, value):
        key = key.encode() if isinstance(key, str) else key
        self._txn.put(key, value)
        self.count += 1
        self._pending += 1
        if self._pending >= 1000:  # Caffe's convert_imageset commits every 1000
            self._flush()

    def _flush(self):
        if self.backend == "lmdb":
            self._txn.commit()
            self._txn = self._env.begin(write=True)
        else:
            self._txn.write()
            self._txn = self._env.write_batch()
        self._pending = 0

    def put_array(self, key, array, label=0):
        self.put(key, array_to_datum(array, label))

    def commit(self):
        if self.backend == "lmdb":
            self._txn.commit()
        else:
            self._txn.write()
        self._env.close()
        if os.path.exists(self.path):
            shutil.rmtree(self.path)
        os.replace(self._tmp, self.path)

    def abort(self):
        if self.backend == "lmdb":
            self._txn.abort()
        self._env.close()
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, kind, value, traceback):
        if kind is None:
            self.commit()
        else:
            self.abort()
        return False
