"""The Caffe toolchain: pycaffe, the caffe binary and our Python layers, for real."""
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

import caffe

from core import REPO_ROOT
from tests.helpers import make_image_lmdb, run_caffe, toy_net_text, toy_solver_text

N, S, OUT = 4, 5, 3
LOSS_WEIGHT = 2.0


def write_net(tmp_path, imgs_path, trip_path):
    path = tmp_path / "net.prototxt"
    path.write_text(toy_net_text(imgs_path, trip_path, N, OUT, LOSS_WEIGHT))
    return str(path)


@pytest.fixture
def tiny_data(tmp_path):
    imgs = make_image_lmdb(str(tmp_path / "images.lmdb"), 8, S)
    trip = np.array([[i, (i + 1) % 8, (i + 2) % 8] for i in range(8)], np.int32)
    np.save(tmp_path / "trip.npy", trip)
    return imgs, trip, str(tmp_path / "images.lmdb"), str(tmp_path / "trip.npy")


def expected(imgs, trip, W, b):
    x = imgs[trip[:N, 0]].reshape(N, -1).astype(np.float64)
    y = x @ W.T.astype(np.float64) + b
    loss = LOSS_WEIGHT * 0.5 * np.sum(y ** 2)
    dW = LOSS_WEIGHT * y.T @ x
    db = LOSS_WEIGHT * y.sum(0)
    return loss, dW, db


def test_pycaffe_forward_backward_through_python_layers(tmp_path, tiny_data):
    imgs, trip, lmdb_path, trip_path = tiny_data
    caffe.set_mode_cpu()
    net = caffe.Net(write_net(tmp_path, lmdb_path, trip_path), caffe.TRAIN)
    out = net.forward()
    # The data layer delivers exactly the LMDB's images, in triplet order.
    np.testing.assert_array_equal(net.blobs["data_a"].data, imgs[trip[:N, 0]])
    np.testing.assert_array_equal(net.blobs["data_n"].data, imgs[trip[:N, 2]])
    W, b = net.params["ip"][0].data.copy(), net.params["ip"][1].data.copy()
    loss, dW, db = expected(imgs, trip, W, b)
    # Blobs hold the unweighted loss; the solver log shows it times loss_weight.
    assert out["loss"] == pytest.approx(loss / LOSS_WEIGHT, rel=1e-4)
    net.backward()
    np.testing.assert_allclose(net.params["ip"][0].diff, dW, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(net.params["ip"][1].diff, db, rtol=1e-4)
    # The second batch continues through the triplet list.
    net.forward()
    np.testing.assert_array_equal(net.blobs["data_a"].data, imgs[trip[N:2 * N, 0]])


def test_caffe_binary_trains_one_step_with_python_layers(tmp_path, tiny_data):
    """`caffe train` runs our layers; the snapshot after one SGD step matches numpy."""
    imgs, trip, lmdb_path, trip_path = tiny_data
    net_path = write_net(tmp_path, lmdb_path, trip_path)
    lr = 1e-6
    solver = tmp_path / "solver.prototxt"
    solver.write_text(toy_solver_text(net_path, f"{tmp_path}/snap", 1, base_lr=lr)
                      + "snapshot_after_train: true\n")
    rc, log = run_caffe(["train", "-solver", str(solver)])
    assert rc == 0, log[-3000:]
    logged = float(re.search(r"Iteration 0, loss = ([-+.\deE]+)", log).group(1))
    # Same fillers and seed: rebuild the initial weights in pycaffe.
    caffe.set_random_seed(7)
    net = caffe.Net(net_path, caffe.TRAIN)
    W0, b0 = net.params["ip"][0].data.copy(), net.params["ip"][1].data.copy()
    loss, dW, db = expected(imgs, trip, W0, b0)
    assert logged == pytest.approx(loss, rel=1e-4)
    net.copy_from(f"{tmp_path}/snap_iter_1.caffemodel")
    np.testing.assert_allclose(net.params["ip"][0].data, W0 - lr * dW, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(net.params["ip"][1].data, b0 - lr * db, rtol=1e-4, atol=1e-7)


def test_caffe_binary_reports_bad_python_layer_params(tmp_path, tiny_data):
    _, _, lmdb_path, trip_path = tiny_data
    net = open(write_net(tmp_path, lmdb_path, trip_path)).read()
    bad = tmp_path / "bad.prototxt"
    assert net.count("mirror") == 1
    bad.write_text(net.replace("mirror", "mirorr"))
    rc, log = run_caffe(["time", "-model", str(bad), "-iterations", "1"])
    assert rc != 0
    assert "mirorr" in log and "unknown param_str key" in log


def _setup_env(tmp_path, **extra):
    env = dict(os.environ, MTDNET_CACHE=str(tmp_path / "cache"), VENV=str(tmp_path / "venv"))
    env.pop("CAFFE_ROOT", None)
    env.update(extra)
    return env


def test_setup_refuses_a_corrupted_sdist(tmp_path):
    good = os.path.expanduser("~/.cache/mtdnet/src/brocolli-caffe-9.0.2.tar.gz")
    bad = tmp_path / "brocolli-caffe-9.0.2.tar.gz"
    if os.path.exists(good):
        data = bytearray(open(good, "rb").read())
        data[len(data) // 2] ^= 0xFF  # one flipped byte
    else:
        data = b"not the caffe source"
    bad.write_bytes(bytes(data))
    p = subprocess.run(["make", "-s", "setup"], cwd=REPO_ROOT, capture_output=True, text=True,
                       env=_setup_env(tmp_path, CAFFE_SDIST=str(bad)), timeout=300)
    assert p.returncode != 0
    assert "checksum mismatch" in p.stderr and str(bad) in p.stderr
    assert "fetch and verify" in p.stderr  # names the step
    # Nothing was set up past the failed step.
    assert not (tmp_path / "venv").exists()
    assert not (tmp_path / "cache" / "caffe").exists()


def test_setup_does_not_cache_a_failed_build(tmp_path):
    """A compile failure names the step and the log, and leaves no build that looks done."""
    good = os.path.expanduser("~/.cache/mtdnet/src/brocolli-caffe-9.0.2.tar.gz")
    assert os.path.exists(good), "make setup has not downloaded the sdist"
    fakebin = tmp_path / "bin"
    fakebin.mkdir()
    real_make = shutil.which("make")
    # A `make` that fails on the Caffe tree (compile error) and works otherwise.
    (fakebin / "make").write_text(
        '#!/bin/sh\nif [ -f Makefile.config ] && grep -q CAFFE Makefile 2>/dev/null; then\n'
        '  echo "src/caffe/net.cpp:1: error: simulated compile failure" >&2; exit 2\nfi\n'
        f'exec {real_make} "$@"\n')
    os.chmod(fakebin / "make", 0o755)
    env = _setup_env(tmp_path, CAFFE_SDIST=good, VENV=os.path.join(REPO_ROOT, ".venv"),
                     PATH=f"{fakebin}:{os.environ['PATH']}")
    p = subprocess.run(["bash", "scripts/setup.sh"], cwd=REPO_ROOT, capture_output=True, text=True,
                       env=env, timeout=300)
    assert p.returncode != 0
    assert "compiling Caffe failed" in p.stderr and "build Caffe" in p.stderr
    log = re.search(r"see the log: (\S+)", p.stderr).group(1)
    assert "simulated compile failure" in open(log).read()
    built = os.listdir(tmp_path / "cache" / "caffe")
    assert built == [], built  # no cached build, no leftover partial tree


def test_setup_again_uses_the_cache():
    p = subprocess.run(["make", "-s", "setup"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "Caffe build (cached:" in p.stdout
    with open(os.path.join(REPO_ROOT, "scripts", "setup.sh")) as f:
        listed = re.search(r"APT_PACKAGES=\(([^)]*)\)", f.read()).group(1).split()
    assert "libdnnl-dev" in listed          # the fast path's convolution engine
    assert "up to date" in p.stdout and f"all {len(listed)} packages present" in p.stdout
    assert "installing" not in p.stdout


def test_make_setup_hands_venv_to_the_setup_script(tmp_path):
    """make setup VENV=<dir> builds that venv (the Makefile passes VENV to tools as ARG_VENV)."""
    venv = tmp_path / "venv-gpu"
    p = subprocess.run(["make", "-s", "setup", f"VENV={venv}", f"PYTHON={tmp_path / 'no-python'}"],
                       cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
                       env=_setup_env(tmp_path, VENV=""))
    assert p.returncode != 0 and "is not installed" in p.stderr      # stopped at the first check
    assert f"setup: venv {venv}," in p.stdout


STUB_PIP = r'''#!/bin/bash
# A python that answers `-m pip download` with small fake CUDA wheels.
if [ "$1" = "-m" ] && [ "$2" = "pip" ]; then
  echo "$*" >> "$STUB_LOG"
  dest=""; pkgs=()
  while [ $# -gt 0 ]; do
    case "$1" in -d) dest="$2"; shift;; *==*) pkgs+=("$1");; esac; shift
  done
  for p in "${pkgs[@]}"; do
    "$REAL_PY" - "$dest" "${p%%==*}" <<'PY'
import sys, zipfile
dest, name = sys.argv[1:]
files = {"nvidia-cuda-nvcc": {"bin/nvcc": "#!/bin/sh\necho 'Cuda compilation tools, release 13.0, V13.0.48'\n",
                              "bin/cicc": ""},
         "nvidia-cuda-runtime": {"lib/libcudart.so.13": "", "include/cuda_runtime.h": ""},
         "nvidia-cublas": {"lib/libcublas.so.13": "", "lib/libcublasLt.so.13": "", "include/cublas_v2.h": ""},
         "nvidia-curand": {"lib/libcurand.so.10": "", "include/curand.h": ""}}.get(name, {"include/" + name: ""})
with zipfile.ZipFile(f"{dest}/{name.replace('-', '_')}-13.0-py3-none-manylinux2014_x86_64.whl", "w") as z:
    for path, text in files.items():
        z.writestr("nvidia/cu13/" + path, text)
PY
  done
  exit 0
fi
exec "$REAL_PY" "$@"
'''


def test_cuda_wheels_first_run_on_an_empty_cache_then_cached(tmp_path):
    stub = tmp_path / "python"
    stub.write_text(STUB_PIP)
    os.chmod(stub, 0o755)
    log = tmp_path / "pip.log"
    env = dict(os.environ, STUB_LOG=str(log), REAL_PY=sys.executable)
    cache = tmp_path / "cache"

    def run():
        p = subprocess.run(["bash", "scripts/cuda_wheels.sh", str(stub), str(cache)], cwd=REPO_ROOT,
                           capture_output=True, text=True, env=env, timeout=120)
        assert p.returncode == 0, p.stderr
        return p.stdout.strip()
    home = run()
    assert os.access(os.path.join(home, "bin", "nvcc"), os.X_OK)
    assert os.path.exists(os.path.join(home, ".mtdnet-complete"))
    assert os.path.islink(os.path.join(home, "lib", "libcudart.so"))
    assert len(log.read_text().splitlines()) == 1                    # downloaded once
    assert run() == home and len(log.read_text().splitlines()) == 1  # then the cache only
    # A download cut short (fewer wheels than pins) is fetched again, whole.
    shutil.rmtree(home)
    wheels = cache / "cuda-wheels" / os.listdir(cache / "cuda-wheels")[0]
    os.remove(sorted(wheels.iterdir())[0])
    assert run() == home and len(log.read_text().splitlines()) == 2
