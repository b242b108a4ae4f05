"""Shared test helpers: small real LMDBs and the caffe binary."""
import os
import subprocess
import time

import numpy as np

from data_prep.imagedb import write_image_lmdb
from mtdnet import REPO_ROOT

CAFFE = os.path.join(REPO_ROOT, ".venv", "bin", "caffe")


def make_image_lmdb(path, n_images, size, seed=0):
    """n_images random uint8 3 x size x size images (labels = index // 2)."""
    rng = np.random.RandomState(seed)
    imgs = rng.randint(0, 256, size=(n_images, 3, size, size)).astype(np.uint8)
    write_image_lmdb(path, ((im, i // 2) for i, im in enumerate(imgs)))
    return imgs


def run_caffe(args, cwd=REPO_ROOT, timeout=600):
    """Run the caffe tool; return (returncode, combined log)."""
    p = subprocess.run([CAFFE] + list(args), cwd=cwd, capture_output=True, text=True, timeout=timeout)
    return p.returncode, p.stdout + p.stderr


def toy_net_text(lmdb_path, trip_path, batch, outputs, loss_weight=1.0, std=0.001):
    """TripletDataLayer -> InnerProduct(anchor) -> Python HalfSumSquares loss (force_backward)."""
    import caffe
    from caffe import layers as L
    n = caffe.NetSpec()
    n.data_a, n.data_p, n.data_n = L.Python(
        ntop=3, python_param=dict(
            module="layers.triplet_data", layer="TripletDataLayer",
            param_str='{"source": "%s", "triplets": "%s", "batch_size": %d, "mirror": false, "shuffle": false}'
            % (lmdb_path, trip_path, batch)))
    n.ip = L.InnerProduct(n.data_a, num_output=outputs,
                          weight_filler=dict(type="gaussian", std=std),
                          bias_filler=dict(type="constant", value=0.5))
    n.loss = L.Python(n.ip, loss_weight=loss_weight,
                      python_param=dict(module="tests.toy_layers", layer="HalfSumSquares"))
    n.silence = L.Silence(n.data_p, n.data_n, ntop=0)  # else Caffe logs every pixel as an output
    return "force_backward: true\n" + str(n.to_proto())


def toy_solver_text(net_path, snapshot_prefix, max_iter, base_lr=1e-6, snapshot=0, display=1, seed=7):
    return (f'net: "{net_path}"\nbase_lr: {base_lr}\nlr_policy: "fixed"\nmomentum: 0\nweight_decay: 0\n'
            f'max_iter: {max_iter}\ndisplay: {display}\nrandom_seed: {seed}\nsnapshot: {snapshot}\n'
            f'snapshot_prefix: "{snapshot_prefix}"\nsolver_mode: CPU\n')


def wait_for(predicate, timeout, interval=0.2):
    """Poll `predicate` until true or `timeout` seconds pass."""
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
