"""Build of ssdh_port and its native extension ssdh_port._C.

The extension is compiled against the torch that is already installed (build
with --no-build-isolation): C++ CPU kernels always, CUDA kernels when that torch
has CUDA and nvcc is found (SSDH_FORCE_CUDA=1 / SSDH_NO_CUDA=1 override).
After a build, ssdh_port/_build_info.py records a hash of csrc/ so that
importing ssdh_port can tell a stale build from a fresh one.
"""
import glob
import os

from setuptools import setup
from torch.utils import cpp_extension

ROOT = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join(ROOT, "csrc")


def _sources(pattern):
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(CSRC, pattern)))


def _want_cuda():
    if os.environ.get("SSDH_NO_CUDA") == "1":
        return False
    if os.environ.get("SSDH_FORCE_CUDA") == "1":
        return True
    import torch

    return torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None


def _extension():
    with_cuda = _want_cuda()
    sources = _sources("*.cpp") + _sources("cpu/*.cpp") + _sources("autograd/*.cpp")
    # No FP-exception semantics are relied on; without them GCC can turn the
    # selects of the loss terms into vector blends.
    cxx_flags = ["-O3", "-fno-trapping-math", "-fopenmp"]
    macros = []
    kwargs = {}
    if with_cuda:
        sources += _sources("cuda/*.cu")
        macros.append(("SSDH_WITH_CUDA", None))
        kwargs["extra_compile_args"] = {"cxx": cxx_flags, "nvcc": ["-O3"]}
        ext_class = cpp_extension.CUDAExtension
    else:
        kwargs["extra_compile_args"] = {"cxx": cxx_flags}
        ext_class = cpp_extension.CppExtension
    return ext_class(
        "ssdh_port._C",
        sources,
        define_macros=macros,
        extra_link_args=["-fopenmp"],
        py_limited_api=False,
        **kwargs,
    )


def _load_source_hash():
    """ssdh_port/_source_hash.py, loaded by path: importing the package would
    try to load the extension that is being built."""
    import importlib.util

    path = os.path.join(ROOT, "ssdh_port", "_source_hash.py")
    spec = importlib.util.spec_from_file_location("_ssdh_source_hash", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.source_hash


class BuildExtension(cpp_extension.BuildExtension):
    """Torch's build, then the record of what was built from."""

    def run(self):
        super().run()
        source_hash = _load_source_hash()

        with_cuda = any(s.endswith(".cu") for e in self.extensions for s in e.sources)
        info = os.path.join(ROOT, "ssdh_port", "_build_info.py")
        tmp = info + ".tmp"
        with open(tmp, "w") as f:
            f.write("# Written by setup.py after a successful build; do not edit.\n")
            f.write(f"SOURCE_HASH = {source_hash(CSRC, with_cuda)!r}\n")
            f.write(f"WITH_CUDA = {with_cuda!r}\n")
        os.replace(tmp, info)


# Name, version and packages are in pyproject.toml; the extension is built here.
# SSDH_NO_EXTENSION=1 leaves it out: the Makefile registers the editable package
# that way and builds the extension in place, incrementally, with build_ext.
setup(
    ext_modules=[] if os.environ.get("SSDH_NO_EXTENSION") == "1" else [_extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
