"""Batches read ahead on a background thread, as Caffe's prefetching data layers
do: while the GPU runs an iteration, the next batches are copied out of the
database (into page-locked memory when they are bound for a GPU, so the copy to
the device can overlap). Batches come out in the order they were read; an error
in the reader is raised by the next() that would have returned its batch.
"""
import queue
import threading

from ssdh_port.errors import SSDHError


class BatchPrefetcher:
    def __init__(self, read_batch, depth=3, name="prefetch"):
        """read_batch() -> the next batch (any object); depth: batches held ready."""
        if depth < 1:
            raise SSDHError(f"prefetch depth must be >= 1, got {depth}")
        self._read_batch = read_batch
        self._ready = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            try:
                item = (self._read_batch(), None)
            except BaseException as err:  # handed to the consumer, which re-raises it
                item = (None, err)
            while not self._stop.is_set():
                try:
                    self._ready.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if item[1] is not None:
                return

    def next(self):
        if self._closed:
            raise RuntimeError("the prefetcher was closed")
        batch, err = self._ready.get()
        if err is not None:
            self.close()
            raise err
        return batch

    def close(self):
        """Stop the reader; batches read ahead are dropped."""
        self._closed = True
        self._stop.set()
        self._thread.join()

    @property
    def running(self):
        return self._thread.is_alive()
