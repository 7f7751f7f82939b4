"""Ranks of one training on torch.distributed: the process group torchrun (or
launch(), one process per GPU) describes, made once and destroyed at exit;
rank 0's parameters broadcast, gradients averaged over one flat buffer, and a
value the ranks agree on. NCCL on GPUs, gloo on CPUs. The Caffe solver's
multi-GPU rules on top of these are in ssdh_port.caffe.parallel.
"""
import atexit
import contextlib
import dataclasses
import importlib
import os
import signal
import socket
import subprocess
import time

import torch
import torch.distributed as dist

from ssdh_port.errors import SSDHError


@dataclasses.dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1

    @property
    def root(self):
        return self.rank == 0


def from_environment(device):
    """The process group torchrun (or launch) described, initialised once; Ranks()
    for a single process. device: the torch.device the rank trains on."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Ranks()
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        # Modules that take the default group as a default argument value bind
        # it when they are imported (torch.distributed.nn.functional, reached
        # through torch._dynamo, which the net builder's shape inference loads):
        # imported after the group exists, they would keep it alive past
        # shutdown(). Imported first, they hold None.
        importlib.import_module("torch._dynamo")
        dist.init_process_group(backend)
        atexit.register(shutdown)
    return Ranks(dist.get_rank(), dist.get_world_size())


def shutdown():
    """Destroy the process group (from_environment registers this at exit).
    Left to the interpreter's own exit, gloo's worker threads outlive it: one that
    drops the last reference to a collective's tensor while the interpreter is
    finalising cannot take the GIL, and std::terminate aborts a rank that had
    finished its work."""
    if dist.is_initialized():
        dist.destroy_process_group()


def rank_device(device):
    """Under torchrun, a CUDA device is the rank's own GPU (LOCAL_RANK)."""
    local = os.environ.get("LOCAL_RANK")
    if local is not None and device.type == "cuda" and device.index is None:
        return torch.device("cuda", int(local))
    return device


def broadcast_parameters(tensors):
    """Every rank starts from rank 0's values."""
    with torch.no_grad():
        for tensor in tensors:
            dist.broadcast(tensor, 0)


def average_gradients(tensors, world):
    """Sum each tensor's .grad over the ranks (one flat buffer) and scale by 1/world."""
    grads = []
    for tensor in tensors:
        if tensor.grad is None:
            tensor.grad = torch.zeros_like(tensor)
        grads.append(tensor.grad)
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat.div_(world)
    start = 0
    for g in grads:
        g.copy_(flat[start:start + g.numel()].view_as(g))
        start += g.numel()


def agree(value):
    """The largest of an int over the ranks (all ranks stop, or fail, together)."""
    tensor = torch.tensor([int(value)], dtype=torch.int64)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return int(tensor.item())


def parse_gpus(text):
    """Caffe's --gpu value: '0', '0,1,2,3' or 'all' -> [GPU numbers]."""
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if text == "all":
        if not count:
            raise SSDHError("--gpu all: this machine has no CUDA GPU (train on the CPU without --gpu, or with "
                            "--nproc N for N CPU processes)")
        return list(range(count))
    try:
        gpus = [int(part) for part in text.split(",")]
    except ValueError:
        raise SSDHError(f"--gpu {text!r}: expected GPU numbers like 0 or 0,1,2,3, or all") from None
    if len(set(gpus)) != len(gpus) or min(gpus) < 0:
        raise SSDHError(f"--gpu {text!r}: each GPU once, numbers >= 0")
    if max(gpus) >= count:
        raise SSDHError(f"--gpu {text!r}: this machine has {count} CUDA GPU(s)")
    return gpus


def launch(command, argv, gpus=None, nproc=None):
    """Run `command argv` (command: the program's argv prefix, e.g. [python, -m,
    ssdh_port, train]) as the ranks of one process group (what torchrun does): one
    per GPU of gpus (each gets --device cuda:<its GPU>), or nproc CPU processes.
    Ctrl-C reaches every rank from the terminal (and SIGINT / SIGTERM / SIGHUP
    sent to this process are passed on); each rank stops as a single process
    does, and this returns the first non-zero exit status of the ranks, or 0, with
    no traceback of its own (torchrun prints a SignalException and exits 1)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    argv = without_options(argv)
    devices = [f"cuda:{gpu}" for gpu in gpus] if gpus is not None else ["cpu"] * int(nproc)
    processes = []
    forwarded = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def pass_on(number, frame):
        for process in processes:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(number)

    previous = {number: signal.signal(number, pass_on) for number in forwarded}
    try:
        for rank, device in enumerate(devices):
            env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                   "WORLD_SIZE": str(len(devices)), "LOCAL_RANK": str(rank),
                   "LOCAL_WORLD_SIZE": str(len(devices))}
            # Each rank its own session: a terminal's Ctrl-C reaches this process,
            # which passes it on once (not twice through the process group).
            processes.append(subprocess.Popen([*command, *argv, "--device", device], env=env,
                                              start_new_session=True))
        codes = _wait_all(processes)
    finally:
        for number, old in previous.items():
            signal.signal(number, old)
    return next((c for c in codes if c), 0)


def _wait_all(processes):
    """Exit statuses of every process; when one fails, the others (which would
    wait for it in a collective) are terminated, as torchrun does."""
    while True:
        codes = [p.poll() for p in processes]
        if all(c is not None for c in codes):
            return codes
        if any(c for c in codes if c is not None):
            for process in processes:
                if process.poll() is None:
                    process.terminate()
            return [p.wait() for p in processes]
        time.sleep(0.1)


def without_options(argv, options=("--gpu", "--device")):
    """argv without the given options and their values (both `--opt V` and
    `--opt=V`): what a launcher passes on to each rank, which gets its own."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in options:
            skip = True
        elif not arg.startswith(tuple(f"{o}=" for o in options)):
            out.append(arg)
    return out


_without_device = without_options  # its name in the tests
