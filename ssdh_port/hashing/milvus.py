"""MilvusIndex: the HammingIndex interface over a Milvus collection, for collections
that outgrow one process (Milvus standalone or cluster), with the same results.

uri: a local file path runs the embedded Milvus Lite (milvus-lite 2.5.x; its 3.x
line has no binary vectors); http://host:19530 talks to a Milvus server with the
same code. The collection holds one row per code:

    seq      INT64, primary key: the insertion order (0, 1, 2, ... for the codes encode
             wrote, the record of the database they were encoded from; an item added
             later takes the next number after the largest, removals leave gaps)
    item_id  INT64: the caller's id (default: seq)
    code     BINARY_VECTOR of 8 * ceil(K / 8) bits: K-bit codes are padded with zero
             bits (ssdh_port.ops.pack_bits layout), which leaves distances unchanged
    label    INT64 (class ids) or ARRAY<INT32> (multi-hot rows), when labels are given

with a BIN_FLAT index and the HAMMING metric: exact search. Milvus orders ties as it
pleases and cuts top-k among them arbitrarily; search() re-sorts by (distance,
insertion order) and completes the ties at the k-th distance with the earliest
inserted codes, so that its results equal HammingIndex's exactly. range_search(r)
includes distance r (Milvus' radius is exclusive: r + 1 is passed). The code width
is checked on the client: Milvus Lite stores rows of the wrong length silently.
"""
import itertools
import warnings

import numpy as np
import torch

from ssdh_port.errors import SSDHError
from ssdh_port.hashing.codes import as_packed
from ssdh_port.progress import bar, logger

SEQ, ITEM, CODE, LABEL = "seq", "item_id", "code", "label"
MAX_TOPK = 16384          # Milvus' largest limit per search
QUERY_BATCH = 1024        # query vectors per search call
INSERT_BATCH = 50_000     # rows per column-wise insert
_DESCRIPTION = "ssdh_port codes; bits={bits}; labels={labels}"
_aliases = itertools.count()


class MilvusError(SSDHError):
    """A Milvus collection that cannot be used as asked; the message names it."""


def _client(uri):
    try:
        from pymilvus import MilvusClient
    except ImportError:
        raise MilvusError("MilvusIndex needs pymilvus and milvus-lite (pip install -r requirements.txt)") from None
    try:
        with warnings.catch_warnings():
            # milvus-lite imports setuptools' deprecated pkg_resources when it starts a local server.
            warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
            return MilvusClient(str(uri))
    except Exception as err:  # pymilvus raises its own types (and OSError) for an unusable uri
        raise MilvusError(f"cannot open Milvus at {uri}: {err}") from None


class MilvusIndex:
    def __init__(self, bits, uri, collection="ssdh_codes", *, create=True):
        if not isinstance(bits, int) or not 1 <= bits <= 32768:
            raise MilvusError(f"MilvusIndex: bits must be an int in 1..32768, got {bits!r}")
        self.bits, self.bytes = bits, (bits + 7) // 8
        self.uri, self.collection = str(uri), collection
        self.client = _client(uri)
        self.label_kind = None          # None, "class" or "multi:<width>"
        if self.client.has_collection(collection):
            self._adopt()
        elif not create:
            raise MilvusError(f"{uri}: no collection {collection!r} (there are {self.client.list_collections()})")

    @classmethod
    def open(cls, uri, collection="ssdh_codes"):
        """An existing collection; its code length is read from it."""
        client = _client(uri)
        if not client.has_collection(collection):
            raise MilvusError(f"{uri}: no collection {collection!r} (there are {client.list_collections()})")
        bits = _parse_description(client.describe_collection(collection), uri, collection)[0]
        return cls(bits, uri, collection, create=False)

    def _adopt(self):
        bits, labels = _parse_description(self.client.describe_collection(self.collection), self.uri,
                                          self.collection)
        if bits != self.bits:
            raise MilvusError(f"{self.uri}: collection {self.collection!r} holds {bits}-bit codes, not {self.bits}")
        self.label_kind = None if labels == "none" else labels
        self.client.load_collection(self.collection)

    def _create(self, label_kind):
        from pymilvus import DataType, MilvusClient

        schema = MilvusClient.create_schema(auto_id=False, description=_DESCRIPTION.format(
            bits=self.bits, labels=label_kind or "none"))
        schema.add_field(SEQ, DataType.INT64, is_primary=True)
        schema.add_field(ITEM, DataType.INT64)
        schema.add_field(CODE, DataType.BINARY_VECTOR, dim=8 * self.bytes)
        if label_kind == "class":
            schema.add_field(LABEL, DataType.INT64)
        elif label_kind:
            schema.add_field(LABEL, DataType.ARRAY, element_type=DataType.INT32,
                             max_capacity=int(label_kind.split(":")[1]))
        index = self.client.prepare_index_params()
        index.add_index(CODE, index_type="BIN_FLAT", metric_type="HAMMING")
        self.client.create_collection(self.collection, schema=schema, index_params=index)
        self.client.load_collection(self.collection)
        self.label_kind = label_kind

    # ------------------------------------------------------------ content

    def __len__(self):
        if not self.client.has_collection(self.collection):
            return 0
        rows = self.client.query(self.collection, filter="", output_fields=["count(*)"])
        return int(rows[0]["count(*)"])

    def _first_free(self, field):
        """1 + the largest value of an INT64 field (0 when empty), by count queries
        (Milvus has no max()): a doubling, then a bisection."""
        def any_at_least(value):
            rows = self.client.query(self.collection, filter=f"{field} >= {value}", output_fields=["count(*)"])
            return int(rows[0]["count(*)"]) > 0
        if not self.client.has_collection(self.collection) or not len(self):
            return 0
        if any_at_least(0) is False:
            return 0
        high = 1
        while any_at_least(high):
            high *= 2
        low = high // 2  # some value >= low exists (or low is 0), none >= high
        while high - low > 1:
            middle = (low + high) // 2
            if any_at_least(middle):
                low = middle
            else:
                high = middle
        return high

    def next_ids(self, count):
        """Ids after the largest id in the collection."""
        start = self._first_free(ITEM)
        return list(range(start, start + count))

    def add(self, codes, ids=None, labels=None, progress=False, upsert=False):
        """Append codes (0/1 N x K, or packed N x bytes uint8) with int64 ids (default:
        after the largest id) and optional labels (class ids, or multi-hot rows). An
        id already in the collection is an error, unless upsert (the old item goes)."""
        packed = self._packed(codes, "MilvusIndex.add: codes")
        n, start = len(packed), self._first_free(SEQ)
        if ids is None:
            ids = self.next_ids(n)
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if len(ids) != n:
            raise MilvusError(f"MilvusIndex.add: {len(ids)} ids for {n} codes")
        if len(set(ids.tolist())) != n:
            raise MilvusError("MilvusIndex.add: an id appears twice in one call")
        if start:
            present = self._present(ids)
            if present and not upsert:
                raise MilvusError(f"ids {present[:5]} are already in collection {self.collection!r} (add with "
                                  "upsert=True to replace them)")
            if present:
                self._delete(present)
        kind = None
        if labels is not None:
            labels = np.asarray(labels)
            if len(labels) != n:
                raise MilvusError(f"MilvusIndex.add: {len(labels)} labels for {n} codes")
            kind = "class" if labels.ndim == 1 else f"multi:{labels.shape[1]}"
        if not self.client.has_collection(self.collection):
            self._create(kind)
        elif kind != self.label_kind and (start or kind):
            raise MilvusError(f"MilvusIndex.add: collection {self.collection!r} holds labels "
                              f"{self.label_kind or 'none'}, this batch {kind or 'none'}")
        collection = self._orm()
        ticker = bar(total=n, desc="milvus insert", unit="code", disable_if=not progress)
        for s in range(0, n, INSERT_BATCH):
            e = min(n, s + INSERT_BATCH)
            columns = [list(range(start + s, start + e)), ids[s:e].tolist(),
                       [bytes(row) for row in packed[s:e]]]
            if labels is not None:
                columns.append(labels[s:e].tolist())
            collection.insert(columns)   # column-wise: one list per field
            ticker.update(e - s)
        ticker.close()
        collection.flush()

    def _present(self, ids):
        found = set()
        ids = [int(i) for i in ids]
        for s in range(0, len(ids), 10_000):
            rows = self.client.query(self.collection, filter=f"{ITEM} in {ids[s:s + 10_000]}",
                                     output_fields=[ITEM])
            found.update(int(row[ITEM]) for row in rows)
        return [i for i in ids if i in found]

    def _delete(self, ids):
        for s in range(0, len(ids), 10_000):
            self.client.delete(self.collection, filter=f"{ITEM} in {[int(i) for i in ids[s:s + 10_000]]}")
        self._orm().flush()

    def remove(self, ids):
        """Remove items by id; an id not in the collection is an error that names it
        (nothing is removed then). Returns the number removed."""
        ids = [int(i) for i in np.asarray(ids, dtype=np.int64).reshape(-1)]
        if len(set(ids)) != len(ids):
            raise MilvusError("MilvusIndex.remove: an id appears twice in one call")
        present = set(self._present(ids)) if self.client.has_collection(self.collection) else set()
        missing = [i for i in ids if i not in present]
        if missing:
            raise MilvusError(f"ids {missing[:5]} are not in collection {self.collection!r}")
        self._delete(ids)
        return len(ids)

    def _orm(self):
        """The collection through pymilvus' ORM API, the one with column-wise inserts
        (pinned pymilvus 3.0 marks it deprecated; MilvusClient inserts rows only)."""
        from pymilvus import Collection, connections

        alias = f"ssdh-{next(_aliases)}"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            connections.connect(alias=alias, uri=self.uri)
            return _Quiet(Collection(self.collection, using=alias))

    @classmethod
    def from_hamming(cls, index, uri, collection="ssdh_codes", progress=False):
        """A new collection holding a HammingIndex's (or a code file's) codes, ids and labels."""
        from ssdh_port.hashing.index import HammingIndex

        if not isinstance(index, HammingIndex):
            index = HammingIndex.load(index)
        milvus = cls(index.bits, uri, collection)
        if len(milvus):
            raise MilvusError(f"{uri}: collection {collection!r} already holds {len(milvus)} codes")
        milvus.add(index.codes, index.ids.numpy(), None if index.labels is None else index.labels.numpy(),
                   progress=progress)
        return milvus

    def drop(self):
        if self.client.has_collection(self.collection):
            self.client.drop_collection(self.collection)
        self.label_kind = None

    # ------------------------------------------------------------ lookups by position

    def _rows(self, positions, fields):
        positions = [int(p) for p in np.asarray(positions).reshape(-1)]
        rows = {}
        for s in range(0, len(positions), 10_000):
            chunk = positions[s:s + 10_000]
            for row in self.client.query(self.collection, filter=f"{SEQ} in {chunk}", output_fields=[SEQ, *fields]):
                rows[row[SEQ]] = row
        missing = [p for p in positions if p not in rows]
        if missing:
            raise MilvusError(f"positions {missing[:5]} are not in collection {self.collection!r}")
        return [rows[p] for p in positions]

    def ids_at(self, positions):
        return torch.tensor([row[ITEM] for row in self._rows(positions, [ITEM])], dtype=torch.int64)

    def labels_at(self, positions):
        if self.label_kind is None:
            return None
        return torch.tensor([row[LABEL] for row in self._rows(positions, [LABEL])])

    def codes_at(self, positions):
        rows = self._rows(positions, [CODE])
        return torch.from_numpy(np.frombuffer(b"".join(_code_bytes(r[CODE]) for r in rows),
                                              np.uint8).reshape(len(rows), self.bytes).copy())

    def positions_of(self, ids):
        ids = [int(i) for i in np.asarray(ids).reshape(-1)]
        found = {}
        for row in self.client.query(self.collection, filter=f"{ITEM} in {ids}", output_fields=[SEQ, ITEM]):
            found[row[ITEM]] = min(found.get(row[ITEM], row[SEQ]), row[SEQ])  # the first wins
        missing = [i for i in ids if i not in found]
        if missing:
            raise MilvusError(f"ids {missing[:5]} are not in collection {self.collection!r}")
        return torch.tensor([found[i] for i in ids], dtype=torch.int64)

    # ------------------------------------------------------------ search

    def _packed(self, codes, what):
        """Packed uint8 rows of this collection's width (checked here: Milvus Lite would
        store rows of another length silently)."""
        packed = as_packed(codes, what, self.bits).cpu().numpy()
        if packed.shape[1] != self.bytes:
            raise MilvusError(f"{what} have {np.shape(codes)[1]} columns; a {self.bits}-bit collection "
                              f"takes {self.bits} 0/1 columns or {self.bytes} packed bytes")
        return packed

    def _queries(self, queries):
        return [bytes(row) for row in self._packed(queries, "query codes")]

    def _search(self, vectors, limit, where=None, low=None, high=None):
        params = {"metric_type": "HAMMING"}
        if high is not None:
            params["params"] = {"radius": high, "range_filter": low}
        out = []
        for s in range(0, len(vectors), QUERY_BATCH):
            answer = self.client.search(self.collection, data=vectors[s:s + QUERY_BATCH], limit=limit,
                                        anns_field=CODE, search_params=params, filter=where or "")
            out += [[(int(round(h["distance"])), int(h["id"])) for h in hits] for hits in answer]
        return out

    def search_positions(self, queries, k, where=None):
        """(distances Q x k int32, positions Q x k int64): exact, ties in insertion order.
        where: an optional Milvus filter on item_id and label (e.g. "label == 3"); then
        fewer than k results are padded with distance -1 and position -1."""
        if len(self) == 0:
            raise MilvusError(f"search: collection {self.collection!r} is empty")
        k = min(int(k), len(self))
        if not 1 <= k <= MAX_TOPK:
            raise MilvusError(f"search: k must be between 1 and {MAX_TOPK} (Milvus' limit), got {k}")
        vectors = self._queries(queries)
        rows = []
        for vector, hits in zip(vectors, self._search(vectors, k, where)):
            rows.append(self._complete_ties(vector, sorted(hits), k, where))
        distances = torch.full((len(rows), k), -1, dtype=torch.int32)
        positions = torch.full((len(rows), k), -1, dtype=torch.int64)
        for q, hits in enumerate(rows):
            if hits:
                distances[q, :len(hits)] = torch.tensor([d for d, _ in hits], dtype=torch.int32)
                positions[q, :len(hits)] = torch.tensor([p for _, p in hits])
        return distances, positions

    def _complete_ties(self, vector, hits, k, where):
        """hits sorted by (distance, seq): replace those at the last distance by the
        earliest inserted codes at that distance (Milvus cuts ties arbitrarily)."""
        if len(hits) < k:
            return hits           # everything (that passes the filter) was returned
        last = hits[-1][0]
        kept = [h for h in hits if h[0] < last]
        tied = sorted(p for d, p in hits if d == last)
        need = len(tied)
        while True:
            bound = tied[-1]
            clause = f"{SEQ} < {bound}" + (f" and ({where})" if where else "")
            found = self._search([vector], need, clause, low=last, high=last + 1)[0]
            fresh = {p for _, p in found} - set(tied)
            if not fresh:
                return kept + [(last, p) for p in tied]
            tied = sorted(set(tied) | fresh)[:need]

    def search(self, queries, k, where=None):
        """(distances Q x k int32, ids Q x k int64), as HammingIndex.search."""
        distances, positions = self.search_positions(queries, k, where)
        ids = torch.full_like(positions, -1)
        valid = positions >= 0
        if bool(valid.any()):
            ids[valid] = self.ids_at(positions[valid])
        return distances, ids

    def range_search(self, queries, radius):
        """(lims Q+1, distances, ids): every code within distance radius (inclusive),
        by (distance, insertion order), as HammingIndex.range_search."""
        if len(self) == 0:
            raise MilvusError(f"range_search: collection {self.collection!r} is empty")
        radius = int(radius)
        vectors = self._queries(queries)
        first = self._search(vectors, MAX_TOPK, low=0, high=radius + 1)
        results = []
        for vector, hits in zip(vectors, first):
            if len(hits) == MAX_TOPK:   # truncated: gather distance by distance, seq range by range
                hits = [h for d in range(radius + 1) for h in self._all_at(vector, d, 0, len(self))]
            results.append(sorted(hits))
        lims = torch.tensor([0] + list(itertools.accumulate(len(r) for r in results)), dtype=torch.int64)
        distances = torch.tensor([d for r in results for d, _ in r], dtype=torch.int32)
        positions = torch.tensor([p for r in results for _, p in r], dtype=torch.int64)
        return lims, distances, self.ids_at(positions) if len(positions) else positions

    def _all_at(self, vector, distance, low, high):
        """Every code at exactly this distance with seq in [low, high)."""
        hits = self._search([vector], MAX_TOPK, f"{SEQ} >= {low} and {SEQ} < {high}", distance, distance + 1)[0]
        if len(hits) < MAX_TOPK or high - low <= 1:
            return hits
        middle = (low + high) // 2
        logger.debug("range search: more than %d codes at distance %d, splitting", MAX_TOPK, distance)
        return self._all_at(vector, distance, low, middle) + self._all_at(vector, distance, middle, high)


class _Quiet:
    """Calls through to an ORM collection without its deprecation warnings."""

    def __init__(self, collection):
        self.collection = collection

    def __getattr__(self, name):
        method = getattr(self.collection, name)

        def call(*args, **kwargs):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # pymilvus marks its ORM API deprecated
                return method(*args, **kwargs)
        return call


def _code_bytes(value):
    return value[0] if isinstance(value, list) else bytes(value)


def _parse_description(description, uri, collection):
    text = description.get("description", "")
    fields = dict(part.strip().split("=", 1) for part in text.split(";")[1:] if "=" in part)
    if not text.startswith("ssdh_port codes") or "bits" not in fields:
        raise MilvusError(f"{uri}: collection {collection!r} was not written by MilvusIndex (description {text!r})")
    return int(fields["bits"]), fields.get("labels", "none")
