"""Faults a user meets, each reproduced for real, and what the product does about them.

- a folder the user named is never replaced (make data DATA_ROOT=<their VIPeR>, DATA_ROOT=.);
- a truncated newest .solverstate: resume skips it, says which, uses the newest good one;
- a full disk (a small tmpfs in a private mount namespace) during a Caffe snapshot,
  synthetic generation and the evaluation's pictures: one line naming the file, nothing partial;
- kill -9 and SIGHUP of the training driver: Caffe stops with a snapshot, never outlives it;
- two commands on one run or one data folder: the second stops at once, "already running (pid N)";
- WEIGHTS on a run that has snapshots, and a fine-tune source lacking layers: errors;
- Makefile values with quotes, backticks and $ reach the tools intact, never as shell code;
- ITERS=0, a smaller ITERS on a finished run, GPU=1 on a CPU-only build, train_seconds over
  resumed parts, redirected progress, `make help`.
"""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from core import REPO_ROOT, MtdnetError, Project, Run
from core.locks import lock_path
from mtdnet import caffe_run, training
from tests import fixtures as F
from tests.helpers import (make_image_lmdb, make_model, prepare_synthetic, run_caffe, toy_net_text,
                           toy_solver_text, wait_for)

PY = sys.executable
BIG = 10 ** 6        # iterations of a run that only a signal ends
STOP_WITHIN = 60     # seconds Caffe may take to write its snapshot and stop


def tool(name, *args, timeout=300):
    return subprocess.run([PY, f"tools/{name}.py", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=timeout)


def one_line_error(p):
    """The command failed with exit status 1 and one line `error: ...`, no traceback."""
    assert p.returncode == 1, p.stdout[-2000:] + p.stderr[-2000:]
    assert "Traceback" not in p.stderr, p.stderr
    errors = [x for x in p.stderr.splitlines() if x.startswith("error: ")]
    assert len(errors) == 1, p.stderr
    return errors[0]


def alive(pid):
    """Running (a zombie nobody reaped yet counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def listing(d):
    return sorted(os.path.relpath(os.path.join(r, f), d) for r, _, fs in os.walk(d) for f in fs)


# ---------------------------------------------------------------- small disks

def _namespace():
    return ["unshare", "-m"] if os.geteuid() == 0 else ["unshare", "-r", "-m"]


# Mount a tmpfs of size $1 at $2 in a private mount namespace (nobody else sees it),
# run the rest, then list what is left on it after the marker line.
_SMALL_DISK = ('mount -t tmpfs -o size="$1" tmpfs "$2" || exit 99; m="$2"; shift 2; "$@"; rc=$?; '
               'echo "LEFT:"; find "$m" -mindepth 1 -printf "%P\\n"; exit $rc')


def _small_disk_works():
    try:
        p = subprocess.run(_namespace() + ["sh", "-c", _SMALL_DISK, "sh", "64k", "/mnt", "true"],
                           capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return p.returncode == 0


needs_small_disk = pytest.mark.skipif(not _small_disk_works(),
                                      reason="cannot mount a tmpfs in a private mount namespace (unshare -m)")


def on_small_disk(mount, size, argv, timeout=300):
    """Run argv with a `size` tmpfs at `mount`; returns (CompletedProcess, files left on it)."""
    os.makedirs(mount, exist_ok=True)
    p = subprocess.run(_namespace() + ["sh", "-c", _SMALL_DISK, "sh", size, str(mount)] + list(argv),
                       cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)
    assert p.returncode != 99, "could not mount the tmpfs: " + p.stderr
    out, _, left = p.stdout.rpartition("LEFT:\n")
    return subprocess.CompletedProcess(p.args, p.returncode, out, p.stderr), left.split()


# ---------------------------------------------------------------- shared data

@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A 16-person synthetic set prepared at the tiny profile: <root>/data."""
    return prepare_synthetic(str(tmp_path_factory.mktemp("faults")))


@pytest.fixture
def toy(tmp_path):
    """A small Caffe run (our data layer, an InnerProduct, a Python loss): solver(max_iter, snapshot, prefix)."""
    make_image_lmdb(str(tmp_path / "images.lmdb"), 16, 24)
    np.save(tmp_path / "trip.npy", np.array([[i, (i + 1) % 16, (i + 2) % 16] for i in range(16)], np.int32))
    net = tmp_path / "net.prototxt"
    net.write_text(toy_net_text(str(tmp_path / "images.lmdb"), str(tmp_path / "trip.npy"), 4, 64))

    def solver(max_iter, snapshot, prefix):
        p = tmp_path / f"solver_{max_iter}.prototxt"
        p.write_text(toy_solver_text(str(net), str(prefix), max_iter, 1e-9, snapshot, 5))
        return str(p)
    return solver


def train_cli(data, runs, *extra):
    return [PY, "tools/train.py", "--dataset", "synthetic", "--profile", "tiny", "--data-dir", data,
            "--runs-dir", str(runs), *extra]


def start_command(argv, runs, env=None):
    """Start a command that trains the tiny synthetic MTDnet run under `runs`, until a signal;
    waits until Caffe trains. Returns (Popen, the driver's pid, Caffe's pid, run dir)."""
    p = subprocess.Popen(argv, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    run = os.path.join(runs, "synthetic-mtdnet-tiny")
    log = os.path.join(run, "train.log")
    assert wait_for(lambda: os.path.exists(log) and "Iteration 10," in open(log).read(), 120), \
        p.stderr.read() if p.poll() is not None else "no progress"
    with open(lock_path(run)) as f:
        driver, caffe = [int(x) for x in f.read().split()]
    return p, driver, caffe, run


def start_training(data, runs, *extra):
    """tools/train.py (the driver itself): (driver Popen, Caffe's pid, run dir)."""
    p, driver, caffe, run = start_command(train_cli(data, runs, "--iters", str(BIG), *extra), runs)
    assert driver == p.pid
    return p, caffe, run


def stop(p):
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
    return p.communicate(timeout=STOP_WITHIN + 30)


# ---------------------------------------------------------------- 1. a user's folders

def test_make_data_never_replaces_a_folder_it_did_not_make(tmp_path):
    """DATA_ROOT=<the user's VIPeR> with DATASET left at synthetic, and DATA_ROOT=. (a checkout)."""
    viper = F.write_viper(tmp_path / "VIPeR", range(1, 5))
    (viper / "notes.txt").write_text("mine")
    checkout = tmp_path / "checkout"
    (checkout / ".git").mkdir(parents=True)
    (checkout / "README.md").write_text("mine too")
    for root in (viper, checkout):
        before = {f: open(os.path.join(root, f), "rb").read() for f in listing(root)}
        p = tool("prepare_data", "--profile", "tiny", "--data-root", str(root), "--data-dir",
                 str(tmp_path / "data"), "--no-progress")
        err = one_line_error(p)
        assert err.startswith(f"error: {root}: not empty and not made by this project; refusing")
        assert "DATASET=" in err      # says what to do instead
        assert {f: open(os.path.join(root, f), "rb").read() for f in listing(root)} == before
        assert sorted(os.listdir(tmp_path)) == ["VIPeR", "checkout"]   # no lock file, no data

    # An empty folder is filled; a folder it made is regenerated with other parameters.
    empty = tmp_path / "new"
    empty.mkdir()
    for ids in (12, 14):
        p = tool("prepare_data", "--profile", "tiny", "--data-root", str(empty), "--synthetic-ids", str(ids),
                 "--synthetic-test", "4", "--data-dir", str(tmp_path / "data"), "--no-progress")
        assert p.returncode == 0, p.stderr
        assert json.load(open(empty / "synthetic.json"))["num_ids"] == ids


def test_a_prepared_data_name_holding_other_files_is_not_replaced(tmp_path):
    root = F.write_viper(tmp_path / "VIPeR", range(1, 13))
    mine = tmp_path / "data" / "viper-tiny-random0"
    mine.mkdir(parents=True)
    (mine / "results.csv").write_text("keep me")
    p = tool("prepare_data", "--dataset", "viper", "--data-root", str(root), "--profile", "tiny", "--split",
             "random0", "--num-test", "4", "--data-dir", str(tmp_path / "data"), "--no-progress")
    assert one_line_error(p).startswith(f"error: {mine}: not empty and not made by this project")
    assert listing(mine) == ["results.csv"] and sorted(os.listdir(tmp_path / "data")) == ["viper-tiny-random0"]


# ---------------------------------------------------------------- 2. snapshots and full disks

@pytest.mark.parametrize("cut", ["mid-blob", "at-a-blob-boundary"])
def test_resume_skips_a_truncated_solverstate(toy, tmp_path, cut):
    from caffe.proto import caffe_pb2
    prefix = tmp_path / "snaps" / "toy"
    prefix.parent.mkdir()
    log = str(tmp_path / "train.log")
    assert caffe_run.train(toy(20, 10, prefix), log, 20, str(prefix), progress=False) == 20
    newest = f"{prefix}_iter_20.solverstate"
    raw = open(newest, "rb").read()
    if cut == "mid-blob":
        raw = raw[:len(raw) // 2]
    else:   # what a full disk leaves when it strikes between two parameter histories
        st = caffe_pb2.SolverState()
        st.ParseFromString(raw)
        del st.history[-1]
        raw = st.SerializeToString()
    open(newest, "wb").write(raw)
    # The fault: Caffe aborts on it without naming the file.
    rc, out = run_caffe(["train", "-solver", toy(30, 10, prefix), "-snapshot", newest], cwd=str(tmp_path))
    assert rc != 0 and "Check failed" in out

    said = []
    assert caffe_run.train(toy(30, 10, prefix), log, 30, str(prefix), progress=False, say=said.append) == 30
    assert len(said) == 1 and said[0].startswith(f"skipping the snapshot {newest}: ")
    assert ("incomplete or corrupt" if cut == "mid-blob" else "holds 1 of the 2 parameter histories") in said[0]
    assert f"Resuming from {prefix}_iter_10.solverstate" in open(log).read()
    assert caffe_run.check_snapshot(f"{prefix}_iter_30.solverstate") is None


@needs_small_disk
def test_disk_full_during_a_snapshot_names_the_file_and_leaves_nothing_partial(toy, tmp_path):
    disk = tmp_path / "disk"
    prefix = disk / "toy"
    code = ("from mtdnet import caffe_run; from mtdnet.cli import cli_main; "
            f"cli_main(lambda: caffe_run.train({toy(40, 10, prefix)!r}, {str(tmp_path / 'train.log')!r}, 40, "
            f"{str(prefix)!r}, progress=False))")
    # One snapshot pair (a 443 kB model, its 443 kB solver state) fits; the second does not.
    p, left = on_small_disk(disk, "1200k", [PY, "-c", code])
    err = one_line_error(p)
    assert err.startswith(f"error: {prefix}_iter_20.caffemodel: No space left on device")
    assert f"Newest complete snapshot: {prefix}_iter_10.solverstate" in err
    assert left == ["toy_iter_10.caffemodel", "toy_iter_10.solverstate"] or \
        sorted(left) == ["toy_iter_10.caffemodel", "toy_iter_10.solverstate"]
    assert "Check failed: proto.SerializeToOstream" in open(tmp_path / "train.log").read()


@needs_small_disk
def test_disk_full_while_generating_the_synthetic_set(tmp_path):
    disk = tmp_path / "disk"
    p, left = on_small_disk(disk, "256k", [PY, "tools/prepare_data.py", "--profile", "tiny", "--data-root",
                                           str(disk / "synthetic"), "--data-dir", str(tmp_path / "data"),
                                           "--no-progress"])
    err = one_line_error(p)
    assert "No space left on device" in err and f"while generating the synthetic dataset in {disk}" in err
    assert left == []                     # no partial folder, no truncated image, no lock file
    assert not os.path.exists(tmp_path / "data")


@needs_small_disk
@pytest.mark.parametrize("size, said", [("200k", "needs at least 0.3 MB (24 images at 63x63); 0.2 MB free"),
                                        ("300k", "No space left on device")])
def test_disk_full_while_writing_the_lmdb_names_the_output(tmp_path, size, said):
    root = F.write_viper(tmp_path / "VIPeR", range(1, 13))
    disk = tmp_path / "disk"
    p, left = on_small_disk(disk, size, [PY, "tools/prepare_data.py", "--dataset", "viper", "--data-root",
                                         str(root), "--profile", "tiny", "--split", "random0", "--num-test", "4",
                                         "--data-dir", str(disk), "--no-progress"])
    err = one_line_error(p)
    assert err.startswith(f"error: {disk / 'viper-tiny-random0'}") and said in err, err
    assert "partial" not in err and "Input/output error" not in err.split("LMDB said")[0]
    assert left == []                     # no partial folder, no lock file


@needs_small_disk
def test_disk_full_while_drawing_the_evaluation_pictures(data, tmp_path):
    model = make_model(str(tmp_path / "m" / "mtdnet.caffemodel"), data)
    results = tmp_path / "runs" / "synthetic-trp-tiny"
    # The numbers (a few kB) and the CMC picture (~40 kB) fit; the ranked gallery (~700 kB) does not.
    p, left = on_small_disk(results, "200k", [PY, "tools/evaluate.py", "--dataset", "synthetic", "--variant",
                                              "trp", "--profile", "tiny", "--model", model, "--data-dir", data,
                                              "--runs-dir", str(tmp_path / "runs"), "--no-progress"])
    err = one_line_error(p)
    assert err.startswith(f"error: {results / 'ranked-paper.png'}: No space left on device")
    assert left == [], left       # nothing of this evaluation: no numbers without their pictures


# ---------------------------------------------------------------- 3. Caffe dies with its driver

def test_kill_9_of_the_driver_stops_caffe_with_a_snapshot(data, tmp_path):
    p, caffe, run = start_training(data, tmp_path / "runs", "--no-progress")
    p.kill()                                            # SIGKILL: the OOM killer, kill -9
    p.communicate()
    assert wait_for(lambda: not alive(caffe), STOP_WITHIN), "caffe outlived its driver"
    snap = caffe_run.latest_snapshot(os.path.join(run, "snapshots", "synthetic_mtdnet"))
    k = caffe_run.snapshot_iter(snap)
    assert k >= 10 and caffe_run.check_snapshot(snap, REPO_ROOT) is None
    # The same command resumes from it.
    r = subprocess.run(train_cli(data, tmp_path / "runs", "--iters", str(k + 10), "--no-progress"),
                       cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert f"resuming from {snap}" in r.stdout and "10 iterations to go: about" in r.stdout
    assert json.load(open(os.path.join(run, "run.json")))["iterations"] == k + 10


def test_kill_9_of_make_stops_the_driver_and_caffe_with_a_snapshot(data, tmp_path):
    runs = tmp_path / "runs"
    p, driver, caffe, run = start_command(["make", "-s", "train", "PROFILE=tiny", f"ITERS={BIG}",
                                           f"TRAIN_ARGS=--data-dir {data} --runs-dir {runs} --no-progress"],
                                          runs, env=dict(os.environ, MAKEFLAGS=""))
    assert driver != p.pid and alive(driver)       # make -> the driver (exec'd by the recipe) -> Caffe
    p.kill()                                       # kill -9 of make itself: it cannot stop its children
    p.communicate()
    assert wait_for(lambda: not alive(driver) and not alive(caffe), STOP_WITHIN), "training outlived make"
    snap = caffe_run.latest_snapshot(os.path.join(run, "snapshots", "synthetic_mtdnet"))
    assert caffe_run.snapshot_iter(snap) >= 10 and caffe_run.check_snapshot(snap, REPO_ROOT) is None


def test_caffe_killed_outright_says_so_and_how_to_resume(data, tmp_path):
    p, caffe, run = start_training(data, tmp_path / "runs", "--no-progress")
    os.kill(caffe, signal.SIGKILL)                      # what the out-of-memory killer does
    out, err = p.communicate(timeout=STOP_WITHIN + 30)
    e = one_line_error(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    assert "caffe train was killed by SIGKILL (the kernel's out-of-memory killer sends it" in e
    assert "The same command resumes from it" in e and "newest snapshot: " in e


def test_ctrl_c_of_a_hand_run_caffe_train_is_quiet(data, tmp_path):
    """`caffe train -solver ...` typed by hand, then Ctrl-C (SIGINT to the whole foreground
    group): Caffe snapshots; its prefetch workers end without glog's SIGTERM stack traces."""
    run = Run.create("synthetic", "mtdnet", "tiny", overrides=["prefetch_workers=2"],
                     project=Project(root=str(tmp_path), data_dir=data))
    training.prepare(run, iters=BIG)
    p = subprocess.Popen([Project().caffe, "train", "-solver", run.solver], cwd=str(tmp_path),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    seen = []
    for line in p.stdout:
        seen.append(line)
        if "Iteration 10," in line:
            break
    os.killpg(p.pid, signal.SIGINT)
    out = "".join(seen) + p.communicate(timeout=STOP_WITHIN)[0]
    assert "Optimization stopped early" in out, out[-3000:]
    assert "SIGTERM" not in out and "stack trace" not in out, out[-3000:]
    assert caffe_run.check_snapshot(caffe_run.latest_snapshot(run.snapshot_prefix), str(tmp_path)) is None


def test_sighup_stops_like_ctrl_c_and_the_time_adds_up(data, tmp_path):
    # Progress on: stderr is a pipe here, as when the output is redirected to a file.
    p, caffe, run = start_training(data, tmp_path / "runs")
    p.send_signal(signal.SIGHUP)                        # the terminal closed, ssh dropped
    out, err = p.communicate(timeout=STOP_WITHIN + 30)
    assert p.returncode == 1 and "interrupted at iteration" in err and "resume" in err, err
    assert not alive(caffe)
    assert "Optimization stopped early" in open(os.path.join(run, "train.log")).read()
    first = json.load(open(os.path.join(run, "run.json")))
    k = first["iterations"]
    assert k >= 10 and first["train_seconds"] > 0
    assert first["model"].endswith(f"_iter_{k}.caffemodel")
    said = next(x for x in err.splitlines() if "interrupted at iteration" in x)
    assert f"interrupted at iteration {k}; snapshot " in said and f"_iter_{k}.solverstate" in said, said

    r = subprocess.run(train_cli(data, tmp_path / "runs", "--iters", str(k + 20)), cwd=REPO_ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    second = json.load(open(os.path.join(run, "run.json")))
    assert second["iterations"] == k + 20 and second["train_seconds"] > first["train_seconds"]
    # Redirected progress: plain lines, no bar redraws.
    assert "caffe train: iteration" in r.stderr and "\r" not in r.stderr


# ---------------------------------------------------------------- 4. one command at a time

def test_a_second_train_of_the_same_run_stops_at_once(data, tmp_path):
    p, caffe, run = start_training(data, tmp_path / "runs", "--no-progress")
    try:
        t0 = time.time()
        r = subprocess.run(train_cli(data, tmp_path / "runs", "--iters", "50", "--no-progress"),
                           cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
        err = one_line_error(r)
        assert f"runs/synthetic-mtdnet-tiny: make train already running (pid {p.pid})" in err, err
        assert time.time() - t0 < 30 and alive(caffe)
        assert open(os.path.join(run, "train.log")).read().count("### mtdnet:") == 1
    finally:
        stop(p)
    assert p.returncode == 1 and not alive(caffe)


def test_a_second_make_data_of_the_same_output_stops_at_once(tmp_path):
    root = F.write_viper(tmp_path / "VIPeR", range(1, 13))
    # The first command blocks on this image (a named pipe) while it builds, holding its work folder.
    img = root / "cam_b" / "012_90.bmp"
    content = img.read_bytes()
    img.unlink()
    os.mkfifo(img)
    args = ("prepare_data.py", "--dataset", "viper", "--data-root", str(root), "--profile", "tiny", "--split",
            "random0", "--num-test", "4", "--data-dir", str(tmp_path / "data"), "--no-progress")
    first = subprocess.Popen([PY, "tools/" + args[0], *args[1:]], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        work = lambda: [n for n in os.listdir(tmp_path / "data") if n.startswith(".viper-tiny-random0.partial-")]
        assert wait_for(lambda: os.path.isdir(tmp_path / "data") and work(), 60)
        second = tool(*[a.replace(".py", "") if i == 0 else a for i, a in enumerate(args)])
        err = one_line_error(second)
        assert f"make data already running (pid {first.pid})" in err, err
        assert work(), "the second command removed the first one's work folder"
    finally:
        with open(img, "wb") as f:      # lets the first command go on
            f.write(content)
    out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert "viper-tiny-random0: 12 identities" in out
    assert sorted(os.listdir(tmp_path / "data")) == ["viper-tiny-random0"]


# ---------------------------------------------------------------- 5. initial weights

def _project(data, tmp_path):
    return Project(root=str(tmp_path), data_dir=data, runs_dir=str(tmp_path / "runs"))


def test_weights_on_a_run_with_snapshots_needs_restart(data, tmp_path, capsys):
    run = Run.create("synthetic", "mtdnet", "tiny", project=_project(data, tmp_path))
    training.train(run, iters=10, progress=False)
    other = make_model(str(tmp_path / "other" / "mtdnet.caffemodel"), data, seed=3)
    before = listing(run.snapshot_dir)
    with pytest.raises(MtdnetError, match="it would resume and ignore WEIGHTS=.*RESTART=1"):
        training.train(run, iters=20, weights=other, progress=False)
    assert listing(run.snapshot_dir) == before
    # A restart that cannot start (a source lacking MTDnet's layers) puts the earlier run back.
    rnk = make_model(str(tmp_path / "rnk" / "rnk.caffemodel"), data, variant="rnk")
    with pytest.raises(MtdnetError, match="has no layer"):
        training.train(run, iters=20, weights=rnk, progress=False, restart=True)
    assert listing(run.snapshot_dir) == before and not [n for n in os.listdir(run.dir) if "previous" in n]
    info = training.train(run, iters=20, weights=other, progress=False, restart=True)
    assert info["init"] == "fine-tuned from other/mtdnet.caffemodel" and info["iterations"] == 20
    assert info["init_kind"] == "finetune"
    assert info["weights"] == "other/mtdnet.caffemodel"   # project-relative: the same record on any machine
    aside = [n for n in os.listdir(run.dir) if n.startswith("previous-")]
    assert len(aside) == 1 and listing(os.path.join(run.dir, aside[0], "snapshots")) == before
    # The same WEIGHTS again (the command re-run after a Ctrl-C) resumes.
    info = training.train(run, iters=30, weights=other, progress=False)
    assert info["iterations"] == 30 and "resuming from" in capsys.readouterr().out


def test_a_fine_tune_source_must_hold_every_layer_the_variant_trains(data, tmp_path):
    rnk = make_model(str(tmp_path / "rnk" / "rnk.caffemodel"), data, variant="rnk")
    # The fault: Caffe fine-tunes the cls net from an rnk model, its pair head left random, exit 0.
    probe = Run.create("synthetic", "cls", "tiny", project=Project(root=str(tmp_path / "probe"), data_dir=data))
    training.prepare(probe, iters=1)
    rc, out = run_caffe(["train", "-solver", probe.solver, "-weights", rnk], cwd=probe.project.root)
    assert rc == 0, out[-2000:]

    run = Run.create("synthetic", "cls", "tiny", project=_project(data, tmp_path))
    with pytest.raises(MtdnetError) as e:
        training.train(run, iters=2, weights=rnk, progress=False)
    msg = str(e.value)
    assert msg.startswith(f"{rnk}: has no layer(s) ") and "\n" not in msg
    missing = msg.split("has no layer(s) ")[1].split(", which")[0].split(", ")
    assert {"conv3_pair", "fc8_pair"} <= set(missing) and "conv1" not in missing
    assert not os.path.exists(run.dir)


# ---------------------------------------------------------------- 6. Makefile values

def test_make_values_reach_the_tools_intact(tmp_path):
    odd = tmp_path / "it's `touch PWNED` $HOME $(shell touch PWNED2) \"q\""
    env = dict(os.environ, MAKEFLAGS="")
    # A *_ARGS value is split as a shell splits words: quotes group them.
    r = subprocess.run(["make", "-s", "data", "PROFILE=tiny", f"DATA_ROOT={odd}/raw",
                        f"DATA_ARGS=--data-dir '{tmp_path}/my data' --synthetic-ids 12 --synthetic-test 4"],
                       cwd=REPO_ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    manifest = json.load(open(tmp_path / "my data" / "synthetic-tiny-paper" / "manifest.json"))
    assert manifest["inputs"]["root"] == f"{odd}/raw"
    r = subprocess.run(["make", "-s", "data", "DATA_ARGS=--data-dir 'unclosed"], cwd=REPO_ROOT,
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode != 0 and "error: DATA_ARGS: No closing quotation" in r.stderr
    r = subprocess.run(["make", "-s", "data", "PROFILE=tiny", f"DATASET=synthetic`touch {tmp_path}/PWNED3`"],
                       cwd=REPO_ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode != 0 and f"error: unknown dataset 'synthetic`touch {tmp_path}/PWNED3`'" in r.stderr
    weights = f"{tmp_path}/it's $$ `x`.caffemodel"
    r = subprocess.run(["make", "-s", "train", "PROFILE=tiny", f"WEIGHTS={weights}",
                        f"TRAIN_ARGS=--data-dir '{tmp_path}/my data' --runs-dir {tmp_path / 'runs'}"],
                       cwd=REPO_ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert f"error: {weights}: model file not found" in r.stderr, r.stderr
    for name in ("PWNED", "PWNED2", "PWNED3"):
        assert not os.path.exists(os.path.join(REPO_ROOT, name)) and not os.path.exists(tmp_path / name)


def test_make_help_lists_the_variables_and_their_values():
    r = subprocess.run(["make", "-s", "help"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0
    for word in ("make demo", "DATA_ROOT", "SEED", "NUM_SPLITS", "DATA_ARGS", "TRAIN_ARGS", "EVAL_ARGS",
                 "RESTART=1", "viper, cuhk01", "mtdnet, cls, rnk, trp", "tiny (3000 iterations)"):
        assert word in r.stdout, word


# ---------------------------------------------------------------- 7. smaller ones

def test_iters_0_leaves_nothing(data, tmp_path):
    run = Run.create("synthetic", "mtdnet", "tiny", project=_project(data, tmp_path))
    with pytest.raises(MtdnetError, match="ITERS must be >= 1, got 0"):
        training.train(run, iters=0, progress=False)
    assert not os.path.exists(tmp_path / "runs")


def test_fewer_iters_on_a_finished_run_changes_nothing(data, tmp_path, capsys):
    run = Run.create("synthetic", "mtdnet", "tiny", project=_project(data, tmp_path))
    training.train(run, iters=10, progress=False)
    files = {f: open(os.path.join(run.dir, f)).read() for f in ("run.json", "solver.prototxt")}
    info = training.train(run, iters=5, progress=False)
    assert info["iterations"] == 10 and info["max_iter"] == 10
    assert "already at iteration 10 (>= 5 asked): nothing to train" in capsys.readouterr().out
    assert {f: open(os.path.join(run.dir, f)).read() for f in files} == files


def _cpu_only_caffe():
    rc, out = run_caffe(["device_query", "-gpu", "0"], timeout=60)
    return "CPU-only" in out


@pytest.mark.skipif(not _cpu_only_caffe(), reason="this Caffe has a GPU build")
def test_gpu_on_a_cpu_only_build_is_one_line(data, tmp_path):
    r = subprocess.run(train_cli(data, tmp_path / "runs", "--iters", "2", "--gpu", "--no-progress"),
                       cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    err = one_line_error(r)
    assert "CPU-only build" in err and "make setup CUDA=1" in err


@pytest.mark.parametrize("args, message", [
    (("train", "ITERS=3000000000"), "ITERS must be at most 2147483647"),
    (("data", "SET=input_size=-1"), "SET: input_size=-1 must be 63..4096"),
    (("data", "SET=input_size=0"), "SET: input_size=0 must be 63..4096"),
    (("data", "SEED=-1"), "SEED must be an integer 0..4294967295, got -1"),
    (("train", "SET=base_lr=0"), "SET: base_lr=0 must be > 0"),
    (("train", "SET=lr_steps=0.8:0.5"), "SET: lr_steps=0.8:0.5 must be increasing fractions"),
])
def test_values_out_of_range_are_one_line(tmp_path, args, message):
    r = subprocess.run(["make", "-s", *args, "PROFILE=tiny", f"DATA_ARGS=--data-dir {tmp_path}/data",
                        f"TRAIN_ARGS=--data-dir {tmp_path}/data --runs-dir {tmp_path}/runs"],
                       cwd=REPO_ROOT, capture_output=True, text=True, env=dict(os.environ, MAKEFLAGS=""),
                       timeout=120)
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    errors = [x for x in r.stderr.splitlines() if x.startswith("error: ")]
    assert len(errors) == 1 and message in errors[0], r.stderr
    assert os.listdir(tmp_path) == []


def test_every_profile_is_within_its_ranges():
    from core.profiles import PROFILES, check_ranges
    for p in PROFILES.values():
        check_ranges(p)


def test_yes_no_values_are_read_as_typed():
    from mtdnet.cli import yes_no
    assert [yes_no(v) for v in ("1", "yes", "Y", "TRUE", "on")] == [True] * 5
    assert [yes_no(v) for v in ("0", "no", "n", "False", "OFF", "")] == [False] * 6
    r = subprocess.run(["make", "-s", "train", "PROFILE=tiny", "RESTART=maybe"], cwd=REPO_ROOT,
                       capture_output=True, text=True, env=dict(os.environ, MAKEFLAGS=""), timeout=120)
    assert r.returncode != 0 and "argument --restart: 'maybe' is neither yes" in r.stderr


def test_data_root_naming_a_file_says_so(tmp_path):
    f = tmp_path / "afile"
    f.write_text("x")
    p = tool("prepare_data", "--profile", "tiny", "--data-root", str(f), "--data-dir", str(tmp_path / "d"),
             "--no-progress")
    assert one_line_error(p).startswith(f"error: {f}: a file, not a folder;")
    assert f.read_text() == "x"


def test_a_missing_source_names_the_source_whose_raw_data_is_here(data, tmp_path, monkeypatch):
    import shutil as sh
    d = tmp_path / "data"
    sh.copytree(os.path.join(data, "synthetic-tiny-paper"), d / "viper-tiny-paper")
    run = Run.create("viper", "aug", "tiny", project=Project(root=str(tmp_path), data_dir=str(d)))
    monkeypatch.setattr(training, "raw_present", lambda ds, project=None: ds.name == "cuhk03detected")
    with pytest.raises(MtdnetError) as e:
        training.plan(run)
    assert "cuhk03-tiny-paper: prepared data not found" in str(e.value)
    assert str(e.value).endswith("but no raw cuhk03 data is here, cuhk03detected is: add SOURCE=cuhk03detected "
                                 "(its data: `make data DATASET=cuhk03detected PROFILE=tiny SPLIT=paper`)")


def test_make_leaves_the_defaults_to_the_tools(tmp_path):
    """One set of defaults (mtdnet.cli.DEFAULTS): make passes only what the user gives."""
    from mtdnet.cli import DEFAULTS
    from core.profiles import CPU_DEFAULT
    assert DEFAULTS["PROFILE"] == CPU_DEFAULT == "scratch"
    r = subprocess.run(["make", "-s", "data", f"DATA_ARGS=--data-dir {tmp_path} --synthetic-ids 12 "
                        "--synthetic-test 4 --no-progress"], cwd=REPO_ROOT, capture_output=True, text=True,
                       env=dict(os.environ, MAKEFLAGS=""), timeout=300)
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(tmp_path)) == ["raw", "synthetic-scratch-paper"]
