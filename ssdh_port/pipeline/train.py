"""Training: Caffe's solver path as one call that returns what it made.

train_caffe(solver) is `caffe train -solver S [-weights W | -snapshot S]`: it
builds the Solver (ssdh_port.caffe.solver), initialises or resumes it, runs it
to max_iter with a progress bar, and keeps a JSON-lines log (one line per
displayed iteration and per test pass, flushed as it is written) and a PNG of
the losses. Caffe's display lines go to `display` (default: the ssdh_port
logger).
"""
import contextlib
import dataclasses
import json
import os
import signal
import threading
import time

import torch

from ssdh_port import distributed
from ssdh_port.caffe.proto import caffe_pb2 as pb
from ssdh_port.caffe.solver import Solver, read_solver, remove_stale_temporaries
from ssdh_port.device import resolve_device
from ssdh_port.errors import SSDHError
from ssdh_port.pipeline.plots import training_curves
from ssdh_port.progress import bar, logger


@dataclasses.dataclass
class TrainResult:
    """What a training run made: its last snapshot, log and timings."""
    weights: str | None          # the last .caffemodel written (None if none was)
    snapshot_prefix: str
    iterations: int
    log: str                     # train_log.jsonl
    plot: str | None             # train_loss.png
    seconds: float
    final_test: dict             # outputs of the last test pass of test net #0 ({} if none)
    stopped_early: bool = False  # a signal stopped it before max_iter


def pick_device(param, device=None):
    """The explicit device, else the solver's solver_mode / device_id (GPU only
    when CUDA is there, as a CPU-only Caffe build would run it on the CPU)."""
    if device is not None:
        return resolve_device(device)
    if param.solver_mode == pb.SolverParameter.GPU and torch.cuda.is_available():
        return torch.device(f"cuda:{param.device_id}")
    return torch.device("cpu")


class _Log:
    """train_log.jsonl written line by line (flushed), the records kept for the plot.
    The file is created (or, resuming, appended to) with its first record, so a
    run that fails to start leaves no log behind; a resumed run first writes a
    {"kind": "resumed", "iter": N} record, after which read_log drops what the
    earlier run logged from iteration N on."""

    def __init__(self, path, display_every, append=False):
        self.path, self.every, self.append = path, display_every, append
        self.file, self.resumed_at = None, None
        self.records, self.tests = [], []

    def resumed(self, iteration):
        self.resumed_at = iteration

    def iteration(self, record):
        # The machine-readable log follows the display lines: every `display` iterations.
        if self.every and record["iter"] % self.every:
            return
        self.records.append(record)
        self._write({"kind": "train", **record})

    def test(self, record):
        self.tests.append(record)
        self._write({"kind": "test", **record})

    def _write(self, record):
        if self.file is None:
            self.file = open(self.path, "a" if self.append else "w")
            if self.resumed_at is not None:
                self.file.write(json.dumps({"kind": "resumed", "iter": self.resumed_at}) + "\n")
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    def close(self):
        if self.file is not None:
            self.file.close()


SIGNAL_EFFECTS = ("stop", "snapshot", "none")


@contextlib.contextmanager
def _signal_effects(solver, sigint_effect, sighup_effect, display):
    """Caffe's -sigint_effect / -sighup_effect: SIGINT and SIGTERM ask the solver
    to stop (after the iteration, with a snapshot) by default, SIGHUP for a
    snapshot; handlers only in the main thread, the old ones put back after."""
    effects = {signal.SIGINT: sigint_effect, signal.SIGTERM: sigint_effect, signal.SIGHUP: sighup_effect}
    for name, effect in (("sigint_effect", sigint_effect), ("sighup_effect", sighup_effect)):
        if effect not in SIGNAL_EFFECTS:
            raise SSDHError(f"{name} {effect!r}: expected one of {SIGNAL_EFFECTS}")
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(number, frame):
        effect = effects[number]
        display(f"{signal.Signals(number).name} received: {effect} at the end of the iteration")
        solver.request(effect)

    previous = {number: signal.signal(number, handler) for number in effects}
    try:
        yield
    finally:
        for number, old in previous.items():
            signal.signal(number, old)


def train_caffe(solver, *, weights=None, resume=None, device=None, amp=False, channels_last=False,
                tf32=False, log_dir=None, display=None, progress=True, sigint_effect="stop",
                sighup_effect="snapshot", compile=False):
    """Run a Caffe solver (solver.prototxt / solver.yaml path or SolverParameter).
    resume: a snapshot (.solverstate or .pt), "latest" (the newest complete
    snapshot set of this solver's prefix) or a folder holding its *_latest record.
    SIGINT / SIGTERM / SIGHUP act as sigint_effect / sighup_effect say (Caffe's
    defaults: stop with a snapshot, snapshot)."""
    if weights and resume:
        raise SSDHError("give initial weights or a snapshot to resume from, not both")
    param = read_solver(solver) if not isinstance(solver, pb.SolverParameter) else solver
    device = distributed.rank_device(pick_device(param, device))
    # Under torchrun (or train_net --gpu 0,1,...): one rank of Caffe's multi-GPU
    # training; rank 0 alone displays, logs, tests and snapshots.
    ranks = distributed.from_environment(device)
    log_dir = log_dir or os.path.dirname(param.snapshot_prefix) or "."
    os.makedirs(log_dir, exist_ok=True)
    display = (display or logger.info) if ranks.root else (lambda line: None)
    progress = progress and ranks.root
    if ranks.root:
        removed = remove_stale_temporaries(param.snapshot_prefix or "snapshot")
        if removed:
            display(f"removed {len(removed)} temporary file(s) of an interrupted snapshot: {removed}")
    log = _Log(os.path.join(log_dir, "train_log.jsonl") if ranks.root else os.devnull, param.display,
               append=bool(resume))
    start = time.time()
    try:
        engine = Solver(param, device=device, log=display, on_iteration=log.iteration,
                        on_test=log.test, amp=amp, channels_last=channels_last, tf32=tf32, ranks=ranks,
                        compile=compile)
        display(f"Solver: {engine.updater.kind}, lr_policy {engine.rate.policy}, device {device}, "
                f"{len(engine.params)} learnable blobs, max_iter {param.max_iter}"
                + (f", {ranks.world} ranks of batch_size each (effective batch x{ranks.world})"
                   if ranks.world > 1 else ""))
        if weights:
            report = engine.net.copy_from(weights)
            display(f"Initialised from {weights}: loaded {report['loaded']}; "
                    f"left to fillers {report['not_in_weights']}; unused {report['unused']}")
        if resume:
            engine.restore(resume)
            log.resumed(engine.iter)
            display(f"Resumed from {resume} at iteration {engine.iter}")
        ticker = bar(total=param.max_iter, initial=engine.iter, desc="train", unit="iter",
                     disable_if=not progress)
        with _signal_effects(engine, sigint_effect, sighup_effect, display):
            engine.solve(progress=lambda done, total: ticker.update(done - ticker.n))
        ticker.close()
    finally:
        log.close()
    plot = None
    # The whole log, a resumed run's too (none if nothing was logged).
    records, tests = read_log(log.path) if ranks.root and os.path.exists(log.path) else ([], [])
    if records:
        plot = os.path.join(log_dir, "train_loss.png")
        training_curves(records, tests, plot)
    final = engine.snapshot_paths()[0]
    tests = [t for t in tests if t.get("net", 0) == 0]
    return TrainResult(weights=final if os.path.isfile(final) else None,
                       snapshot_prefix=param.snapshot_prefix, iterations=engine.iter, log=log.path,
                       plot=plot, seconds=time.time() - start,
                       final_test=tests[-1]["outputs"] if tests else {}, stopped_early=engine.stopped_early)


def read_log(path):
    """(train records, test records) of a train_log.jsonl, as one run: where a
    run resumed from iteration N, what the earlier run logged from N on is
    dropped (it was replayed)."""
    records, tests = [], []
    try:
        with open(path) as f:
            for number, line in enumerate(f, 1):
                try:
                    record = json.loads(line)
                except ValueError:
                    raise SSDHError(f"{path}:{number}: not a JSON log line") from None
                if record.get("kind") == "resumed":
                    records = [r for r in records if r.get("iter", -1) < record["iter"]]
                    tests = [t for t in tests if t.get("iter", -1) < record["iter"]]
                    continue
                (tests if record.get("kind") == "test" else records).append(record)
    except OSError as err:
        raise SSDHError(f"{path}: cannot read the training log ({err.strerror})") from None
    return records, tests


def final_test(path):
    """Outputs of the last test pass of test net #0 in a train_log.jsonl."""
    tests = [t for t in read_log(path)[1] if t.get("net", 0) == 0]
    if not tests:
        raise SSDHError(f"{path}: no test pass logged")
    return tests[-1]
