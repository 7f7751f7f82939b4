#!/usr/bin/env python
"""Compile every csrc/cuda/*.cu with nvcc, without linking or running anything.

Machines without a GPU (and with a CPU-only torch) cannot build the CUDA
extension, but they can still prove that the CUDA sources compile against the
installed torch headers. Exits non-zero, naming the file, on the first failure;
exits 0 with a notice when nvcc is absent.

    python scripts/check_cuda_compile.py [--arch sm_90]
"""
import argparse
import glob
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile

import torch
from torch.utils import cpp_extension

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def nvcc_command(source, output, arch):
    includes = cpp_extension.include_paths() + [sysconfig.get_paths()["include"]]
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    flags = [
        "-c",
        source,
        "-o",
        output,
        f"-arch={arch}",
        "-O1",
        "-DSSDH_WITH_CUDA",
        # A CPU-only torch ships c10/cuda without its generated macros header;
        # the macro says to do without it (it only sets DLL export names).
        "-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE",
        f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
        "-DTORCH_EXTENSION_NAME=_C",
        "-Xcompiler",
        "-fPIC",
    ]
    flags += cpp_extension.COMMON_NVCC_FLAGS
    return ["nvcc"] + flags + [f"-I{d}" for d in includes]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="sm_90", help="GPU architecture (default sm_90, Hopper)")
    args = parser.parse_args(argv)
    if shutil.which("nvcc") is None:
        print("check_cuda_compile: nvcc not found; CUDA sources not checked")
        return 0
    sources = sorted(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu")))
    if not sources:
        print("check_cuda_compile: no CUDA sources found under csrc/cuda", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        for source in sources:
            name = os.path.relpath(source, ROOT)
            output = os.path.join(tmp, os.path.basename(source) + ".o")
            result = subprocess.run(
                nvcc_command(source, output, args.arch), capture_output=True, text=True
            )
            if result.returncode != 0:
                print(result.stdout + result.stderr, file=sys.stderr)
                print(f"check_cuda_compile: {name} does not compile", file=sys.stderr)
                return 1
            print(f"check_cuda_compile: {name} compiles ({args.arch})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
