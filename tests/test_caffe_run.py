"""The `caffe train` driver: resume after a kill, Ctrl-C leaves a snapshot, NaN stops with a message."""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from core import REPO_ROOT
from mtdnet import caffe_run
from tests.helpers import make_image_lmdb, toy_net_text, toy_solver_text, wait_for

S = 24  # image side: big enough that iterations take a little time


@pytest.fixture
def toy_run(tmp_path):
    make_image_lmdb(str(tmp_path / "images.lmdb"), 16, S)
    trip = np.array([[i, (i + 1) % 16, (i + 2) % 16] for i in range(16)], np.int32)
    np.save(tmp_path / "trip.npy", trip)
    net = tmp_path / "net.prototxt"
    net.write_text(toy_net_text(str(tmp_path / "images.lmdb"), str(tmp_path / "trip.npy"), 4, 64))
    (tmp_path / "snaps").mkdir()

    def solver(max_iter, snapshot=0, base_lr=1e-9, display=1):
        p = tmp_path / f"solver_{max_iter}_{snapshot}_{base_lr}.prototxt"
        p.write_text(toy_solver_text(str(net), str(tmp_path / "snaps" / "toy"), max_iter, base_lr,
                                     snapshot, display))
        return str(p)
    return tmp_path, solver


def _driver(solver, log, max_iter, prefix):
    """Run caffe_run.train in a child Python, as `make train` does."""
    code = ("import sys; from mtdnet import caffe_run; from mtdnet.cli import cli_main; "
            f"cli_main(lambda: print('FINAL', caffe_run.train({solver!r}, {log!r}, {max_iter}, {prefix!r}, "
            "progress=False)))")
    # As from a terminal: a shell's background job (`make test &`) starts with SIGINT ignored,
    # which the child would inherit and Ctrl-C could not reach it.
    return subprocess.Popen([sys.executable, "-c", code], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def test_train_runs_to_max_iter_and_resumes_after_a_kill(toy_run):
    tmp, solver = toy_run
    prefix = str(tmp / "snaps" / "toy")
    log = str(tmp / "train.log")
    big = 10 ** 7
    s = solver(big, snapshot=50)
    p = _driver(s, log, big, prefix)
    assert wait_for(lambda: caffe_run.latest_snapshot(prefix) is not None, 120)
    # A hard kill of the driver, as a crash or OOM would do: Caffe gets SIGHUP from the
    # kernel, writes a snapshot where it is and stops (tests/test_faults.py checks that).
    p.kill()
    p.wait()
    assert wait_for(lambda: not subprocess.run(["pgrep", "-f", s], capture_output=True).stdout, 60)
    first = caffe_run.latest_snapshot(prefix)
    k = caffe_run.snapshot_iter(first)
    assert k >= 50
    # Same command again with a reachable max_iter: resumes from that snapshot.
    target = k + 20
    s2 = solver(target, snapshot=50)
    it = caffe_run.train(s2, log, target, prefix, progress=False)
    assert it == target
    text = open(log).read()
    assert f"Resuming from {first}" in text
    assert os.path.exists(f"{prefix}_iter_{target}.caffemodel")
    # Already done: nothing to run.
    assert caffe_run.train(s2, log, target, prefix, progress=False) == target


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_stops_with_a_snapshot(toy_run, sig):
    """Ctrl-C or kill: Caffe snapshots and stops, and does not outlive the driver."""
    tmp, solver = toy_run
    prefix = str(tmp / "snaps" / "toy")
    log = str(tmp / "train.log")
    big = 10 ** 7
    p = _driver(solver(big, snapshot=0), log, big, prefix)
    try:
        assert wait_for(lambda: os.path.exists(log) and "Iteration 5," in open(log).read(), 120)
        p.send_signal(sig)
        out, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:   # a failed check leaves no training running (its Caffe follows)
            p.kill()
            p.wait()
    assert p.returncode == 1, err
    assert "interrupted at iteration" in err and "resume" in err
    snap = caffe_run.latest_snapshot(prefix)
    assert snap is not None and caffe_run.snapshot_iter(snap) >= 5
    assert "Optimization stopped early" in open(log).read()
    left = subprocess.run(["pgrep", "-f", str(tmp)], capture_output=True, text=True).stdout.split()
    assert not left, f"caffe still running: {left}"


def test_nan_loss_stops_with_a_clear_message(toy_run):
    tmp, solver = toy_run
    prefix = str(tmp / "snaps" / "toy")
    log = str(tmp / "train.log")
    # A huge learning rate on an unbounded quadratic loss diverges to inf/NaN.
    s = solver(100000, snapshot=2, base_lr=1e6)
    t0 = time.time()
    with pytest.raises(caffe_run.LossIsNaN) as e:
        caffe_run.train(s, log, 100000, prefix, progress=False)
    msg = str(e.value)
    assert "became" in msg and "Last good snapshot" in msg and log in msg
    good = caffe_run.latest_snapshot(prefix, "caffemodel")
    assert good is not None and good in msg
    assert time.time() - t0 < 300  # stopped, not run to max_iter


def test_failed_caffe_names_the_log(toy_run, tmp_path):
    _, solver = toy_run
    bad = tmp_path / "bad_solver.prototxt"
    bad.write_text(open(solver(10)).read().replace("net.prototxt", "missing.prototxt"))
    with pytest.raises(caffe_run.MtdnetError) as e:
        caffe_run.train(str(bad), str(tmp_path / "t.log"), 10, str(tmp_path / "snaps" / "x"), progress=False)
    assert "caffe train failed" in str(e.value) and "t.log" in str(e.value)
