"""Drive the `caffe train` binary: resume, progress with ETA, NaN stop, Ctrl-C snapshot.

The run is exactly what `caffe train -solver <run>/solver.prototxt` does by
hand; this module only watches Caffe's log. Caffe runs in its own process
group so that a terminal Ctrl-C reaches only us: the embedded Python of our
layers would otherwise turn SIGINT into a KeyboardInterrupt inside a layer and
abort Caffe without a snapshot. We forward it as SIGHUP with
`-sighup_effect stop`, which makes Caffe snapshot and exit cleanly. SIGTERM
(`kill`, a job scheduler) takes the same path, so Caffe never outlives us.
"""
import glob
import math
import os
import re
import signal
import subprocess

from mtdnet import caffelog
from spec import MtdnetError, Project


def snapshot_iter(path):
    m = re.search(r"_iter_(\d+)\.(?:solverstate|caffemodel)(?:\.h5)?$", path)
    return int(m.group(1)) if m else -1


def snapshots(prefix, ext="caffemodel"):
    """Every non-empty `<prefix>_iter_N.<ext>`, by iteration."""
    return sorted((p for p in glob.glob(f"{glob.escape(prefix)}_iter_*.{ext}") if os.path.getsize(p) > 0),
                  key=snapshot_iter)


def latest_snapshot(prefix, ext="solverstate"):
    """The newest `<prefix>_iter_N.<ext>` whose files are complete, or None.

    Caffe writes the .caffemodel first and the .solverstate second, so a
    solverstate that exists names a complete pair unless it is empty
    (killed mid-write): such files are skipped.
    """
    found = snapshots(prefix, ext)
    if ext == "solverstate":
        found = [p for p in found if os.path.exists(p[:-len("solverstate")] + "caffemodel")]
    return max(found, key=snapshot_iter) if found else None


class LossIsNaN(MtdnetError):
    pass


def train(solver, log_path, max_iter, snapshot_prefix, weights=None, resume=True,
          progress=True, extra_args=(), cwd=None, caffe=None):
    """Run `caffe train`; return the final iteration reached.

    Resumes from the newest complete snapshot under `snapshot_prefix` when
    `resume`; otherwise starts from `weights` (a caffemodel) or the fillers.
    The whole Caffe log is appended to `log_path`. `caffe`: the binary
    (default: the venv's, spec.Project.caffe); `cwd`: where it runs (the project root).
    """
    args = [caffe or Project().caffe, "train", "-solver", solver, "-sighup_effect", "stop"]
    state = latest_snapshot(snapshot_prefix) if resume else None
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

    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=max_iter, initial=start_iter, unit="it", dynamic_ncols=True,
                   desc="caffe train")
    it = start_iter
    with open(log_path, "a", buffering=1) as log:  # line-buffered: `tail -f` works
        log.write(f"### mtdnet: {' '.join(args)}\n")
        log.flush()
        proc = subprocess.Popen(args, cwd=cwd or Project().root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, bufsize=1, start_new_session=True)
        interrupted = False
        old_term = _term_as_interrupt()
        try:
            for line in proc.stdout:
                log.write(line)
                got = caffelog.progress(line)
                if got:
                    new_it, loss = got
                    if bar is not None and new_it > it:
                        bar.update(new_it - it)
                    it = max(it, new_it)
                    if loss is not None:
                        if not math.isfinite(loss):
                            log.flush()
                            _stop(proc, signal.SIGKILL)
                            good = latest_snapshot(snapshot_prefix, "caffemodel")
                            raise LossIsNaN(
                                f"{log_path}: the training loss became {loss} at iteration {new_it}; "
                                f"stopped. Last good snapshot: {good or 'none (no snapshot yet)'}. "
                                "Lower base_lr or check the data.")
                        if bar is not None:
                            bar.set_postfix(loss=f"{loss:.4f}")
        except KeyboardInterrupt:
            interrupted = True
            # Caffe snapshots and stops on SIGHUP (-sighup_effect stop).
            proc.send_signal(signal.SIGHUP)
            for line in proc.stdout:
                log.write(line)
        finally:
            if old_term is not None:
                signal.signal(signal.SIGTERM, old_term)
            if bar is not None:
                bar.close()
            rc = proc.wait()
            log.flush()
    if interrupted:
        snap = latest_snapshot(snapshot_prefix)
        raise MtdnetError(f"interrupted at iteration {it}; snapshot {snap}. "
                          "Run the same command again to resume.")
    if rc != 0:
        raise MtdnetError(f"caffe train failed (exit {rc}); the log is {log_path}:\n"
                          + _tail(log_path))
    final = latest_snapshot(snapshot_prefix, "caffemodel")
    return snapshot_iter(final) if final else it


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def _term_as_interrupt():
    """SIGTERM -> KeyboardInterrupt while Caffe runs; returns the old handler (None off the main thread)."""
    try:
        return signal.signal(signal.SIGTERM, _raise_interrupt)
    except ValueError:
        return None


def _stop(proc, sig):
    try:
        proc.send_signal(sig)
    except ProcessLookupError:
        pass
    proc.wait()


def _tail(path, n=15):
    with open(path, errors="replace") as f:
        lines = f.readlines()[-n:]
    return "".join(lines)
