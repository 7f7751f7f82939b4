"""Caffe compatibility: the proto schema, prototxt / caffemodel / binaryproto
I/O, the V0/V1 upgrade, the layers, the network builder and the solver.

    from ssdh_port.caffe import CaffeNet, Solver, read_solver

The names below load their module on first use: the data package and the
layers import each other's modules, and a package that imported the network
builder eagerly would make that a cycle.
"""
import importlib

_EXPORTS = {
    "CaffeFileError": "io", "LayerError": "layers", "CaffeNet": "net", "load_weights": "net",
    "Solver": "solver", "SolverError": "solver", "read_solver": "solver",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"ssdh_port.caffe.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'ssdh_port.caffe' has no attribute {name!r}")
