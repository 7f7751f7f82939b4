"""Fingerprint of the native sources, shared by setup.py and the import check."""
import hashlib
import os

_SOURCE_SUFFIXES = (".h", ".cuh", ".cpp", ".cu")


def source_hash(csrc_dir):
    """sha256 over the relative paths and contents of every source in csrc_dir."""
    digest = hashlib.sha256()
    for folder, _, files in sorted(os.walk(csrc_dir)):
        for name in sorted(files):
            if not name.endswith(_SOURCE_SUFFIXES):
                continue
            path = os.path.join(folder, name)
            digest.update(os.path.relpath(path, csrc_dir).encode())
            with open(path, "rb") as f:
                digest.update(f.read())
    return digest.hexdigest()
