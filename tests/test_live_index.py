"""The live index (ssdh_port.hashing.live): the same results as a fresh HammingIndex
of the surviving items after any sequence of adds, removes, upserts and
compactions; one writer; a torn tail dropped; kill -9 of a writer at random points
(compaction included) loses no acknowledged change and leaves no partial one; a
full disk leaves the index as it was; searches while another thread ingests."""
import json
import os
import resource
import signal
import threading
import time

import numpy as np
import pytest
import torch

from ssdh_port.hashing import HammingIndex, LiveIndex, LiveIndexError
from tests.commands import ssdh


def _codes_of(ids, bits=24):
    """The codes of these ids, the same in every process (one generator per id)."""
    return np.stack([np.random.default_rng(int(i)).integers(0, 2, bits) for i in ids]) if len(ids) else \
        np.zeros((0, bits), np.int64)


def _fresh(items, bits, labels=False):
    index = HammingIndex(bits)
    if items:
        ids = list(items)
        index.add(_codes_of(ids, bits), ids, [i % 5 for i in ids] if labels else None)
    return index


def _same_results(live, expected, queries, k):
    if not len(expected):
        return
    d1, i1 = live.search(queries, k)
    d2, i2 = expected.search(queries, k)
    assert torch.equal(d1, d2) and torch.equal(i1, i2)


@pytest.mark.parametrize("bits", [8, 24, 130])
def test_any_sequence_of_changes_searches_as_a_fresh_index(tmp_path, bits):
    rng = np.random.default_rng(bits)
    path = tmp_path / "live.ssdh"
    live = LiveIndex.create(path, bits, label_width=1)
    items = {}  # id -> None, in insertion order (dicts keep it)
    next_id = 0
    queries = rng.integers(0, 2, (6, bits))
    for step in range(40):
        action = rng.choice(["add", "add", "remove", "upsert", "compact"])
        if action == "add" or not items:
            ids = list(range(next_id, next_id + int(rng.integers(1, 30))))
            next_id += len(ids)
            live.add(_codes_of(ids, bits), ids, [i % 5 for i in ids])
            items.update(dict.fromkeys(ids))
        elif action == "remove":
            gone = rng.choice(list(items), size=min(len(items), int(rng.integers(1, 6))), replace=False).tolist()
            live.remove(gone)
            for i in gone:
                del items[i]
        elif action == "upsert":
            again = rng.choice(list(items), size=min(len(items), 3), replace=False).tolist()
            live.add(_codes_of(again, bits), again, [i % 5 for i in again], upsert=True)
            for i in again:  # an upserted item counts from its new insertion
                del items[i]
                items[i] = None
        else:
            live.compact()
        expected = _fresh(items, bits, labels=True)
        assert len(live) == len(items)
        for k in (1, 7, len(items)):
            _same_results(live, expected, queries, k)
        # Every reader (HammingIndex.load: search, eval, the service) sees the same state.
        if step % 8 == 0:
            view = HammingIndex.load(path)
            assert view.ids.tolist() == list(items) and view.labels.tolist() == [i % 5 for i in items]
    live.close()
    reopened = LiveIndex(path)
    _same_results(reopened, _fresh(items, bits, labels=True), queries, 5)
    reopened.close()


def test_errors_and_one_writer(tmp_path):
    path = tmp_path / "live.ssdh"
    live = LiveIndex.create(path, 24)
    live.add(_codes_of([1, 2]), [1, 2])
    with pytest.raises(LiveIndexError, match="another process is writing this index"):
        LiveIndex(path)
    with pytest.raises(LiveIndexError, match=r"ids \[2\] are already in .*upsert=True"):
        live.add(_codes_of([2, 3]), [2, 3])
    with pytest.raises(LiveIndexError, match=r"ids \[9\] are not in"):
        live.remove([1, 9])
    assert len(live) == 2  # a refused change changes nothing
    with pytest.raises(LiveIndexError, match="holds no labels"):
        live.add(_codes_of([4]), [4], [0])
    with pytest.raises(LiveIndexError, match="exists"):
        LiveIndex.create(path, 24)
    live.close()
    LiveIndex(path).close()  # the lock goes with close()


def test_a_torn_tail_is_dropped_with_a_warning(tmp_path, caplog):
    path = tmp_path / "live.ssdh"
    with LiveIndex.create(path, 24) as live:
        live.add(_codes_of([1, 2, 3]), [1, 2, 3])
        live.add(_codes_of([4]), [4])
    whole = os.path.getsize(str(path) + ".log")
    with open(str(path) + ".log", "r+b") as f:
        f.truncate(whole - 5)  # the last record half-written
    assert HammingIndex.load(path).ids.tolist() == [1, 2, 3]
    assert "torn record" in caplog.text
    with LiveIndex(path) as live:
        assert len(live) == 3
        live.add(_codes_of([5]), [5])  # the log goes on from the last whole record
    assert HammingIndex.load(path).ids.tolist() == [1, 2, 3, 5]


WRITER_STEPS = 400


def _writer(path, acks, rng_seed):
    """A writer that says what it is about to do ("I") and what is on disk ("A")."""
    rng = np.random.default_rng(rng_seed)
    live = LiveIndex(path)
    alive = sorted(live.state.where)
    next_id = max(alive, default=-1) + 1
    for _ in range(WRITER_STEPS):
        choice = rng.random()
        if choice < 0.65 or not alive:
            ids = list(range(next_id, next_id + int(rng.integers(1, 40))))
            next_id += len(ids)
            os.write(acks, (json.dumps(["I", "add", ids]) + "\n").encode())
            live.add(_codes_of(ids), ids)
            alive += ids
            os.write(acks, (json.dumps(["A", "add", ids]) + "\n").encode())
        elif choice < 0.9:
            gone = rng.choice(alive, size=min(len(alive), 3), replace=False).tolist()
            os.write(acks, (json.dumps(["I", "remove", gone]) + "\n").encode())
            live.remove(gone)
            alive = [i for i in alive if i not in gone]
            os.write(acks, (json.dumps(["A", "remove", gone]) + "\n").encode())
        else:
            os.write(acks, (json.dumps(["I", "compact", []]) + "\n").encode())
            live.compact()
            os.write(acks, (json.dumps(["A", "compact", []]) + "\n").encode())


def test_kill_9_at_random_points_loses_nothing_acknowledged(tmp_path):
    path = str(tmp_path / "live.ssdh")
    LiveIndex.create(path, 24).close()
    state = {}  # id -> None: the acknowledged state, in insertion order
    rng = np.random.default_rng(11)
    for run in range(20):
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the writer
            os.close(read)
            try:
                _writer(path, write, run)
            finally:
                os._exit(0)
        os.close(write)
        time.sleep(float(rng.uniform(0.05, 0.4)))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        with os.fdopen(read) as f:
            lines = [json.loads(line) for line in f.read().splitlines() if line.endswith("]")]
        in_flight = None
        for kind, action, ids in lines:
            if kind == "I":
                in_flight = (action, ids)
                continue
            in_flight = None
            if action == "add":
                state.update(dict.fromkeys(ids))
            elif action == "remove":
                for i in ids:
                    del state[i]
        view = HammingIndex.load(path)  # opens without repair
        found = view.ids.tolist()
        with_flight = dict(state)
        if in_flight and in_flight[0] == "add":
            with_flight.update(dict.fromkeys(in_flight[1]))
        elif in_flight and in_flight[0] == "remove":
            for i in in_flight[1]:
                with_flight.pop(i, None)
        assert found in (list(state), list(with_flight)), f"run {run}: not the acknowledged state"
        state = dict.fromkeys(found)
        assert np.array_equal(view.codes.numpy(), HammingIndex.load(path).codes.numpy())
        expected = _fresh(state, 24)
        if len(expected):
            assert np.array_equal(view.codes.numpy(), expected.codes.numpy())  # no partial item
    assert len(state) > 100  # the runs did ingest


def test_a_full_disk_leaves_the_index_as_it_was(tmp_path):
    path = str(tmp_path / "live.ssdh")
    with LiveIndex.create(path, 24) as live:
        live.add(_codes_of(range(10)), list(range(10)))
    limit = os.path.getsize(path + ".log") + 64  # room for less than the next record
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        message = "no error"
        try:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
            live = LiveIndex(path)
            try:
                live.add(_codes_of(range(10, 200)), list(range(10, 200)))
            except LiveIndexError as err:
                message = f"{err} | {len(live)}"
        finally:
            os.write(write, message.encode())
            os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read) as f:
        message = f.read()
    assert "the change was not written" in message and "the index is as it was" in message
    assert message.endswith("| 10")
    with LiveIndex(path) as live:
        assert len(live) == 10
        live.add(_codes_of([10]), [10])
    assert HammingIndex.load(path).ids.tolist() == list(range(11))


def test_searches_from_8_threads_during_ingestion(tmp_path):
    path = tmp_path / "live.ssdh"
    live = LiveIndex.create(path, 24)
    live.add(_codes_of(range(50)), list(range(50)))
    failures, done = [], threading.Event()
    queries = np.random.default_rng(3).integers(0, 2, (4, 24))

    def client():
        while not done.is_set():
            try:
                distances, ids = live.search(queries, 10)
                assert ids.shape == (4, 10) and bool((distances[:, 1:] >= distances[:, :-1]).all())
            except Exception as err:  # noqa: BLE001 - every failure is reported
                failures.append(err)

    threads = [threading.Thread(target=client) for _ in range(8)]
    for thread in threads:
        thread.start()
    for batch in range(40):
        ids = list(range(50 + 10 * batch, 60 + 10 * batch))
        live.add(_codes_of(ids), ids)
        if batch % 10 == 9:
            live.remove(ids[:5])
    done.set()
    for thread in threads:
        thread.join()
    live.close()
    assert not failures, failures[:3]


def test_the_index_command(tmp_path):
    index, extra = tmp_path / "codes.ssdh", tmp_path / "new.ssdh"
    _fresh({i: None for i in range(5)}, 24, labels=True).save(index)
    _fresh({i: None for i in range(5, 8)}, 24, labels=True).save(extra)
    added = ssdh("index", "add", index, extra)
    assert added.returncode == 0 and "added 3 items" in added.stdout and "8 now" in added.stdout
    again = ssdh("index", "add", index, extra)
    assert again.returncode == 1 and "already in" in again.stderr.strip().splitlines()[-1]
    assert ssdh("index", "add", index, extra, "--upsert").returncode == 0
    assert ssdh("index", "remove", index, "0", "6").returncode == 0
    info = json.loads(ssdh("index", "info", index).stdout)
    assert info["items"] == 6 and info["tombstones"] == 5 and info["labels"] == 1
    assert ssdh("index", "compact", index).returncode == 0
    view = HammingIndex.load(index)
    assert view.ids.tolist() == [1, 2, 3, 4, 5, 7] and view.generation == 1
    assert json.loads(ssdh("index", "info", index).stdout)["tombstones"] == 0
