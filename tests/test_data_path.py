"""The data path that keeps a GPU busy: prefetching TripletDataLayer, pair regrouping in
plain Caffe layers, and what GPU=1 says on a build without CUDA.

Prefetch: the same batches, in the same order, for any worker count (forked
workers replay the seeded plan), through pycaffe and through `caffe train`.
Regrouping: the Concat/Reshape/DummyData version gives the Python layer's
forward (pairs and labels) and backward exactly, in both orders.
"""
import json
import os
import signal

import numpy as np
import pytest

import caffe

from core import MtdnetError, get_profile, get_variant
from layers import triplet_data
from prototxt import nets

from tests.helpers import make_image_lmdb, run_caffe

caffe.set_mode_cpu()


def _data(tmp_path, n_images=9, size=11, n_trip=13, seed=0):
    lmdb_path = str(tmp_path / "images.lmdb")
    make_image_lmdb(lmdb_path, n_images, size, seed=seed)
    rng = np.random.RandomState(seed)
    np.save(tmp_path / "t.npy", rng.randint(0, n_images, size=(n_trip, 3)))
    return lmdb_path, str(tmp_path / "t.npy")


def _data_net(tmp_path, params, name="data"):
    n = caffe.NetSpec()
    n.data_a, n.data_p, n.data_n = nets._python([], "layers.triplet_data", "TripletDataLayer", params, ntop=3)
    path = tmp_path / f"{name}.prototxt"
    path.write_text(str(n.to_proto()))
    return caffe.Net(str(path), caffe.TRAIN)


def _batches(net, count):
    out = []
    for _ in range(count):
        net.forward()
        out.append([net.blobs[b].data.copy() for b in ("data_a", "data_p", "data_n")])
    return out


@pytest.mark.parametrize("workers", [1, 3])
def test_prefetch_gives_the_batches_of_the_solver_thread(tmp_path, workers):
    """Mirrors, shifts and per-epoch reshuffles included (13 triplets, 5 per batch: 5 epochs)."""
    lmdb_path, trip = _data(tmp_path)
    params = dict(source=lmdb_path, triplets=trip, batch_size=5, shift=2, seed=11)
    plain = _batches(_data_net(tmp_path, params, "plain"), 13)
    net = _data_net(tmp_path, dict(params, prefetch=workers), "prefetch")
    pf = net.layers[0].prefetcher
    assert pf is not None and len(pf.procs) == workers and all(p.is_alive() for p in pf.procs)
    fetched = _batches(net, 13)
    for k, (a, b) in enumerate(zip(plain, fetched)):
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y, err_msg=f"batch {k}")
    assert not np.array_equal(plain[0][0], plain[1][0])      # the batches do differ
    pf.close()
    assert not any(p.is_alive() for p in pf.procs)


def test_prefetch_worker_death_is_a_clear_error(tmp_path):
    lmdb_path, trip = _data(tmp_path)
    net = _data_net(tmp_path, dict(source=lmdb_path, triplets=trip, batch_size=5, prefetch=1))
    net.forward()
    pf = net.layers[0].prefetcher
    os.kill(pf.procs[0].pid, signal.SIGKILL)
    pf.procs[0].join(5)
    with pytest.raises(RuntimeError, match="prefetch worker 0 exited"):
        for _ in range(4):                       # at most `depth` batches were ready before the kill
            net.forward()


def test_prefetch_in_caffe_train(tmp_path):
    """The `caffe` tool embeds Python and holds the GIL while it computes: forked workers still
    deliver, and the tool's log shows the same losses with and without them."""
    lmdb_path, trip = _data(tmp_path, n_images=12, size=15, n_trip=20)
    losses = {}
    for workers in (0, 2):
        d = tmp_path / f"w{workers}"
        d.mkdir()
        n = caffe.NetSpec()
        n.data_a, n.data_p, n.data_n = nets._python(
            [], "layers.triplet_data", "TripletDataLayer",
            dict(source=lmdb_path, triplets=trip, batch_size=4, seed=5, prefetch=workers), ntop=3)
        n.diff = caffe.layers.Eltwise(n.data_a, n.data_n, operation=caffe.params.Eltwise.SUM, coeff=[1, -1])
        n.loss = caffe.layers.Reduction(n.diff, operation=caffe.params.Reduction.ASUM, loss_weight=1)
        n.silence = caffe.layers.Silence(n.data_p, ntop=0)
        (d / "net.prototxt").write_text(str(n.to_proto()))
        (d / "solver.prototxt").write_text(
            f'net: "{d}/net.prototxt"\nbase_lr: 0\nlr_policy: "fixed"\nmax_iter: 12\ndisplay: 1\nsolver_mode: CPU\n'
            f'snapshot_after_train: false\n')
        rc, log = run_caffe(["train", "-solver", str(d / "solver.prototxt")], timeout=120)
        assert rc == 0, log
        losses[workers] = [line.split("loss = ")[1] for line in log.splitlines()
                           if "Iteration" in line and "loss = " in line]
    assert len(losses[0]) >= 12 and len(set(losses[0])) > 3   # + the final "Iteration 12, loss"
    assert losses[2] == losses[0]


# ---------------------------------------------------------------- pair regrouping

def _regroup_net(tmp_path, mode, order, n=3, c=2, h=2, w=3):
    prof = get_profile("tiny", [f"pair_regroup={mode}"])
    ns = caffe.NetSpec()
    norms = []
    for name in ("a", "p", "q"):
        setattr(ns, name, caffe.layers.Input(shape=dict(dim=[n, c, h, w])))
        norms.append(getattr(ns, name))
    ns.pairs, ns.labels = nets.pair_regroup(ns, norms, prof, n, order)
    # A loss that weighs every pair entry and label differently, so any misplaced row shows.
    ns.weights = caffe.layers.Input(shape=dict(dim=[2 * n, 2 * c, h, w]))
    ns.weighted = caffe.layers.Eltwise(ns.pairs, ns.weights, operation=caffe.params.Eltwise.PROD)
    ns.loss = caffe.layers.Reduction(ns.weighted, operation=caffe.params.Reduction.SUM, loss_weight=1)
    path = tmp_path / f"{mode}_{order}.prototxt"
    path.write_text("force_backward: true\n" + str(ns.to_proto()))
    return caffe.Net(str(path), caffe.TRAIN)


@pytest.mark.parametrize("order", ["blocked", "interleaved"])
def test_caffe_regroup_equals_the_python_layer(tmp_path, order):
    rng = np.random.RandomState(4)
    inputs = {k: rng.randn(3, 2, 2, 3).astype(np.float32) for k in ("a", "p", "q")}
    weights = rng.randn(6, 4, 2, 3).astype(np.float32)
    got = {}
    for mode in ("python", "caffe"):
        net = _regroup_net(tmp_path, mode, order)
        types = {layer.type for layer in net.layers}
        assert ("Python" in types) == (mode == "python")
        for k, v in inputs.items():
            net.blobs[k].data[...] = v
        net.blobs["weights"].data[...] = weights
        net.forward()
        net.backward()
        got[mode] = [net.blobs["pairs"].data.copy(), net.blobs["labels"].data.copy()] + \
                    [net.blobs[k].diff.copy() for k in ("a", "p", "q")]
    for x, y in zip(got["python"], got["caffe"]):
        np.testing.assert_array_equal(x, y)
    labels = got["caffe"][1]
    assert labels.shape == (6,) and labels.sum() == 3
    assert list(labels[:2]) == ([1, 1] if order == "blocked" else [1, 0])


def test_profile_selects_the_regroup_and_prefetch_in_the_train_net():
    for mode, regroup_types in (("python", {"Python"}), ("caffe", {"Concat", "DummyData"})):
        prof = get_profile("tiny", [f"pair_regroup={mode}", "prefetch_workers=3"])
        text = str(nets.train_net(get_variant("mtdnet"), prof, 4, ("x.lmdb", "t.npy")).to_proto())
        assert json.loads(text.split('param_str: "')[1].split('"\n')[0].replace('\\"', '"'))["prefetch"] == 3
        assert all(f'type: "{t}"' in text for t in regroup_types)
        assert ('PairRegroupLayer' in text) == (mode == "python")


def test_bad_regroup_name_is_rejected():
    with pytest.raises(MtdnetError, match="pair_regroup=gpu; valid: python, caffe"):
        get_profile("tiny", ["pair_regroup=gpu"])


# ---------------------------------------------------------------- GPU=1 on a CPU-only build

from mtdnet import gpu as mgpu  # noqa: E402

cpu_only = pytest.mark.skipif(mgpu.build_has_cuda(), reason="this Caffe is a CUDA build")


@cpu_only
def test_gpu_on_a_cpu_build_is_one_clear_line(tmp_path):
    import subprocess
    import sys
    from core import REPO_ROOT
    from mtdnet import scoring
    with pytest.raises(MtdnetError, match="GPU=1, but this Caffe .* is a CPU-only build"):
        scoring.use_device(gpu=True)
    scoring.use_device(gpu=False)
    p = subprocess.run([sys.executable, "tools/train.py", "--dataset", "synthetic", "--profile", "tiny",
                        "--gpu", "--no-progress"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, MTDNET_RUNS_DIR=str(tmp_path), MTDNET_DATA_DIR=str(tmp_path)))
    assert p.returncode != 0
    lines = [x for x in p.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "CPU-only build" in lines[0] and "make setup CUDA=1" in lines[0], p.stderr


def test_device_check_rehearses_in_cpu_mode(tmp_path):
    """scripts/device_check.py's agreement and scoring parts run (CPU mode: both sides on the
    CPU, so they agree exactly); every tiny train net builds, runs forward and backward."""
    import subprocess
    import sys
    from core import Project, REPO_ROOT
    out = tmp_path / "dc.json"
    p = subprocess.run([sys.executable, "scripts/device_check.py", "--cpu", "--out", str(out),
                        "--parts", "agreement,scoring"], cwd=REPO_ROOT, capture_output=True, text=True,
                       timeout=300, env=dict(os.environ, MTDNET_CAFFE_BIN=Project().caffe))
    assert p.returncode == 0, p.stderr[-3000:]
    doc = json.loads(out.read_text())
    nets_run = [k for k, v in doc["agreement"].items() if isinstance(v, dict) and "max_rel_diff" in v]
    assert sorted(nets_run) == ["aug", "cls", "cross", "mtdnet", "mtdnet+caffe_regroup", "rnk"], doc["agreement"]
    assert doc["agreement"]["all_ok"] and doc["summary"]["gpu_cpu_agree"]
    assert doc["scoring"]["pair"]["score_std"] > 1e-3     # scores that differ, so a mismatch would show


def test_bench_datapath_part_compares_the_same_batches():
    from mtdnet import bench
    r = bench.measure_datapath("tiny", 3, [1, 2], 0.0, 1701)
    assert r["same_batches_all_modes"] is True
    assert sorted(r["modes"]) == ["prefetch_0", "prefetch_1", "prefetch_2"]
    assert all(m["critical_s_per_iter"] > 0 for m in r["modes"].values())
    assert r["batch_bytes_float32"] == 3 * 16 * 3 * 63 * 63 * 4
