"""HammingIndex: binary codes with ids (and optional labels), exact k-nearest and
radius search by Hamming distance, memory-mapped save/load, and export to faiss.

The code file (.ssdh) is little-endian:

    offset  0  magic b"SSDHIDX1"
            8  uint32 header size (64)
           12  uint32 bits K
           16  uint32 bytes per code B = ceil(K / 8)
           20  uint32 flags (1: labels present)
           24  uint64 count N
           32  uint32 label width M (1: class ids; M: multi-hot rows)
           36  uint64 generation (0 until a live index is first compacted; see live.py)
           44  reserved, zero up to 64
           64  codes: N x B uint8 (ssdh_port.ops.pack_bits layout: bit k of a code is
               bit k % 8 of byte k // 8, least significant first; padding bits 0),
               zero-padded to a multiple of 8 bytes
               ids: N int64
               labels: N x M int32 (when flag 1 is set)

Loading maps the file (numpy memmap, copy-on-write): nothing is read until used.
A writable index (ssdh_port.hashing.live.LiveIndex) keeps its changes since the last
compaction in a log beside the file (<file>.log); loading applies it, so every reader
sees the acknowledged state.
"""
import os
import struct

import numpy as np
import torch

from ssdh_port import ops
from ssdh_port.fileio import atomic_write
from ssdh_port.errors import SSDHError
from ssdh_port.hashing.codes import as_packed

MAGIC = b"SSDHIDX1"
HEADER = struct.Struct("<8sIIIIQIQ20x")


class IndexFileError(SSDHError):
    """A code file that cannot be read; the message names the file."""


class HammingIndex:
    def __init__(self, bits, device="cpu"):
        if not isinstance(bits, int) or not 1 <= bits <= 65528:
            raise SSDHError(f"HammingIndex: bits must be an int in 1..65528, got {bits!r}")
        self.bits = bits
        self.bytes = (bits + 7) // 8
        self.device = torch.device(device)
        self._codes = [torch.empty(0, self.bytes, dtype=torch.uint8)]
        self._ids = [torch.empty(0, dtype=torch.int64)]
        self._labels = []
        self._merged = None
        self._id_order = self._sorted_ids = None
        self.generation = 0  # of the code file it was loaded from (live indexes count compactions)

    # ------------------------------------------------------------ content

    def __len__(self):
        return sum(len(c) for c in self._codes)

    def add(self, codes, ids=None, labels=None):
        """Append codes (0/1 N x K, or packed N x bytes uint8), with int64 ids
        (default: positions continuing from the current size) and optional labels."""
        packed = self._packed(codes, "HammingIndex.add:").cpu()
        n = len(packed)
        start = len(self)
        ids = torch.arange(start, start + n) if ids is None else torch.as_tensor(np.asarray(ids)).long()
        if ids.shape != (n,):
            raise SSDHError(f"HammingIndex.add: {len(ids)} ids for {n} codes")
        if labels is not None:
            labels = torch.as_tensor(np.asarray(labels)).to(torch.int32)
            if len(labels) != n:
                raise SSDHError(f"HammingIndex.add: {len(labels)} labels for {n} codes")
            if self._labels and labels.shape[1:] != self._labels[0].shape[1:]:
                raise SSDHError("HammingIndex.add: labels must keep one shape per item")
        if (labels is None) != (not self._labels) and len(self):
            raise SSDHError("HammingIndex.add: give labels for every batch or for none")
        self._codes.append(packed)
        self._ids.append(ids)
        if labels is not None:
            self._labels.append(labels)
        self._merged = None
        self._id_order = None

    def _merge(self):
        if self._merged is None:
            codes = torch.cat(self._codes) if len(self._codes) > 1 else self._codes[0]
            ids = torch.cat(self._ids) if len(self._ids) > 1 else self._ids[0]
            self._codes, self._ids = [codes], [ids]
            if len(self._labels) > 1:
                self._labels = [torch.cat(self._labels)]
            self._merged = codes.to(self.device)
        return self._merged

    @property
    def codes(self):
        self._merge()
        return self._codes[0]

    @property
    def ids(self):
        self._merge()
        return self._ids[0]

    @property
    def labels(self):
        self._merge()
        return self._labels[0] if self._labels else None

    def to(self, device):
        self.device = torch.device(device)
        self._merged = None
        return self

    # ------------------------------------------------------------ search

    def _packed(self, codes, where):
        packed = as_packed(codes, "codes", self.bits)
        if packed.shape[1] != self.bytes:
            columns = np.shape(codes)[1]
            raise SSDHError(
                f"{where} codes have {columns} columns; a {self.bits}-bit index takes "
                f"{self.bits} 0/1 columns or {self.bytes} packed bytes")
        return packed

    def _queries(self, queries):
        return self._packed(queries, "query").to(self.device)

    def search(self, queries, k):
        """(distances Q x k int32, ids Q x k int64): exact, ties in insertion order."""
        distances, positions = self.search_positions(queries, k)
        return distances, self.ids[positions]

    def search_positions(self, queries, k):
        """(distances, positions Q x k int64): as search(), with each result's position in
        the index (its row of codes and labels) instead of its id."""
        if len(self) == 0:
            raise SSDHError("search: the index is empty")
        k = min(int(k), len(self))
        distances, positions = ops.hamming_topk(self._queries(queries), self._merge(), k)
        return distances.cpu(), positions.cpu()

    def ids_at(self, positions):
        return self.ids[torch.as_tensor(positions).long()]

    def labels_at(self, positions):
        labels = self.labels
        return None if labels is None else labels[torch.as_tensor(positions).long()]

    def codes_at(self, positions):
        return self.codes[torch.as_tensor(positions).long().reshape(-1)]

    def positions_of(self, ids):
        """Positions of the given ids (int64 tensor); an id not in the index is an error
        that names it. Ids are expected unique; the first position of a repeated id wins."""
        ids = torch.as_tensor(np.asarray(ids)).long().reshape(-1)
        if self._id_order is None or len(self._id_order) != len(self):
            order = torch.sort(self.ids, stable=True).indices
            self._id_order, self._sorted_ids = order, self.ids[order]
        slots = torch.searchsorted(self._sorted_ids, ids).clamp(max=max(len(self) - 1, 0))
        found = self._sorted_ids[slots] == ids if len(self) else torch.zeros_like(ids, dtype=torch.bool)
        if not bool(found.all()):
            missing = ids[~found][:5].tolist()
            raise SSDHError(f"ids {missing} are not in the index")
        return self._id_order[slots]

    def range_search(self, queries, radius):
        """(lims Q+1, distances, ids): query q's results are [lims[q], lims[q+1])."""
        if len(self) == 0:
            raise SSDHError("range_search: the index is empty")
        lims, distances, positions = ops.hamming_radius(self._queries(queries), self._merge(), int(radius))
        return lims.cpu(), distances.cpu(), self.ids[positions.cpu()]

    # ------------------------------------------------------------ files

    def save(self, path, generation=None, durable=False):
        """Write the code file (see the module doc) atomically (durable: fsync'd
        before the rename, as a live index's compaction needs)."""
        codes, ids, labels = self.codes.numpy(), self.ids.numpy(), self.labels
        flags = 1 if labels is not None else 0
        width = 1 if labels is None or labels.dim() == 1 else labels.shape[1]
        generation = self.generation if generation is None else generation
        with atomic_write(path) as f:
            f.write(HEADER.pack(MAGIC, HEADER.size, self.bits, self.bytes, flags, len(codes), width, generation))
            f.write(codes.tobytes())
            f.write(bytes(-codes.nbytes % 8))
            f.write(ids.astype("<i8").tobytes())
            if labels is not None:
                f.write(labels.numpy().astype("<i4").tobytes())
            if durable:
                f.flush()
                os.fsync(f.fileno())

    @classmethod
    def load(cls, path, device="cpu", apply_log=True):
        """Map a code file; the codes are not copied until a search needs them on a device.
        A live index's log beside it is applied (apply_log=False: the file alone)."""
        try:
            with open(path, "rb") as f:
                header = f.read(HEADER.size)
        except OSError as err:
            raise IndexFileError(f"{path}: cannot read ({err.strerror})") from None
        if header[:len(MAGIC)] != MAGIC[:len(header)] or not header:
            raise IndexFileError(f"{path}: not an ssdh code file (it does not start with {MAGIC!r})")
        if len(header) < HEADER.size:
            raise IndexFileError(f"{path}: truncated code file ({len(header)} bytes, the header alone "
                                 f"is {HEADER.size})")
        _, size, bits, nbytes, flags, count, width, generation = HEADER.unpack(header)
        if nbytes != (bits + 7) // 8:
            raise IndexFileError(f"{path}: header says {bits} bits but {nbytes} bytes per code")
        code_bytes = count * nbytes + (-(count * nbytes) % 8)
        expected = size + code_bytes + 8 * count + (4 * count * width if flags & 1 else 0)
        actual = os.path.getsize(path)
        if actual < expected:
            raise IndexFileError(f"{path}: truncated code file ({actual} bytes, the header's {count} "
                                 f"codes need {expected})")
        if actual > expected:
            raise IndexFileError(f"{path}: {actual - expected} bytes after the end of the header's {count} "
                                 f"codes ({expected} bytes): not one code file")
        index = cls(int(bits), device)
        if count:
            codes = np.memmap(path, np.uint8, "c", size, (count, nbytes))
            ids = np.memmap(path, "<i8", "c", size + code_bytes, (count,))
            index._codes, index._ids = [torch.from_numpy(codes)], [torch.from_numpy(ids)]
            if flags & 1:
                shape = (count,) if width == 1 else (count, width)
                labels = np.memmap(path, "<i4", "c", size + code_bytes + 8 * count, shape)
                index._labels = [torch.from_numpy(labels)]
        index.generation = int(generation)
        if apply_log:
            from ssdh_port.hashing import live

            index = live.with_log(index, path)
        return index

    def to_faiss(self):
        """A faiss.IndexBinaryIDMap over IndexBinaryFlat with the same codes and ids
        (faiss's binary layout is this one; its bit count must be a multiple of 8)."""
        import faiss

        flat = faiss.IndexBinaryFlat(8 * self.bytes)
        index = faiss.IndexBinaryIDMap(flat)
        index.add_with_ids(np.ascontiguousarray(self.codes.numpy()), self.ids.numpy())
        return index


def coarse_to_fine(index, query_codes, query_features, db_features, k, shortlist=None, radius=None):
    """The CVPRW 2015 search: a Hamming shortlist (the `shortlist` nearest codes, or
    all codes within `radius`), re-ranked by Euclidean distance on real-valued
    features (fc7). db_features are indexed by the index's ids. Returns, per
    query, (ids, euclidean distances) of up to k results."""
    if (shortlist is None) == (radius is None):
        raise SSDHError("coarse_to_fine: give shortlist or radius")
    queries = torch.as_tensor(np.asarray(query_features), dtype=torch.float32)
    features = torch.as_tensor(np.asarray(db_features), dtype=torch.float32)
    if shortlist is not None:
        _, candidates = index.search(query_codes, shortlist)
        groups = list(candidates)
    else:
        lims, _, ids = index.range_search(query_codes, radius)
        groups = [ids[lims[q]:lims[q + 1]] for q in range(len(lims) - 1)]
    results = []
    for q, ids in enumerate(groups):
        if len(ids) == 0:
            results.append((ids, torch.empty(0)))
            continue
        dist = torch.cdist(queries[q:q + 1], features[ids], compute_mode="donot_use_mm_for_euclid_dist")[0]
        order = torch.sort(dist, stable=True).indices[:k]
        results.append((ids[order], dist[order]))
    return results
