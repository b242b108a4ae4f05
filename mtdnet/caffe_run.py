"""Drive the `caffe train` binary: resume, progress with ETA, NaN stop, Ctrl-C snapshot.

The run is exactly what `caffe train -solver <run>/solver.prototxt` does by
hand; this module only watches Caffe's log. Caffe runs in its own process
group so that a terminal Ctrl-C reaches only us: the embedded Python of our
layers would otherwise turn SIGINT into a KeyboardInterrupt inside a layer and
abort Caffe without a snapshot. We forward it as SIGHUP with
`-sighup_effect stop`, which makes Caffe snapshot and exit cleanly. SIGTERM
(`kill`, a job scheduler) and SIGHUP (the terminal closed, ssh dropped) take
the same path. Should we die without a word (kill -9, the OOM killer), the
kernel sends Caffe that SIGHUP itself (PR_SET_PDEATHSIG): Caffe never
outlives us.

Resuming takes the newest snapshot pair that loads: a .solverstate cut short
(a full disk, a kill during the write) is skipped with a message, and the
next older pair is used. A snapshot Caffe could not finish writing is removed
and the error names the file and the free space.
"""
import collections
import glob
import math
import os
import re
import signal
import subprocess
import sys
import time

from core import MtdnetError, Project
from core.fsutil import free_bytes, os_error
from core.proc import preexec_die_with_parent
from mtdnet import caffelog

# Progress lines printed when stderr is not a terminal (a log file): one per this
# fraction of the run, instead of a redrawn bar.
PLAIN_PROGRESS_STEP = 0.1
LOG_TAIL_LINES = 15
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# A failed snapshot write with less than this free on its file system was a full disk.
FULL_DISK_BYTES = 1 << 20


def snapshot_iter(path):
    m = re.search(r"_iter_(\d+)\.(?:solverstate|caffemodel)(?:\.h5)?$", path)
    return int(m.group(1)) if m else -1


def snapshots(prefix, ext="caffemodel"):
    """Every non-empty `<prefix>_iter_N.<ext>`, by iteration."""
    return sorted((p for p in glob.glob(f"{glob.escape(prefix)}_iter_*.{ext}") if os.path.getsize(p) > 0),
                  key=snapshot_iter)


def model_of(state):
    return state[:-len("solverstate")] + "caffemodel"


def latest_snapshot(prefix, ext="solverstate"):
    """The newest `<prefix>_iter_N.<ext>` whose files are complete, or None.

    Caffe writes the .caffemodel first and the .solverstate second, so a
    solverstate that exists names a complete pair unless it is empty
    (killed mid-write): such files are skipped. `good_snapshot` also checks
    that the pair loads.
    """
    found = snapshots(prefix, ext)
    if ext == "solverstate":
        found = [p for p in found if os.path.exists(model_of(p))]
    return max(found, key=snapshot_iter) if found else None


def _values(blob):
    return len(blob.data) + len(blob.double_data)


def _learnable_sizes(net):
    """Value counts of a model's learnable parameters in Caffe's order: a parameter shared
    by name (the triplet streams) counts once, where it first appears."""
    seen, sizes = set(), []
    for layer in list(net.layer) + list(net.layers):
        for j, blob in enumerate(layer.blobs):
            spec = layer.param[j] if j < len(layer.param) else ""
            name = getattr(spec, "name", spec)   # V1 layers list the names as plain strings
            if name and name in seen:
                continue
            seen.add(name)
            sizes.append(_values(blob))
    return sizes


def check_snapshot(state, cwd=None):
    """None if the snapshot pair `state` (.solverstate) and its .caffemodel would load in
    Caffe, else what is wrong. Caffe itself aborts on a bad one ("Check failed:
    state.history_size() == history_.size()") without saying which file."""
    from caffe.proto import caffe_pb2
    from google.protobuf.message import DecodeError
    model = model_of(state)
    st, net = caffe_pb2.SolverState(), caffe_pb2.NetParameter()
    for path, msg, what in ((state, st, "solver state"), (model, net, "model")):
        try:
            with open(path, "rb") as f:
                msg.ParseFromString(f.read())
        except FileNotFoundError:
            return f"its {what} {os.path.basename(path)} is missing"
        except (DecodeError, RuntimeError, ValueError):
            return f"the {what} {os.path.basename(path)} is incomplete or corrupt (cut short while written?)"
    if st.iter != snapshot_iter(state):
        return f"the solver state records iteration {st.iter}, not {snapshot_iter(state)}"
    if st.learned_net:
        learned = st.learned_net if os.path.isabs(st.learned_net) else os.path.join(cwd or ".", st.learned_net)
        if not os.path.exists(learned):
            return f"the model it names, {st.learned_net}, is missing"
    sizes = _learnable_sizes(net)
    if not sizes:
        return f"the model {os.path.basename(model)} has no weights"
    history = [_values(h) for h in st.history]
    if len(history) != len(sizes):
        return (f"the solver state holds {len(history)} of the {len(sizes)} parameter histories "
                "(cut short while written?)")
    if history != sizes:
        return "the solver state's histories do not match the model's parameters"
    return None


def good_snapshot(prefix, cwd=None, say=print):
    """The newest snapshot pair (.solverstate) that loads, or None; each newer one that
    does not is named with the reason (and left in place)."""
    states = {snapshot_iter(p): p for p in glob.glob(f"{glob.escape(prefix)}_iter_*.solverstate")}
    models = {snapshot_iter(p): p for p in glob.glob(f"{glob.escape(prefix)}_iter_*.caffemodel")}
    for it in sorted(set(states) | set(models), reverse=True):
        if it not in states:
            say(f"skipping {models[it]}: its solver state was never written (stopped during the snapshot)")
            continue
        problem = check_snapshot(states[it], cwd)
        if problem is None:
            return states[it]
        say(f"skipping the snapshot {states[it]}: {problem}")
    return None


class LossIsNaN(MtdnetError):
    pass


class _Say:
    """Messages to the terminal that never fail: after a hangup the terminal is gone (EIO)."""
    def __init__(self, say):
        self.say, self.dead = say, False

    def __call__(self, text):
        if not self.dead:
            try:
                self.say(text)
            except OSError:
                self.dead = True


class _Progress:
    """A bar with the loss and an ETA on a terminal; plain lines every PLAIN_PROGRESS_STEP of the
    run otherwise (a redirected bar fills a file with redraws)."""
    def __init__(self, enabled, total, initial):
        self.total, self.start_it, self.t0 = total, initial, time.time()
        self.bar, self.plain = None, False
        self.next_line = initial
        self.loss = None
        if not enabled:
            return
        if sys.stderr.isatty():
            from tqdm import tqdm
            self.bar = tqdm(total=total, initial=initial, unit="it", dynamic_ncols=True, desc="caffe train")
        else:
            self.plain = True
            self._advance()

    def _advance(self):
        step = max(1, round(self.total * PLAIN_PROGRESS_STEP))
        self.next_line = (self.next_line // step + 1) * step

    def update(self, it, new_it, loss):
        try:
            if loss is not None:
                self.loss = loss
            if self.bar is not None:
                if new_it > it:
                    self.bar.update(new_it - it)
                if loss is not None:
                    self.bar.set_postfix(loss=f"{loss:.4f}")
            elif self.plain and new_it >= self.next_line:
                done, secs = new_it - self.start_it, time.time() - self.t0
                eta = (self.total - new_it) * secs / done if done > 0 else 0
                loss = f", loss {self.loss:.4f}" if self.loss is not None else ""
                print(f"caffe train: iteration {new_it}/{self.total}{loss}, {secs:.0f} s, "
                      f"about {eta:.0f} s left", file=sys.stderr, flush=True)
                while self.next_line <= new_it:
                    self._advance()
        except OSError:   # the terminal went away (hangup): training goes on without it
            self.bar, self.plain = None, False

    def close(self):
        if self.bar is not None:
            try:
                self.bar.close()
            except OSError:
                pass
            self.bar = None


NEWEST = "newest"


def train(solver, log_path, max_iter, snapshot_prefix, *, weights=None, snapshot=NEWEST,
          progress=True, extra_args=(), cwd=None, caffe=None, lock=None, say=print):
    """Run `caffe train`; return the final iteration reached.

    snapshot: the .solverstate to resume from (the caller's choice), NEWEST (the newest pair
    under `snapshot_prefix` that loads, chosen here), or None; without one it starts from
    `weights` (a caffemodel) or the fillers.
    The whole Caffe log is appended to `log_path`. `caffe`: the binary
    (default: the venv's, spec.Project.caffe); `cwd`: where it runs (the project root);
    `lock`: a core.locks.Lock Caffe inherits, so the run stays locked while Caffe lives.
    """
    cwd = cwd or Project().root
    say = _Say(say)
    args = [caffe or Project().caffe, "train", "-solver", solver, "-sighup_effect", "stop"]
    state = good_snapshot(snapshot_prefix, cwd, say) if snapshot == NEWEST else snapshot
    start_iter = 0
    if state:
        start_iter = snapshot_iter(state)
        if start_iter >= max_iter:
            return start_iter
        args += ["-snapshot", state]
    elif weights:
        args += ["-weights", weights]
    args += list(extra_args)
    os.makedirs(os.path.dirname(os.path.abspath(log_path)), exist_ok=True)

    bar = _Progress(progress, max_iter, start_iter)
    it = start_iter
    tail = collections.deque(maxlen=LOG_TAIL_LINES)
    proc = log_error = None
    snapshotting = failed_write = None
    interrupted = False
    try:
        log = open(log_path, "a", buffering=1)   # line-buffered: `tail -f` works
    except OSError as e:
        raise os_error(e, log_path) from None

    def record(line):
        nonlocal log_error, snapshotting, failed_write
        tail.append(line)
        if log_error is None:
            try:
                log.write(line)
            except OSError as e:   # a full disk: stop Caffe (it tries a snapshot)
                log_error = e
                _signal(proc, signal.SIGHUP)
        if caffelog.fatal(line) and snapshotting:
            failed_write = snapshotting   # Caffe aborted writing this file
        snapshotting = caffelog.snapshotting(line)

    record(f"### mtdnet: {' '.join(args)}\n")
    # Caffe's INFO lines are the run's record and our progress: never muted by the caller's
    # GLOG_minloglevel (the evaluation tools set it for pycaffe).
    env = dict(os.environ, GLOG_minloglevel="0")
    proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, errors="replace", bufsize=1, start_new_session=True,
                            preexec_fn=preexec_die_with_parent(), pass_fds=(lock.fd,) if lock else ())
    if lock:
        lock.add_pid(proc.pid)
    old = _stop_signals_interrupt()
    try:
        try:
            for line in proc.stdout:
                record(line)
                got = caffelog.progress(line)
                if not got:
                    continue
                new_it, loss = got
                bar.update(it, new_it, loss)
                it = max(it, new_it)
                if loss is not None and not math.isfinite(loss):
                    _signal(proc, signal.SIGKILL)
                    proc.wait()
                    good = latest_snapshot(snapshot_prefix, "caffemodel")
                    raise LossIsNaN(
                        f"{log_path}: the training loss became {loss} at iteration {new_it}; "
                        f"stopped. Last good snapshot: {good or 'none (no snapshot yet)'}. "
                        "Lower base_lr or check the data.")
        except KeyboardInterrupt:
            interrupted = True
            bar.close()
            # Another Ctrl-C / kill while Caffe writes its snapshot would only lose it.
            for sig in STOP_SIGNALS:
                _set_handler(sig, signal.SIG_IGN)
            say("stopping: Caffe finishes its iteration and writes a snapshot ...")
            _signal(proc, signal.SIGHUP)   # Caffe snapshots and stops (-sighup_effect stop)
            for line in proc.stdout:
                record(line)
    finally:
        bar.close()
        rc = proc.wait()
        for sig, handler in old.items():
            _set_handler(sig, handler)
        try:
            log.close()
        except OSError as e:
            log_error = log_error or e
    if rc != 0 and failed_write:
        _snapshot_write_failed(os.path.join(cwd, failed_write), os.path.join(cwd, snapshot_prefix),
                               "".join(tail).strip().splitlines()[-1:], log_path)
    if log_error is not None:
        raise os_error(log_error, log_path, " while writing Caffe's log; Caffe was stopped with a snapshot "
                                            f"(newest: {latest_snapshot(snapshot_prefix)})")
    if interrupted:
        snap = latest_snapshot(snapshot_prefix)
        # The snapshot's iteration: Caffe finishes the iterations it began after our last
        # progress line before it snapshots.
        where = f"interrupted at iteration {snapshot_iter(snap)}; snapshot {snap}" if snap else \
            f"interrupted at iteration {it}, before the first snapshot"
        raise MtdnetError(f"{where}. Run the same command again to resume.")
    if rc != 0:
        text = "".join(tail)
        if caffelog.cpu_only(text):
            raise MtdnetError(f"{solver}: solver_mode GPU, but this Caffe is a CPU-only build; "
                              "leave GPU out, or build the GPU variant with `make setup CUDA=1`")
        if rc in (-signal.SIGKILL, -signal.SIGTERM):   # killed from outside; a CHECK failure aborts (SIGABRT)
            name = signal.Signals(-rc).name
            why = " (the kernel's out-of-memory killer sends it: see `dmesg`)" if -rc == signal.SIGKILL else ""
            snap = latest_snapshot(snapshot_prefix)
            raise MtdnetError(f"caffe train was killed by {name}{why} at iteration {it}; newest snapshot: "
                              f"{snap or 'none yet'}. The same command resumes from it (the log is {log_path})")
        raise MtdnetError(f"caffe train failed (exit {rc}); the log is {log_path}:\n" + text)
    final = latest_snapshot(snapshot_prefix, "caffemodel")
    return snapshot_iter(final) if final else it


def _snapshot_write_failed(path, prefix, last_lines, log_path):
    """Caffe aborted while writing the snapshot file `path`: remove what it left (only a file of
    this run's snapshot series) and say why, with the newest snapshot that is complete."""
    free = free_bytes(path)
    ours = os.path.dirname(os.path.abspath(path)) == os.path.dirname(os.path.abspath(prefix)) and \
        os.path.basename(path).startswith(os.path.basename(prefix) + "_iter_")
    removed = ""
    if ours and os.path.exists(path):
        os.unlink(path)
        removed = "; the partial file was removed"
    good = latest_snapshot(prefix)
    why = "No space left on device" if free is not None and free < FULL_DISK_BYTES else \
        f"Caffe could not write it ({' '.join(last_lines)})"
    room = f" ({free / 1e6:.1f} MB free there)" if free is not None else ""
    raise MtdnetError(f"{path}: {why}{room} while Caffe wrote the snapshot{removed}. Newest complete "
                      f"snapshot: {good or 'none'}. Free some space and run the same command again to "
                      f"resume (the log is {log_path}).")


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def _set_handler(sig, handler):
    try:
        return signal.signal(sig, handler)
    except ValueError:   # not the main thread: signals stay as they are
        return None


def _stop_signals_interrupt():
    """SIGTERM and SIGHUP -> KeyboardInterrupt while Caffe runs (Ctrl-C already is);
    returns the old handlers."""
    old = {}
    for sig in (signal.SIGTERM, signal.SIGHUP):
        h = _set_handler(sig, _raise_interrupt)
        if h is not None:
            old[sig] = h
    old.setdefault(signal.SIGINT, signal.getsignal(signal.SIGINT))
    return old


def _signal(proc, sig):
    if proc is None:
        return
    try:
        proc.send_signal(sig)
    except ProcessLookupError:
        pass
