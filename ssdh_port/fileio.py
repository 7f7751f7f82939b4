"""Files written whole or not at all: a temporary file beside the target,
renamed over it on success (os.replace is atomic on POSIX), removed on any
failure. Every writer of the project goes through atomic_write."""
import contextlib
import json
import os
import tempfile


def temporary_beside(path):
    """(fd, name) of a new private temporary file beside path: the project's one
    temporary-name scheme, '.<name>.<random>' (see stale_temporaries)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    return tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", dir=folder)


def stale_temporaries(folder, stem):
    """The temporaries temporary_beside() made for files of folder whose names
    start with stem, left by a process that was killed while writing them."""
    if not os.path.isdir(folder):
        return []
    return sorted(os.path.join(folder, name) for name in os.listdir(folder) if name.startswith("." + stem))


@contextlib.contextmanager
def atomic_write(path, mode="wb"):
    """Open a temporary file beside path; rename it over path on success."""
    fd, tmp = temporary_beside(path)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
        # mkstemp makes the file private; give it the usual umask-based mode.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


ZIP_MAGIC = b"PK\x03\x04"


def pt_problem(path):
    """Why torch.load(path, weights_only=True) failed, in a few words (torch's own
    messages run to paragraphs, or advise the unsafe weights_only=False)."""
    import zipfile

    try:
        with open(path, "rb") as f:
            head = f.read(len(ZIP_MAGIC))
    except OSError as err:
        return f"cannot read it ({err.strerror})"
    if head != ZIP_MAGIC:
        return "not a PyTorch .pt file (no zip archive in it)"
    if not zipfile.is_zipfile(path):
        return "a truncated or damaged .pt file (its zip archive is incomplete)"
    return "a .pt file with objects other than tensors and plain values, which are not loaded"


def write_json(path, payload):
    """payload as indented JSON, through a temporary file and a rename."""
    with atomic_write(path, "w") as f:
        json.dump(payload, f, indent=1)
