"""bench/timer.py, the benchmarks' one timer: the calls it makes, what it reports."""
import importlib.util
import os
import time

import pytest
import torch

# bench/ is a folder of scripts, not a package: the timer module loaded from its file.
_SPEC = importlib.util.spec_from_file_location(
    "bench_timer", os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench", "timer.py"))
timer = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(timer)
calls_within, per_call, stopwatch, time_calls = timer.calls_within, timer.per_call, timer.stopwatch, timer.time_calls


def test_time_calls_counts_its_calls_and_reports_per_call_seconds():
    calls = []

    def fn():
        calls.append(1)
        time.sleep(0.002)
        return len(calls)

    timing = time_calls(fn, rounds=3, number=4, warmup=2)
    assert len(calls) == 2 + 3 * 4 and timing.result == 14 and timing.number == 4
    assert len(timing.per_call) == 3
    assert all(0.002 <= s < 0.05 for s in timing.per_call)  # per call, not per round
    assert timing.best == min(timing.per_call) <= timing.median <= max(timing.per_call)
    seconds, value = timing.best_result
    assert seconds == timing.best and value == 14


def test_time_calls_calibrates_the_calls_per_round():
    calls = []
    timing = time_calls(lambda: (calls.append(1), time.sleep(0.001)), rounds=2, number=None, min_round_s=0.02)
    # One timed call (about 1 ms) sets about 20 calls a round; sleeping can only overshoot.
    assert 1 <= timing.number <= 20
    assert len(calls) == 1 + 2 * timing.number


def test_time_calls_synchronises_the_device_it_is_given(monkeypatch):
    seen = []
    monkeypatch.setattr(timer, "synchronize", lambda device: seen.append(device))
    device = torch.device("cpu")
    time_calls(lambda: None, rounds=2, number=3, device=device)
    assert seen == [device] * 4  # before and after each round
    seen.clear()
    time_calls(lambda: None, rounds=1)
    assert seen == []


@pytest.mark.parametrize("kwargs", [{"rounds": 0}, {"number": 0}])
def test_time_calls_rejects_empty_measurements(kwargs):
    with pytest.raises(ValueError, match="time_calls: (rounds|number) must be at least 1"):
        time_calls(lambda: None, **kwargs)


def test_stopwatch_per_call_and_calls_within():
    with stopwatch() as elapsed:
        assert elapsed.seconds is None
        time.sleep(0.01)
    assert 0.01 <= elapsed.seconds < 0.5
    seen = []
    total, each = per_call(lambda i: (seen.append(i), time.sleep(0.001)), 5)
    assert seen == [0, 1, 2, 3, 4] and len(each) == 5
    assert all(s >= 0.001 for s in each) and total >= sum(each)
    done, spent = calls_within(lambda i: time.sleep(0.005), 0.05)
    assert 1 <= done <= 11 and spent >= 0.05
