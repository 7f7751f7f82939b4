"""Markers of the suite, and the one place that decides what runs here.

    cuda     needs a CUDA device and the extension built with CUDA (skipped otherwise)
    slow     trains or encodes for more than a few seconds (`pytest -m "not slow"` for a quick pass)
    browser  drives Debian's chromium (make test installs it; skipped without it outside CI)

Commands run in-process through tests/commands.py (ssdh), with one subprocess
smoke test per command (tests/test_commands.py).
"""
import pytest
import torch

import ssdh_port


def cuda_available():
    return torch.cuda.is_available() and ssdh_port._native.WITH_CUDA


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA device and the extension built with CUDA")
    config.addinivalue_line("markers", "slow: trains or encodes for more than a few seconds")
    config.addinivalue_line("markers", "browser: drives a real browser (Debian's chromium)")


def pytest_collection_modifyitems(config, items):
    if cuda_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device and the extension built with CUDA")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
