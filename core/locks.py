"""One command at a time per run and per prepared-data folder.

A lock is an flock(2) on a hidden file beside the folder it guards
(`runs/.<run>.lock`, `data/.<name>.lock`). The kernel drops it when the holder
dies, however it dies (kill -9, OOM), so a lock is never stale; a second
command on the same folder stops at once with "already running (pid N)"
instead of writing the same files. Child processes may inherit the lock
(`Lock.fd`, e.g. for `caffe train`): it is then held until they exit too.
The file is removed on release, under the lock; an acquirer that locked a
file removed meanwhile notices (another inode at the path) and tries again.
"""
import contextlib
import errno
import fcntl
import os
import time

from core.errors import MtdnetError

# Tries to read the holder's pid while it is still writing it.
PID_READ_TRIES = 20
PID_READ_WAIT_S = 0.05


class AlreadyRunning(MtdnetError):
    pass


def lock_path(target):
    """The lock file of a folder: a hidden sibling `.<name>.lock`."""
    target = os.path.abspath(target)
    return os.path.join(os.path.dirname(target), f".{os.path.basename(target)}.lock")


class Lock:
    def __init__(self, path, fd):
        self.path, self.fd = path, fd

    def add_pid(self, pid):
        """Record another process holding the lock with us (an inheriting child)."""
        os.write(self.fd, f"{pid}\n".encode())


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _holder(path):
    """The first live pid the lock file names (the holder, or the child it passed the lock to)."""
    for _ in range(PID_READ_TRIES):
        try:
            with open(path) as f:
                pids = [int(x) for x in f.read().split() if x.isdigit()]
        except OSError:
            pids = []
        live = [p for p in pids if _pid_alive(p)]
        if live:
            return live[0]
        time.sleep(PID_READ_WAIT_S)
    return None


@contextlib.contextmanager
def exclusive(target, what, label=None):
    """Hold the lock of the folder `target` while the block runs; `what` names the command
    ("make train") in the message another command gets; `label` is how the folder is shown."""
    path = lock_path(target)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            pid = _holder(path)
            stop = f"; wait for it to finish or stop it with `kill {pid}`" if pid else ""
            raise AlreadyRunning(f"{label or target}: {what} already running "
                                 f"(pid {pid if pid else 'unknown'}){stop}") from None
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)   # the previous holder removed this file as we locked it: take the new one
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield Lock(path, fd)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(fd)


def running(target):
    """The pid of a live command holding `target`'s lock (from its lock file, without taking
    the lock), or None."""
    try:
        with open(lock_path(target)) as f:
            pids = [int(x) for x in f.read().split() if x.isdigit()]
    except OSError:
        return None
    return next((p for p in pids if _pid_alive(p)), None)
