"""Write-then-rename helpers: no half-written output is ever left under the final name,
and a folder the user named is never replaced unless this project made it."""
import contextlib
import errno
import json
import os
import shutil
import tempfile

from core import MtdnetError


def _umask():
    m = os.umask(0)
    os.umask(m)
    return m


# mkstemp/mkdtemp create owner-only files; the final output gets the usual modes.
FILE_MODE = 0o666 & ~_umask()
DIR_MODE = 0o777 & ~_umask()


FULL = (errno.ENOSPC, errno.EDQUOT)


def free_bytes(path):
    """Bytes free to us on the file system holding `path` (or its nearest existing parent)."""
    p = os.path.abspath(path)
    while not os.path.exists(p) and os.path.dirname(p) != p:
        p = os.path.dirname(p)
    try:
        st = os.statvfs(p)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def os_error(e, path=None, doing=""):
    """An OSError as the one-line user-facing error: the file, then what went wrong
    (a full disk says "No space left on device" and how much is free there)."""
    where = e.filename or path or "?"
    what = e.strerror or str(e)
    if e.errno in FULL:
        free = free_bytes(where)
        what += f" ({free / 1e6:.1f} MB free there)" if free is not None else ""
    hint = "; free some space and run the command again" if e.errno in FULL else ""
    return MtdnetError(f"{where}: {what}{doing}{hint}")


def atomic_write_bytes(path, data):
    d = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        os.makedirs(d, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=d)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException as e:
        if tmp:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        if isinstance(e, OSError):
            # The message names the file the user knows, not our temporary name.
            raise os_error(OSError(e.errno, e.strerror, path)) from None
        raise


def atomic_write_text(path, text):
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path, obj):
    atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=True) + "\n")


def require_replaceable(path, ours, what, instead):
    """Refuse to replace `path` unless it is missing, an empty folder, or one `ours(path)`
    recognises as made by this project (its marker file). `what` names the output,
    `instead` says what the user can do."""
    if not os.path.lexists(path):
        return
    if os.path.islink(path) or not os.path.isdir(path):
        kind = "a link" if os.path.islink(path) else "a file"
        raise MtdnetError(f"{path}: {kind}, not a folder; {what} is written only into a new or empty "
                          "folder, or one it made itself: name a folder")
    if not os.listdir(path) or ours(path):
        return
    raise MtdnetError(f"{path}: not empty and not made by this project; refusing to replace it with "
                      f"{what} (it is written only into a new or empty folder, or one it made itself). "
                      f"{instead}")


@contextlib.contextmanager
def atomic_dir(path, guard=None):
    """Yield a temporary sibling directory; on success it replaces `path`.

    On any error (or Ctrl-C) the temporary directory is removed and `path`
    keeps whatever it had before. `guard`: (ours, what, instead) for
    require_replaceable, checked before anything is written and again just
    before the swap.
    """
    path = os.path.abspath(path)
    if guard:
        require_replaceable(path, *guard)
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
    if guard:
        try:
            require_replaceable(path, *guard)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
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
