"""Loads the native extension ssdh_port._C, which registers torch.ops.ssdh.*.

A missing build, or one older than the sources in csrc/ (in a source
checkout), is an ImportError that says how to build.
"""
import importlib
import os

import torch  # noqa: F401  (libtorch must be loaded before the extension)

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_CSRC_DIR = os.path.join(os.path.dirname(_PACKAGE_DIR), "csrc")
_HOW_TO_BUILD = (
    "build it from the repository root with `make build` (or, against the torch "
    "already installed in your environment: `python setup.py build_ext --inplace`)"
)


def _check_fresh():
    if not os.path.isdir(_CSRC_DIR):
        return  # an installed package: no sources to compare with
    from ssdh_port._source_hash import source_hash

    try:
        from ssdh_port._build_info import SOURCE_HASH, WITH_CUDA
    except ImportError:
        raise ImportError(
            f"ssdh_port: the native extension has not been built; {_HOW_TO_BUILD}"
        ) from None
    if SOURCE_HASH != source_hash(_CSRC_DIR, WITH_CUDA):
        raise ImportError(
            "ssdh_port: the native extension is stale (csrc/ changed since it was "
            f"built); {_HOW_TO_BUILD}"
        )


def load():
    """Import ssdh_port._C once; return the module."""
    _check_fresh()
    try:
        return importlib.import_module("ssdh_port._C")
    except ImportError as err:
        raise ImportError(
            f"ssdh_port: cannot load the native extension ssdh_port._C ({err}); "
            f"{_HOW_TO_BUILD}"
        ) from err


_C = load()
WITH_CUDA = bool(_C.WITH_CUDA)
