"""Processes that never outlive the one that started them (PR_SET_PDEATHSIG, Linux).

`make` runs our tools in its recipe shell, which `exec`s them: the tool's parent is make
itself. When make is killed (kill -9 leaves it no chance to stop its children) the kernel
sends the tool SIGHUP, which the training driver answers like Ctrl-C (a snapshot, then
Caffe stops); the driver's own children get the same from it.
"""
import ctypes
import os
import signal

PR_SET_PDEATHSIG = 1    # linux/prctl.h
# The recipe shell's parent (make), as the Makefile passes it: `MTDNET_MAKE_PID=$$PPID exec ...`.
MAKE_PID_ENV = "MTDNET_MAKE_PID"


def _prctl():
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):   # not Linux: the signal handlers still stop Caffe
        return None


def die_with(parent, sig=signal.SIGHUP):
    """This process receives `sig` when `parent` (its parent now) ends; exits at once (status 1)
    when it already has. Kept across exec."""
    prctl = _prctl()
    if prctl is None:
        return
    prctl(PR_SET_PDEATHSIG, sig)
    if os.getppid() != parent:   # the parent died before the prctl took effect
        os._exit(1)


def die_with_make():
    """die_with(make) for a process the Makefile started (MTDNET_MAKE_PID); nothing otherwise."""
    pid = os.environ.pop(MAKE_PID_ENV, "")
    if pid.isdigit():
        die_with(int(pid))


def preexec_die_with_parent(sig=signal.SIGHUP):
    """preexec_fn for subprocess: the child receives `sig` when we die."""
    parent = os.getpid()
    return lambda: die_with(parent, sig)
