"""Write-then-rename helpers: no half-written output is ever left under the final name."""
import contextlib
import json
import os
import shutil
import tempfile

from spec import MtdnetError


def _umask():
    m = os.umask(0)
    os.umask(m)
    return m


# mkstemp/mkdtemp create owner-only files; the final output gets the usual modes.
FILE_MODE = 0o666 & ~_umask()
DIR_MODE = 0o777 & ~_umask()


def atomic_write_bytes(path, data):
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=d)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_text(path, text):
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path, obj):
    atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=True) + "\n")


@contextlib.contextmanager
def atomic_dir(path):
    """Yield a temporary sibling directory; on success it replaces `path`.

    On any error (or Ctrl-C) the temporary directory is removed and `path`
    keeps whatever it had before.
    """
    path = os.path.abspath(path)
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="." + os.path.basename(path) + ".partial-", dir=parent)
    os.chmod(tmp, DIR_MODE)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if os.path.exists(path):
        old = tempfile.mkdtemp(prefix="." + os.path.basename(path) + ".old-", dir=parent)
        os.rmdir(old)
        os.replace(path, old)
    os.replace(tmp, path)
    if old:
        shutil.rmtree(old, ignore_errors=True)


def read_json(path, what="JSON file"):
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise MtdnetError(f"{path}: {what} not found")
    except json.JSONDecodeError as e:
        raise MtdnetError(f"{path}: not valid JSON ({e})")
