"""CUHK03's 767/700 protocol (split `new`): the shipped configuration, the cross-camera
rule of the evaluation, and the split built and scored end to end on a fixture."""
import hashlib
import json
import os

import numpy as np
import pytest
import scipy.io

from core import MtdnetError, Project, Run
from data_prep.build import prepare
from data_prep.datasets import cuhk03
from data_prep.records import SPLITS_DIR
from mtdnet import cmc
from mtdnet import evaluate as E
from tests import fixtures as F
from tests.helpers import eval_run, make_model, prepare_synthetic, tiny_project


@pytest.mark.parametrize("images, gallery", [("detected", 5332), ("labeled", 5328)])
def test_the_shipped_configurations_are_the_protocols(images, gallery):
    path = os.path.join(SPLITS_DIR, cuhk03.NEW_PROTOCOL.format(images=images))
    with open(path, "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == cuhk03.NEW_PROTOCOL_SHA256[images]
    m = scipy.io.loadmat(path)
    names = [str(np.asarray(x).ravel()[0]) for x in m["filelist"].ravel()]
    cell = [cuhk03.FOLDER_FILE.match(n).groups()[:3] for n in names]
    ids = lambda k: {cell[i][:2] for i in m[f"{k}_idx"].ravel() - 1}
    assert len(ids("train")) == 767 and len(ids("query") | ids("gallery")) == 700
    assert not ids("train") & (ids("query") | ids("gallery"))
    query = [cell[i] for i in m["query_idx"].ravel() - 1]
    assert len(query) == len(set(query)) == 1400            # one query per identity and camera (view)
    assert m["gallery_idx"].size == gallery


def test_a_query_is_ranked_across_cameras():
    # Probe: person 1, camera 0. Gallery: person 1 camera 0 (best score), person 2 camera 1,
    # person 1 camera 1. Across cameras its own-camera image is left out: rank 2, not 1.
    scores = np.array([[0.9, 0.8, 0.7]])
    args = dict(probe_ids=[1], gallery_ids=[1, 2, 1], higher_is_better=True)
    plain = cmc.evaluate(scores, **args)
    assert plain.ranks.tolist() == [1]
    ev = cmc.evaluate(scores, **args, probe_cams=[0], gallery_cams=[0, 1, 1])
    assert ev.ranks.tolist() == [2] and ev.ap.tolist() == [0.5]
    # The left-out image counts neither as a match nor ahead of one.
    ev = cmc.evaluate(np.array([[0.5, 0.9, 0.7]]), **args, probe_cams=[0], gallery_cams=[0, 1, 1])
    assert ev.ranks.tolist() == [2] and ev.ap.tolist() == [0.5]
    with pytest.raises(MtdnetError, match="probes have no true match"):
        cmc.evaluate(scores, probe_ids=[1], gallery_ids=[1, 2, 2], higher_is_better=True,
                     probe_cams=[0], gallery_cams=[0, 1, 1])


def _write_config(root, persons_per_pair, n_train_ids):
    """A 767/700-style configuration for the fixture's images: the first n_train_ids persons
    train; of the others, each view's first image is a query, the rest gallery."""
    names = sorted(os.listdir(os.path.join(root, "images_detected")))
    cells = [cuhk03.FOLDER_FILE.match(n).groups() for n in names]
    persons = sorted({(int(p), int(i)) for p, i, *_ in cells})
    train = set(persons[:n_train_ids])
    train_idx, query_idx, gallery_idx, seen = [], [], [], set()
    for k, (p, i, v, c, _) in enumerate(cells, start=1):
        key = (int(p), int(i))
        if key in train:
            train_idx.append(k)
        elif (key, v) not in seen:
            seen.add((key, v))
            query_idx.append(k)
        else:
            gallery_idx.append(k)
    filelist = np.empty((len(names), 1), dtype=object)
    for k, n in enumerate(names):
        filelist[k, 0] = np.array([os.path.splitext(n)[0] + ".png"])
    scipy.io.savemat(os.path.join(root, cuhk03.NEW_PROTOCOL.format(images="detected")), {
        "filelist": filelist, "labels": np.arange(len(names))[:, None], "camId": np.ones((len(names), 1)),
        "train_idx": np.array(train_idx)[:, None], "query_idx": np.array(query_idx)[:, None],
        "gallery_idx": np.array(gallery_idx)[:, None]})
    return len(persons) - n_train_ids, len(query_idx), len(gallery_idx)


def test_split_new_is_built_and_scored_across_cameras(tmp_path, monkeypatch):
    raw = str(tmp_path / "CUHK03")
    # Five camera pairs, two images per view (columns 1, 2 and 6, 7).
    F.write_cuhk03_folder(raw, [5, 4, 3, 2, 2], views=lambda pair, i, col: col in (1, 2, 6, 7))
    n_test, n_query, n_gallery = _write_config(raw, [5, 4, 3, 2, 2], n_train_ids=9)
    root = str(tmp_path)
    prepare("cuhk03detected", "tiny", "new", project=tiny_project(root), root=raw, progress=False,
            log=lambda *a: None)
    data = os.path.join(root, "data")
    out = os.path.join(data, "cuhk03detected-tiny-new")
    split = json.load(open(os.path.join(out, "split.json")))
    assert split["sizes"] == {"train": 9, "val": 0, "test": n_test, "distractors": 0}
    assert "767/700 protocol" in split["rule"] and "image_protocol" not in split
    test = split["eval"]["test"]
    assert test["cross_camera"] and len(test["query"]) == n_query == 2 * n_test
    assert len(test["gallery"]) == n_gallery
    images = json.load(open(os.path.join(out, "images.json")))
    role = {im["index"]: im["role"] for im in images}
    assert {role[i] for i in test["query"] + test["gallery"]} == {"test"}
    assert os.path.getsize(os.path.join(out, "train_triplets.npy")) > 0

    model = make_model(str(tmp_path / "m" / "mtdnet.caffemodel"), prepare_synthetic(str(tmp_path / "syn")))
    r = eval_run("cuhk03detected", "trp", split="new", data_dir=data, runs_dir=str(tmp_path / "runs"),
                 model=model)
    assert r["split"] == "new" and r["gallery_rule"] == E.GALLERY_RULES["cross_camera"]
    assert r["scored"] == [n_query, n_gallery] and r["gallery_size"] == n_gallery and 0 <= r["mAP"] <= 100
    with pytest.raises(MtdnetError, match="has its own fixed queries and gallery: evaluate it with PROTOCOL=paper"):
        eval_run("cuhk03detected", "trp", split="new", data_dir=data, runs_dir=str(tmp_path / "runs"),
                 model=model, protocol="random")
    # No validation identities in this protocol: no snapshot to choose on them.
    run = Run.create("cuhk03detected", "trp", "tiny", "new", project=Project(data_dir=data, runs_dir=str(tmp_path / "r")))
    with pytest.raises(MtdnetError, match="split 'new' has no validation identities to choose a snapshot on"):
        E.select_snapshot(run, progress=False, log=lambda *a: None)
    # The pair score of a large layout would take days: refused, pointing at trp.
    monkeypatch.setattr(E, "PAIR_SCORE_LIMIT", n_query * n_gallery - 1)
    with pytest.raises(MtdnetError, match=r"pairs, each through the pair net 8 times.*VARIANT=trp"):
        eval_run("cuhk03detected", "mtdnet", split="new", data_dir=data, runs_dir=str(tmp_path / "runs"),
                 model=model)


def test_split_new_is_cuhk03s_only(tmp_path):
    root = str(tmp_path)
    with pytest.raises(MtdnetError, match="split 'new' is CUHK03's 767/700 protocol; VIPeR has no such split"):
        prepare("viper", "tiny", "new", project=tiny_project(root), root=F.write_viper(tmp_path / "V", range(1, 9)),
                progress=False, log=lambda *a: None)
