"""The one timer of the benchmarks: every bench_*.py times its work with it.

    timing = time_calls(fn, rounds=3, number=10, warmup=1, device=device)
    timing.best, timing.median, timing.mean   # seconds per call
    timing.result                             # what the last call returned
    seconds, value = time_calls(fn).best_result

`rounds` rounds of `number` calls each, after `warmup` untimed calls; the clock is
read on the host after the device has finished the work queued so far
(ssdh_port.device.synchronize: CUDA kernels run asynchronously). `number=None`
calibrates it: enough calls for about `min_round_s` a round, from one timed call.
Each round gives the seconds per call of its calls; `best` is the least disturbed
round on a shared machine, `median` the typical one.

`stopwatch(device)` times one section (a write, a compaction, a whole run);
`per_call(fn, count)` keeps every call's own seconds, for latency percentiles;
`calls_within(fn, seconds)` counts the calls that fit in a time (a throughput
measured while other work runs).
"""
import contextlib
import statistics
import time
from typing import Any, NamedTuple

from ssdh_port.device import synchronize


class Timing(NamedTuple):
    per_call: list  # seconds per call, one entry per round
    number: int     # calls in each round
    result: Any     # the last call's return value

    @property
    def best(self):
        return min(self.per_call)

    @property
    def median(self):
        return statistics.median(self.per_call)

    @property
    def mean(self):
        return statistics.fmean(self.per_call)

    @property
    def best_result(self):
        """(best, result): `seconds, value = time_calls(...).best_result`."""
        return self.best, self.result


def _sync(device):
    if device is not None:
        synchronize(device)


def time_calls(fn, rounds=3, number=1, warmup=0, device=None, min_round_s=0.02):
    """fn() timed in `rounds` rounds of `number` calls (None: calibrated) after
    `warmup` calls. Returns a Timing."""
    if rounds < 1:
        raise ValueError(f"time_calls: rounds must be at least 1, got {rounds}")
    result = None
    for _ in range(warmup):
        result = fn()
    if number is None:
        _sync(device)
        start = time.perf_counter()
        result = fn()
        _sync(device)
        number = max(1, int(min_round_s / max(time.perf_counter() - start, 1e-6)))
    if number < 1:
        raise ValueError(f"time_calls: number must be at least 1, got {number}")
    per_call = []
    for _ in range(rounds):
        _sync(device)
        start = time.perf_counter()
        for _ in range(number):
            result = fn()
        _sync(device)
        per_call.append((time.perf_counter() - start) / number)
    return Timing(per_call, number, result)


class Elapsed:
    """What a stopwatch measured: seconds, set when its section ends."""
    seconds = None


@contextlib.contextmanager
def stopwatch(device=None):
    """with stopwatch(device) as t: ... ; then t.seconds."""
    elapsed = Elapsed()
    _sync(device)
    start = time.perf_counter()
    yield elapsed
    _sync(device)
    elapsed.seconds = time.perf_counter() - start


def per_call(fn, count, device=None):
    """(seconds of all, [seconds of each]) of fn(0), fn(1), ..., fn(count - 1)."""
    each = []
    _sync(device)
    start = time.perf_counter()
    for i in range(count):
        t = time.perf_counter()
        fn(i)
        _sync(device)
        each.append(time.perf_counter() - t)
    return time.perf_counter() - start, each


def calls_within(fn, seconds):
    """(calls, elapsed seconds) of fn(0), fn(1), ... until `seconds` have passed."""
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn(done)
        done += 1
    return done, time.perf_counter() - start
