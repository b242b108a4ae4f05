"""Shared test helpers: small real LMDBs, prepared data, models and the caffe binary."""
import os
import subprocess
import time

import caffe
import numpy as np
from caffe import layers as L, params as P

from core import REPO_ROOT, Project, Run, get_profile
from data_prep.build import SplitOptions, prepare
from data_prep.imagedb import write_image_lmdb
from mtdnet import evaluate, training
from mtdnet.bench import random_weights
from prototxt import generate

CAFFE = Project().caffe
PROFILE = "tiny"


def real_root(dataset):
    """Where the real dataset is looked for by default (its registry folder)."""
    from data_prep.datasets import default_root
    return default_root(dataset)


def needs_real(dataset):
    """Skip (with the reason) unless the real dataset is on this machine."""
    import pytest
    root = real_root(dataset)
    return pytest.mark.skipif(not os.path.isdir(root), reason=f"the real {dataset} is not at {root}")


VIPER = real_root("viper")


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


def make_reid_data(d, size, n_ids=8, per_camera=2, seed=0, mix=0.5):
    """A small prepared-data directory: images.lmdb and train_triplets.npy.

    Each identity wears two random colours (upper / lower half); camera 1 is
    brighter than camera 0; pixel noise on top. Triplets: anchor, the same
    identity in the other camera, another identity in the positive's camera;
    MTDnet-aug's mix_triplets.npy: the first `mix` fraction of them.
    """
    rng = np.random.RandomState(seed)
    colours = rng.randint(30, 226, size=(n_ids, 2, 3))
    imgs, ids, cams = [], [], []
    for i in range(n_ids):
        for cam in range(2):
            for _ in range(per_camera):
                im = np.empty((3, size, size))
                im[:, :size // 2] = colours[i, 0][:, None, None]
                im[:, size // 2:] = colours[i, 1][:, None, None]
                im += 20 * cam - 10 + rng.normal(0, 10, im.shape)
                imgs.append(np.clip(im, 0, 255).astype(np.uint8))
                ids.append(i)
                cams.append(cam)
    os.makedirs(d, exist_ok=True)
    write_image_lmdb(os.path.join(d, "images.lmdb"), zip(imgs, ids))
    ids, cams = np.array(ids), np.array(cams)
    trips = [(a, p, rng.choice(np.flatnonzero((ids != ids[a]) & (cams == cams[p]))))
             for a in range(len(ids)) for p in np.flatnonzero((ids == ids[a]) & (cams != cams[a]))
             for _ in range(2)]
    trips = np.array(trips, np.int32)
    rng.shuffle(trips)
    np.save(os.path.join(d, "train_triplets.npy"), trips)
    np.save(os.path.join(d, "mix_triplets.npy"), trips[: max(1, int(len(trips) * mix))])   # aug's mix
    return len(imgs), len(trips)


def caffenet_like(path, conv1, conv2, seed=3):
    """A CaffeNet-shaped model (conv1 k11 s4, conv2 k5 group 2, conv3 over conv2's channels, fc8 1000)."""
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 3, 63, 63]))
    filler = dict(type="gaussian", std=0.1)
    n.conv1 = L.Convolution(n.data, num_output=conv1, kernel_size=11, stride=4, weight_filler=filler,
                            bias_filler=dict(type="gaussian", std=0.1))
    n.pool1 = L.Pooling(n.conv1, pool=P.Pooling.MAX, kernel_size=3, stride=2)
    n.conv2 = L.Convolution(n.pool1, num_output=conv2, kernel_size=5, pad=2, group=2, weight_filler=filler,
                            bias_filler=dict(type="gaussian", std=0.1))
    n.pool2 = L.Pooling(n.conv2, pool=P.Pooling.MAX, kernel_size=3, stride=2)
    n.conv3 = L.Convolution(n.pool2, num_output=24, kernel_size=3, pad=1, weight_filler=filler)
    n.fc8 = L.InnerProduct(n.conv3, num_output=1000, weight_filler=filler)
    proto = path + ".prototxt"
    with open(proto, "w") as f:
        f.write(str(n.to_proto()))
    caffe.set_random_seed(seed)
    net = caffe.Net(proto, caffe.TEST)
    net.save(path)
    return {k: [b.data.copy() for b in v] for k, v in net.params.items()}


def tiny_project(root):
    """A Project whose data/ and runs/ are under root (Caffe still runs in the repository)."""
    return Project(data_dir=os.path.join(root, "data"), runs_dir=os.path.join(root, "runs"))


def prepare_synthetic(root, split="paper", num_splits=1):
    """data_prep's real builder on a 16-person synthetic set: root/raw, root/data/<...>."""
    prepare("synthetic", PROFILE, split, SplitOptions(num_splits=num_splits), project=tiny_project(root),
            root=os.path.join(root, "raw"), progress=False, log=lambda *a: None,
            synthetic_params=dict(num_ids=16, num_test=6))
    return os.path.join(root, "data")


def randomize(net, seed):
    """Redraw every weight at unit-variance scale (the fillers give near-constant outputs)."""
    random_weights(net, seed, get_profile(PROFILE).input_scale)


def make_model(path, data_dir, variant="mtdnet", seed=0):
    """A snapshot of the tiny `variant` train net (reading data_dir's synthetic data)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    net_path = path + ".train.prototxt"
    run = Run.create("synthetic", variant, PROFILE, project=Project(data_dir=data_dir))
    with open(net_path, "w") as f:
        f.write(generate.train_net_text(run))
    net = caffe.Net(net_path, caffe.TEST)
    randomize(net, seed)
    net.save(path)
    return path


def deploy_file(tmp, kind, profile=PROFILE):
    path = os.path.join(tmp, f"{kind}-{profile}.prototxt")
    with open(path, "w") as f:
        f.write(generate.deploy_text(kind, profile))
    return path


def save_deploy_model(path, kind, profile, seed=0):
    """A model shaped like `profile`'s deploy net `kind` (for mismatch tests)."""
    net = caffe.Net(deploy_file(os.path.dirname(path), kind, profile), caffe.TEST)
    randomize(net, seed)
    net.save(path)
    return path


def train_run(root, dataset, variant, split="paper", source_split="paper", iters=None, weights=None,
              profile=PROFILE):
    """make train of a Run whose project (data/, runs/, Caffe's working directory) is `root`."""
    run = Run.create(dataset, variant, profile, split, source_split, project=Project(root=root))
    return training.train(run, iters=iters, weights=weights, progress=False)


def eval_run(dataset="synthetic", variant="mtdnet", profile=PROFILE, split="paper", data_dir=None,
             runs_dir=None, root=REPO_ROOT, **evaluation):
    """make eval of a Run (Evaluation fields as keywords: protocol, trials, seed, model, scorer)."""
    run = Run.create(dataset, variant, profile, split,
                     project=Project(root=root, data_dir=data_dir, runs_dir=runs_dir))
    return evaluate.evaluate(run, evaluate.Evaluation(**evaluation), progress=False, log=lambda *a: None)


def run_of(dataset="synthetic", variant="mtdnet", profile=PROFILE, split="paper", data_dir=None, runs_dir=None):
    return Run.create(dataset, variant, profile, split, project=Project(data_dir=data_dir, runs_dir=runs_dir))
