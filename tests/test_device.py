"""The device module (the user's device argument, waiting for queued work, the
hardware named in benchmark records) and the atomic JSON writer the tools and
benchmarks share."""
import json
import os

import pytest
import torch

from ssdh_port.fileio import write_json
from ssdh_port.device import cpu_name, describe, resolve_device, synchronize
from ssdh_port.errors import SSDHError


def test_resolve_device_forms_and_errors():
    assert resolve_device(None) == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(SSDHError, match="'tpu': expected cpu, cuda or cuda:N"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        for gpu in ("cuda", "cuda:1", 0, "0"):
            with pytest.raises(SSDHError, match="CUDA is not available"):
                resolve_device(gpu)
    else:
        assert resolve_device(0) == resolve_device("0") == torch.device("cuda:0")


def test_describe_names_the_cpu_its_threads_and_instructions():
    text = describe(torch.device("cpu"))
    assert text.startswith(cpu_name())
    assert f"{torch.get_num_threads()} threads" in text
    assert text.endswith(f"CPU capability {torch.backends.cpu.get_cpu_capability()}")
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), None)
        assert model is None or cpu_name() == model
    synchronize(torch.device("cpu"))  # nothing to wait for, and no error


@pytest.mark.cuda
def test_describe_and_synchronize_on_a_gpu():
    device = torch.device("cuda:0")
    assert describe(device) == torch.cuda.get_device_name(device)
    x = torch.ones(1 << 20, device=device)
    y = x * 2
    synchronize(device)
    assert torch.cuda.current_stream(device).query() and float(y[0]) == 2.0


def test_write_json_replaces_the_file_whole_or_not_at_all(tmp_path):
    path = tmp_path / "sub" / "record.json"
    write_json(path, {"a": 1, "b": [1.5, "x"]})
    assert json.loads(path.read_text()) == {"a": 1, "b": [1.5, "x"]}
    # A payload that cannot be written leaves the previous file and no temporary.
    with pytest.raises(TypeError):
        write_json(path, {"a": object()})
    assert json.loads(path.read_text()) == {"a": 1, "b": [1.5, "x"]}
    assert sorted(os.listdir(path.parent)) == ["record.json"]
