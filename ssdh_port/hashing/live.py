"""LiveIndex: a code file that takes additions and removals while it is searched,
durable before a change is acknowledged, and crash-safe.

    codes.ssdh        the base code file (HammingIndex's format; its header holds a
                      generation, the number of compactions)
    codes.ssdh.log    the changes since: a header, then one record per add() or
                      remove() call, each appended, flushed and fsync'd before the
                      call returns
    codes.ssdh.lock   held (flock) by the one writer

The log is little-endian:

    offset 0  magic b"SSDHLOG1", 8  uint64 generation of the base it follows
    records   uint32 payload size, uint32 CRC-32 of the payload, payload:
              uint8 kind (1 add, 2 remove), uint32 count n, then
              add:    n x B code bytes, n int64 ids, n x M int32 labels (if the index has labels)
              remove: n int64 ids

A record is the unit of atomicity: after a kill at any point, reopening finds every
acknowledged change and drops a torn tail record (a short read or a CRC that does
not match), with a warning. compact() writes a new base of the surviving items in
insertion order with the next generation (fsync'd, renamed into place), then an
empty log of that generation; a log whose generation is older than the base's was
already folded in and is ignored (a kill between the two renames). The state is
always "the base, then the log's records in order".

Search results, ties included, are those of a fresh HammingIndex built from the
surviving items in insertion order (an item added again after its removal counts
from its new insertion): removed items stay in the searched arrays as tombstones
until the next compaction, and each search asks for k plus the number of
tombstones, then drops them, which keeps the order of the rest.
"""
import contextlib
import fcntl
import os
import struct
import threading
import zlib

import numpy as np
import torch

from ssdh_port.errors import SSDHError
from ssdh_port.hashing.index import HEADER, HammingIndex, IndexFileError
from ssdh_port.progress import logger

LOG_SUFFIX, LOCK_SUFFIX = ".log", ".lock"
LOG_MAGIC = b"SSDHLOG1"
LOG_HEADER = struct.Struct("<8sQ")
RECORD = struct.Struct("<II")
ADD, REMOVE = 1, 2


class LiveIndexError(SSDHError):
    """A live index that cannot be opened or changed as asked; the message names it."""


def _label_width(path):
    """(has labels, label width) from a code file's header."""
    with open(path, "rb") as f:
        header = f.read(HEADER.size)
    _, _, _, _, flags, _, width, _ = HEADER.unpack(header)
    return bool(flags & 1), int(width)


def _records(path, bytes_per_code, label_width):
    """(generation, [(kind, ids, codes, labels)], end of the last whole record,
    whether a torn tail followed) of a log file."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < LOG_HEADER.size or data[:len(LOG_MAGIC)] != LOG_MAGIC:
        raise LiveIndexError(f"{path}: not the log of a live index (it does not start with {LOG_MAGIC!r})")
    _, generation = LOG_HEADER.unpack_from(data)
    records, at = [], LOG_HEADER.size
    while at < len(data):
        if at + RECORD.size > len(data):
            break
        size, crc = RECORD.unpack_from(data, at)
        payload = data[at + RECORD.size:at + RECORD.size + size]
        if len(payload) != size or zlib.crc32(payload) != crc:
            break
        kind, count = payload[0], struct.unpack_from("<I", payload, 1)[0]
        body = memoryview(payload)[5:]
        if kind == ADD:
            codes_end = count * bytes_per_code
            codes = np.frombuffer(body[:codes_end], np.uint8).reshape(count, bytes_per_code)
            ids = np.frombuffer(body[codes_end:codes_end + 8 * count], "<i8")
            labels = None
            if label_width:
                labels = np.frombuffer(body[codes_end + 8 * count:], "<i4").reshape(
                    (count,) if label_width == 1 else (count, label_width))
            records.append((ADD, ids, codes, labels))
        elif kind == REMOVE:
            records.append((REMOVE, np.frombuffer(body[:8 * count], "<i8"), None, None))
        else:
            break
        at += RECORD.size + size
    return generation, records, at, at < len(data)


def with_log(index, path):
    """The HammingIndex of path with its live log applied (index: the base, as
    loaded); a reader's view: no lock, a torn tail ignored with a warning."""
    log = os.fspath(path) + LOG_SUFFIX
    if not os.path.exists(log):
        return index
    has_labels, width = _label_width(path)
    generation, records, _, torn = _records(log, index.bytes, width if has_labels else 0)
    if generation < index.generation or not records:
        return index
    if generation > index.generation:
        raise LiveIndexError(f"{log}: follows generation {generation} of the code file, which is at "
                             f"{index.generation}: the log belongs to another file")
    if torn:
        logger.warning("%s: a torn record at its end (a write that did not finish) is ignored", log)
    state = _State.from_index(index, width if has_labels else 0)
    for record in records:
        state = state.applied(*record)
    return state.fresh()


class _State:
    """One state of a live index, never changed once made (a change makes the next
    state: readers holding this one are not disturbed): the searched arrays in
    insertion order with tombstones, who is alive, and the read side of
    HammingIndex (search_positions, ids_at, labels_at, codes_at, positions_of), so
    that what searches a code file searches a live index's state as well."""

    def __init__(self, index, alive, where, label_width, count=None):
        # `where` (id -> position of its living item) is shared by the states of one
        # index and follows the newest; a state checks a position against its own
        # arrays and `alive` (copying the dict at every change would cost O(N)).
        self.index, self.alive, self.where, self.label_width = index, alive, where, label_width
        self.count = len(where) if count is None else count
        self.bits, self.bytes = index.bits, index.bytes

    @classmethod
    def from_index(cls, index, label_width):
        alive = torch.ones(len(index), dtype=torch.bool)
        return cls(index, alive, {int(i): p for p, i in enumerate(index.ids.tolist())}, label_width)

    def applied(self, kind, ids, codes, labels):
        """The state after one record."""
        if kind == ADD:
            index = HammingIndex(self.bits)
            if len(self.index):
                index.add(self.index.codes, self.index.ids, self.index.labels)
            index.add(torch.from_numpy(np.array(codes)), np.array(ids), None if labels is None else np.array(labels))
            start = len(self.index)
            self.where.update((int(item), start + offset) for offset, item in enumerate(ids.tolist()))
            alive = torch.cat([self.alive, torch.ones(len(ids), dtype=torch.bool)])
            return _State(index, alive, self.where, self.label_width, self.count + len(ids))
        alive = self.alive.clone()
        for item in ids.tolist():
            alive[self.where.pop(int(item))] = False
        return _State(self.index, alive, self.where, self.label_width, self.count - len(ids))

    def __len__(self):
        return self.count

    def position(self, item_id):
        """The position of a living item in this state's arrays, or None."""
        position = self.where.get(int(item_id))
        if position is None or position >= len(self.alive) or not bool(self.alive[position]):
            return None
        return position

    @property
    def dead(self):
        return len(self.index) - self.count

    def search_positions(self, queries, k):
        """(distances Q x k, positions Q x k) of the living items, as a fresh index of
        them in insertion order would rank them (k is cut to the number of items)."""
        if not self.count:
            raise LiveIndexError("search: the index is empty")
        k = min(int(k), self.count)
        distances, positions = self.index.search_positions(queries, min(k + self.dead, len(self.index)))
        if self.dead == 0:
            return distances[:, :k], positions[:, :k]
        keep = self.alive[positions]
        order = torch.sort((~keep).to(torch.int8), dim=1, stable=True).indices[:, :k]
        return torch.gather(distances, 1, order), torch.gather(positions, 1, order)

    def search(self, queries, k):
        distances, positions = self.search_positions(queries, k)
        return distances, self.index.ids[positions]

    def ids_at(self, positions):
        return self.index.ids_at(positions)

    def labels_at(self, positions):
        return self.index.labels_at(positions) if len(self.index) else None

    def codes_at(self, positions):
        return self.index.codes_at(positions)

    def positions_of(self, ids):
        positions = [self.position(i) for i in np.asarray(ids, dtype=np.int64).reshape(-1)]
        missing = [int(i) for i, p in zip(np.asarray(ids).reshape(-1), positions) if p is None]
        if missing:
            raise SSDHError(f"ids {missing[:5]} are not in the index")
        return torch.tensor(positions, dtype=torch.int64)

    def fresh(self):
        """A HammingIndex of the living items in insertion order."""
        keep = torch.nonzero(self.alive).reshape(-1)
        out = HammingIndex(self.index.bits)
        if len(keep):
            labels = self.index.labels
            out.add(self.index.codes[keep], self.index.ids[keep], None if labels is None else labels[keep])
        return out


class LiveIndex:
    """A writable code file (see the module doc). LiveIndex.create(path, bits) makes
    an empty one; LiveIndex(path) opens one (any code file becomes live when opened
    so) and holds its writer lock until close()."""

    def __init__(self, path):
        self.path = os.fspath(path)
        self.log_path = self.path + LOG_SUFFIX
        self._lock_file = open(self.path + LOCK_SUFFIX, "a+")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock_file.close()
            raise LiveIndexError(f"{self.path}: another process is writing this index (it holds "
                                 f"{self.path + LOCK_SUFFIX}); one writer at a time") from None
        try:
            self._open()
        except BaseException:
            self.close()
            raise
        self._mutex = threading.Lock()

    @classmethod
    def create(cls, path, bits, label_width=None):
        """An empty live index of `bits`-bit codes (label_width: None, no labels; 1,
        class ids; M, multi-hot rows); an existing file is an error."""
        path = os.fspath(path)
        if os.path.exists(path):
            raise LiveIndexError(f"{path} exists: open it with LiveIndex({path!r})")
        index = HammingIndex(bits)
        index.save(path, durable=True)
        if label_width:
            # The header says labels of this width from the start (an empty index has none to show it).
            with open(path, "r+b") as f:
                header = bytearray(f.read(HEADER.size))
                fields = list(HEADER.unpack(bytes(header)))
                fields[4], fields[6] = 1, int(label_width)
                f.seek(0)
                f.write(HEADER.pack(*fields))
                f.flush()
                os.fsync(f.fileno())
        return cls(path)

    def _open(self):
        if not os.path.exists(self.path):
            raise LiveIndexError(f"{self.path}: no such code file (LiveIndex.create makes one)")
        base = HammingIndex.load(self.path, apply_log=False)
        self.bits, self.generation = base.bits, base.generation
        self.base_ids = base.ids.tolist()  # the code file's items as opened, in file order
        has_labels, width = _label_width(self.path)
        self.label_width = width if has_labels else 0
        self.state = _State.from_index(base, self.label_width)
        if os.path.exists(self.log_path):
            generation, records, end, torn = _records(self.log_path, base.bytes, self.label_width)
            if generation > self.generation:
                raise LiveIndexError(f"{self.log_path}: follows generation {generation}, the code file is at "
                                     f"{self.generation}: the log belongs to another file")
            if generation < self.generation:
                self._new_log()  # folded in by a compaction that was killed before resetting the log
            else:
                for record in records:
                    self.state = self.state.applied(*record)
                if torn:
                    logger.warning("%s: a torn record at its end (a write that did not finish) is dropped",
                                   self.log_path)
                    with open(self.log_path, "r+b") as f:
                        f.truncate(end)
                        os.fsync(f.fileno())
        else:
            self._new_log()
        self._log = open(self.log_path, "ab")

    def _new_log(self):
        from ssdh_port.fileio import atomic_write

        with atomic_write(self.log_path) as f:
            f.write(LOG_HEADER.pack(LOG_MAGIC, self.generation))
            f.flush()
            os.fsync(f.fileno())
        _fsync_folder(self.path)

    def close(self):
        with contextlib.suppress(AttributeError):
            self._log.close()
        with contextlib.suppress(AttributeError, OSError):
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            self._lock_file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------ content

    def __len__(self):
        return len(self.state)

    @property
    def bytes(self):
        return (self.bits + 7) // 8

    def __contains__(self, item_id):
        return int(item_id) in self.state.where

    def add(self, codes, ids, labels=None, upsert=False):
        """Add items (0/1 N x K or packed codes, their int64 ids, labels when the
        index has them); returns when the change is on disk. An id already in the
        index is an error, unless upsert (then the old item goes first, in the same
        record's order: removed, then added)."""
        packed = self.state.index._packed(codes, "LiveIndex.add:").cpu().numpy()
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if len(ids) != len(packed):
            raise LiveIndexError(f"LiveIndex.add: {len(ids)} ids for {len(packed)} codes")
        if len(set(ids.tolist())) != len(ids):
            raise LiveIndexError("LiveIndex.add: an id appears twice in one call")
        if self.label_width and labels is None:
            raise LiveIndexError(f"{self.path} holds labels: give one per item")
        if labels is not None:
            if not self.label_width:
                raise LiveIndexError(f"{self.path} holds no labels: add codes and ids only")
            labels = np.asarray(labels, dtype=np.int32)
            shape = (len(ids),) if self.label_width == 1 else (len(ids), self.label_width)
            if labels.shape != shape:
                raise LiveIndexError(f"LiveIndex.add: labels of shape {labels.shape}, expected {shape}")
        with self._mutex:
            present = [int(i) for i in ids if int(i) in self.state.where]
            if present and not upsert:
                raise LiveIndexError(f"ids {present[:5]} are already in {self.path} (add with upsert=True "
                                     "to replace them)")
            payload = (struct.pack("<BI", ADD, len(ids)) + packed.tobytes() + ids.astype("<i8").tobytes()
                       + (labels.astype("<i4").tobytes() if labels is not None else b""))
            if present:
                self._append(struct.pack("<BI", REMOVE, len(present)) + np.asarray(present, "<i8").tobytes(),
                             payload)
                self.state = self.state.applied(REMOVE, np.asarray(present, np.int64), None, None)
            else:
                self._append(payload)
            self.state = self.state.applied(ADD, ids, packed, labels)
        return ids

    def remove(self, ids):
        """Remove items by id; returns when the change is on disk. An id not in the
        index is an error that names it (nothing is removed then)."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        with self._mutex:
            missing = [int(i) for i in ids if int(i) not in self.state.where]
            if missing:
                raise LiveIndexError(f"ids {missing[:5]} are not in {self.path}")
            if len(set(ids.tolist())) != len(ids):
                raise LiveIndexError("LiveIndex.remove: an id appears twice in one call")
            self._append(struct.pack("<BI", REMOVE, len(ids)) + ids.astype("<i8").tobytes())
            self.state = self.state.applied(REMOVE, ids, None, None)
        return len(ids)

    def _append(self, *payloads):
        """Records appended and fsync'd; on any failure (a full disk, a file size
        limit) the log is cut back to where it was and the error says so."""
        start = self._log.tell()
        try:
            for payload in payloads:
                self._log.write(RECORD.pack(len(payload), zlib.crc32(payload)) + payload)
            self._log.flush()
            os.fsync(self._log.fileno())
        except OSError as err:
            with contextlib.suppress(OSError):
                self._log.close()
                with open(self.log_path, "r+b") as f:
                    f.truncate(start)
                    os.fsync(f.fileno())
            self._log = open(self.log_path, "ab")
            raise LiveIndexError(f"{self.log_path}: the change was not written ({err.strerror or err}); "
                                 "the index is as it was") from None

    def compact(self):
        """Fold the log into a new code file of the living items in insertion order
        (the next generation), then start an empty log."""
        with self._mutex:
            fresh = self.state.fresh()
            if self.label_width and not len(fresh):
                fresh = None
            generation = self.generation + 1
            if fresh is None:  # no item left in an index with labels: keep the header's label width
                self._write_empty_with_labels(generation)
            else:
                fresh.save(self.path, generation=generation, durable=True)
            _fsync_folder(self.path)
            self.generation = generation
            self._log.close()
            self._new_log()
            self._log = open(self.log_path, "ab")
            self.state = _State.from_index(HammingIndex.load(self.path, apply_log=False), self.label_width)

    def _write_empty_with_labels(self, generation):
        from ssdh_port.fileio import atomic_write

        with atomic_write(self.path) as f:
            f.write(HEADER.pack(b"SSDHIDX1", HEADER.size, self.bits, self.bytes, 1, 0, self.label_width,
                                generation))
            f.flush()
            os.fsync(f.fileno())

    # ------------------------------------------------------------ search

    def search(self, queries, k):
        """(distances Q x k, ids Q x k): those of a fresh HammingIndex of the living
        items in insertion order (k is cut to the number of items)."""
        return self.view().search(queries, k)

    def view(self):
        """The current state, to read without a lock: it does not change when the
        index does (search_positions, ids_at, labels_at, codes_at, positions_of)."""
        return self.state

    def snapshot(self):
        """A HammingIndex of the living items in insertion order (a copy)."""
        with self._mutex:
            return self.state.fresh()

    def info(self):
        with self._mutex:
            return {"path": self.path, "bits": self.bits, "items": len(self.state),
                    "tombstones": self.state.dead, "generation": self.generation,
                    "labels": self.label_width or None,
                    "log_bytes": os.path.getsize(self.log_path) if os.path.exists(self.log_path) else 0}


def _fsync_folder(path):
    with contextlib.suppress(OSError):
        fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


__all__ = ["LiveIndex", "LiveIndexError", "IndexFileError"]
