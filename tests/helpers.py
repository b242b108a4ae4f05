"""Shared test helpers: small real LMDBs and the caffe binary."""
import os
import subprocess

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
