"""Fingerprint of the native sources, shared by setup.py and the import check."""
import hashlib
import os

_SOURCE_SUFFIXES = (".h", ".cpp")
_CUDA_SUFFIXES = (".cuh", ".cu")


def source_hash(csrc_dir, with_cuda=True):
    """sha256 over the relative paths and contents of the sources in csrc_dir that
    a build compiles (the CUDA ones only for a CUDA build)."""
    suffixes = _SOURCE_SUFFIXES + (_CUDA_SUFFIXES if with_cuda else ())
    digest = hashlib.sha256()
    for folder, _, files in sorted(os.walk(csrc_dir)):
        for name in sorted(files):
            if not name.endswith(suffixes):
                continue
            path = os.path.join(folder, name)
            digest.update(os.path.relpath(path, csrc_dir).encode())
            with open(path, "rb") as f:
                digest.update(f.read())
    return digest.hexdigest()
