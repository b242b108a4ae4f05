"""The synthetic dataset: seeded, VIPeR's layout, not colour-trivial, yet learnable."""
import filecmp
import json
import os

import cv2
import numpy as np
import pytest

from data_prep import synthetic
from data_prep.datasets import read_dataset
from data_prep.records import load_image


@pytest.fixture(scope="module")
def default_set(tmp_path_factory):
    """The embedded default (300 people, 100 test), as `make data` generates it."""
    root = str(tmp_path_factory.mktemp("syn") / "synthetic")
    synthetic.generate(root, progress=False)
    ds = read_dataset("synthetic", root)
    imgs = {(r.person_id, r.camera_id): load_image(r) for r in ds.records}
    return ds, imgs


def cmc(dist, n_ranks=10):
    """dist[i, j]: probe i vs gallery j, true match on the diagonal -> rank-k rates."""
    ranks = (dist < np.diag(dist)[:, None]).sum(1)
    return [(ranks < k).mean() for k in range(1, n_ranks + 1)]


def colour_histogram_nn(imgs, test, bins=8):
    """Rank-1 of nearest neighbour on whole-image joint BGR histograms (Bhattacharyya)."""
    def h(img):
        x = cv2.calcHist([img], [0, 1, 2], None, [bins] * 3, [0, 256] * 3).ravel()
        return np.sqrt(x / x.sum())
    a = np.array([h(imgs[p, 0]) for p in test])
    b = np.array([h(imgs[p, 1]) for p in test])
    return cmc(-(a @ b.T))[0]


def learned_metric(imgs, train, test, dims=60):
    """A learned cross-camera metric (KISSME on horizontal-stripe HSV/Lab histograms)."""
    def feat(img):
        hsv, lab = cv2.cvtColor(img, cv2.COLOR_BGR2HSV), cv2.cvtColor(img, cv2.COLOR_BGR2LAB)
        out = []
        for s in range(8):
            rows = slice(s * img.shape[0] // 8, (s + 1) * img.shape[0] // 8)
            for im, ch, bins, rng in ((hsv, [0, 1], [8, 4], [0, 180, 0, 256]), (lab, [0, 1, 2], [4] * 3, [0, 256] * 3)):
                x = cv2.calcHist([np.ascontiguousarray(im[rows])], ch, None, bins, rng).ravel()
                out.append(np.sqrt(x / x.sum()))
        return np.concatenate(out)
    fa = np.array([feat(imgs[p, 0]) for p in train])
    fb = np.array([feat(imgs[p, 1]) for p in train])
    mu = np.vstack([fa, fb]).mean(0)
    basis = np.linalg.svd(np.vstack([fa, fb]) - mu, full_matrices=False)[2][:dims]
    pa, pb = (fa - mu) @ basis.T, (fb - mu) @ basis.T
    same = np.cov((pa - pb).T) + 1e-3 * np.eye(dims)
    diff = np.cov((pa - np.roll(pb, 1, axis=0)).T) + 1e-3 * np.eye(dims)
    m = np.linalg.inv(same) - np.linalg.inv(diff)
    ta = (np.array([feat(imgs[p, 0]) for p in test]) - mu) @ basis.T
    tb = (np.array([feat(imgs[p, 1]) for p in test]) - mu) @ basis.T
    # (a - b) M (a - b) for every probe a and gallery b (M is symmetric)
    dist = ((ta @ m) * ta).sum(1)[:, None] + ((tb @ m) * tb).sum(1)[None, :] - 2 * ta @ m @ tb.T
    return cmc(dist)[0]


def test_layout_and_protocol(default_set):
    ds, imgs = default_set
    assert ds.person_ids() == list(range(300)) and len(ds.records) == 600
    assert all(img.shape == (128, 48, 3) for img in imgs.values())
    angles = {r.name.rsplit("_", 1)[1] for r in ds.records}
    assert angles <= {"0.bmp", "45.bmp", "90.bmp", "135.bmp", "180.bmp"} and len(angles) >= 4
    assert (ds.facts.n_train, ds.facts.n_test) == (200, 100) and len(ds.facts.paper_test_ids) == 100
    info = json.load(open(os.path.join(ds.facts.root, "synthetic.json")))
    assert info["seed"] == synthetic.DEFAULTS["seed"] and info["test_ids"] == ds.facts.paper_test_ids


def test_cameras_differ(default_set):
    _, imgs = default_set
    a = np.array([imgs[p, 0].reshape(-1, 3).mean(0) for p in range(300)])
    b = np.array([imgs[p, 1].reshape(-1, 3).mean(0) for p in range(300)])
    assert a.mean() > b.mean() + 5                        # camera B is dimmer
    cast_a, cast_b = (a[:, 2] - a[:, 0]).mean(), (b[:, 2] - b[:, 0]).mean()
    assert cast_a > cast_b + 10                           # A warm (red), B cool (blue)


def test_not_colour_trivial_but_learnable(default_set):
    ds, imgs = default_set
    test = ds.facts.paper_test_ids
    train = [p for p in ds.person_ids() if p not in set(test)]
    hist = colour_histogram_nn(imgs, test)
    learned = learned_metric(imgs, train, test)
    print(f"synthetic, 100-person gallery: colour-histogram NN rank-1 {hist:.2f}, "
          f"learned metric rank-1 {learned:.2f} (chance 0.01)")
    assert hist < 0.35             # a colour histogram alone does not solve it
    assert learned > 0.3           # what is learnt from the 200 training people does


def test_seeded_and_stable(tmp_path):
    a = synthetic.generate(str(tmp_path / "a"), progress=False, num_ids=10, num_test=4, seed=3)
    b = synthetic.generate(str(tmp_path / "b"), progress=False, num_ids=12, num_test=4, seed=3)
    c = synthetic.generate(str(tmp_path / "c"), progress=False, num_ids=10, num_test=4, seed=4)
    files = sorted(os.listdir(tmp_path / "a" / "cam_a"))
    # each person is drawn from its own seeded stream: more people change nobody else
    for sub in ("cam_a", "cam_b"):
        names = sorted(os.listdir(tmp_path / "a" / sub))
        assert filecmp.cmpfiles(tmp_path / "a" / sub, tmp_path / "b" / sub, names, shallow=False)[0] == names
    other = sorted(os.listdir(tmp_path / "c" / "cam_a"))   # another seed: other people
    assert other != files or filecmp.cmpfiles(tmp_path / "a" / "cam_a", tmp_path / "c" / "cam_a",
                                              files, shallow=False)[0] != files
    assert a["seed"] == 3 and len(a["test_ids"]) == 4 and c["seed"] == 4
    logs = []
    assert synthetic.ensure(str(tmp_path / "a"), progress=False, log=logs.append,
                            num_ids=10, num_test=4, seed=3) is False
    assert synthetic.ensure(str(tmp_path / "a"), progress=False, log=logs.append,
                            num_ids=10, num_test=4, seed=5) is True
    assert "seed 5" in logs[-1] and json.load(open(tmp_path / "a" / "synthetic.json"))["seed"] == 5
    assert b["num_ids"] == 12
