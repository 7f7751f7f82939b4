"""Files written whole or not at all: a temporary file beside the target,
renamed over it on success (os.replace is atomic on POSIX), removed on any
failure. Every writer of the project goes through atomic_write."""
import contextlib
import json
import os
import tempfile


@contextlib.contextmanager
def atomic_write(path, mode="wb"):
    """Open a temporary file beside path; rename it over path on success."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", dir=folder)
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


def write_json(path, payload):
    """payload as indented JSON, through a temporary file and a rename."""
    with atomic_write(path, "w") as f:
        json.dump(payload, f, indent=1)
