"""The device a job runs on: parsing the user's choice, waiting for its queued
work, and naming the hardware in logs and benchmark records."""
import torch

from ssdh_port.errors import SSDHError


def resolve_device(device):
    """"cpu", "cuda", "cuda:N" or an int N (a GPU number) -> torch.device; a CUDA
    device on a machine without CUDA is an error naming the argument."""
    if device is None:
        return torch.device("cpu")
    if isinstance(device, int) or (isinstance(device, str) and device.isdigit()):
        device = f"cuda:{int(device)}"
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise SSDHError(f"device {device!r}: expected cpu, cuda or cuda:N") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise SSDHError(f"device {device!r}: CUDA is not available on this machine")
    return resolved


def synchronize(device):
    """Wait for the work queued on a CUDA device (kernels run asynchronously, so a
    clock read without this times their launch, not the work); nothing on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cpu_name():
    """The processor's model name (Linux /proc/cpuinfo), or "unknown CPU"."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown CPU"


def describe(device):
    """What a measurement ran on, in one line: the GPU's name, or the processor
    with the threads torch uses and the vector instructions its kernels take
    (the two things CPU speeds here depend on)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return (f"{cpu_name()}, {torch.get_num_threads()} threads, "
            f"CPU capability {torch.backends.cpu.get_cpu_capability()}")
