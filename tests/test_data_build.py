"""`make data` end to end: the prepared-data contract, re-runs, faults, and Caffe reading it."""
import errno
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from core import REPO_ROOT, DataSpec, MtdnetError, Project, Split, get_dataset, get_profile
from data_prep import imagedb
from data_prep.build import SplitOptions, prepare as build
from data_prep.imagedb import ImageDB
from data_prep.prepared import load_prepared
from data_prep.records import read_image_file, resize_chw
from tests import fixtures as F
from tests.helpers import needs_real

PY = sys.executable
SMALL_SYN = {"num_ids": 24, "num_test": 8, "seed": 5}


def prepare(dataset, root, profile, split, out_dir, num_splits=10, seed=None, num_test=None, num_val=None,
            options=None, **kw):
    """`make data` of DATASET (options: its reader options) from the raw `root` into `out_dir`."""
    return build(get_dataset(dataset, **(options or {})), profile, split,
                 SplitOptions(seed, num_splits, num_test, num_val), project=Project(data_dir=out_dir),
                 root=root, **kw)


def prepared_dir(dataset, profile, split, out_dir, options=None):
    return DataSpec(get_dataset(dataset, **(options or {})), get_profile(profile), Split.parse(split),
                    Project(data_dir=out_dir)).dir


def quiet(**kw):
    kw.setdefault("progress", False)
    kw.setdefault("log", lambda *a: None)
    return kw


def leftovers(out_dir):
    """Temporary build directories (atomic_dir's hidden siblings) left behind."""
    return [n for n in os.listdir(out_dir) if n.startswith(".")]


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    d = tmp_path_factory.mktemp("syn")
    res = prepare("synthetic", str(d / "raw"), "tiny", "paper", str(d / "out"),
                  synthetic_params=SMALL_SYN, **quiet())
    return d, res[0]


def test_contract_files_and_counts(syn):
    d, m = syn
    out = prepared_dir("synthetic", "tiny", "paper", str(d / "out"))
    assert m["status"] == "built" and out.endswith("synthetic-tiny-paper")
    p = load_prepared(out)
    assert len(p.images) == 48 and [im["index"] for im in p.images] == list(range(48))
    assert {im["role"] for im in p.images} == {"train", "test"}
    assert sum(im["role"] == "test" for im in p.images) == 16
    db = ImageDB(p.lmdb)
    assert len(db) == 48 and db.shape == (3, 63, 63)
    trip = np.load(p.triplets)
    assert trip.dtype == np.int32 and trip.shape == (16 * 20, 3)
    c = p.manifest["counts"]
    assert c["pairs"] == 16 and c["triplets"] == 320 and c["identities"]["train"] == 16
    assert p.manifest["bytes"]["images_lmdb"] == imagedb.dir_bytes(p.lmdb)
    assert p.manifest["seed"] == 1701 and p.manifest["profile"]["name"] == "tiny"
    assert "not stored" in p.manifest["mirroring"]
    assert p.manifest["inputs"]["files"] == 49   # 48 images + synthetic.json
    # the LMDB holds each source image resized (BGR, CHW) under its images.json index
    for i in (0, 17, 47):
        src = os.path.join(str(d / "raw"), p.images[i]["path"])
        img, label = db.get(i)
        assert np.array_equal(img, resize_chw(read_image_file(src), 63))
        assert label == p.images[i]["label"]
    # split.json: the evaluation's lists point at test images of the right cameras
    for e in p.split["eval"]["test"]["identities"]:
        assert [p.images[i]["camera_id"] for i in e["probe"]] == [0]
        assert [p.images[i]["camera_id"] for i in e["gallery"]] == [1]
        assert p.images[e["probe"][0]]["person_id"] == e["person_id"]


def test_rerun_does_nothing_and_changes_rebuild(syn):
    d, _ = syn
    args = ("synthetic", str(d / "raw"), "tiny", "paper", str(d / "out"))
    logs = []
    again = prepare(*args, synthetic_params=SMALL_SYN, **quiet(log=logs.append))
    assert again[0]["status"] == "up to date" and "nothing to do" in logs[-1]
    out = prepared_dir("synthetic", "tiny", "paper", str(d / "out"))
    trip0 = np.load(os.path.join(out, "train_triplets.npy"))
    reseeded = prepare(*args, seed=9, synthetic_params=SMALL_SYN, **quiet())
    assert reseeded[0]["status"] == "built" and reseeded[0]["seed"] == 9
    assert not np.array_equal(np.load(os.path.join(out, "train_triplets.npy")), trip0)
    img = os.path.join(str(d / "raw"), "cam_a", sorted(os.listdir(d / "raw" / "cam_a"))[0])
    os.utime(img, ns=(1, 1))   # a changed input
    assert prepare(*args, seed=9, synthetic_params=SMALL_SYN, **quiet())[0]["status"] == "built"
    assert prepare(*args, seed=9, synthetic_params=SMALL_SYN, **quiet())[0]["status"] == "up to date"
    assert leftovers(str(d / "out")) == []


def test_random_splits_share_one_lmdb(syn):
    d, _ = syn
    res = prepare("synthetic", str(d / "raw"), "tiny", "random", str(d / "out"), num_splits=3,
                  num_test=6, synthetic_params=SMALL_SYN, **quiet())
    assert [r["split"] for r in res] == ["random0", "random1", "random2"]
    tests = [tuple(load_prepared(prepared_dir("synthetic", "tiny", s, str(d / "out"))).split["test"])
             for s in ("random0", "random1", "random2")]
    assert len(set(tests)) == 3 and all(len(t) == 6 for t in tests)
    inodes = {os.stat(os.path.join(prepared_dir("synthetic", "tiny", s, str(d / "out")),
                                   "images.lmdb", "data.mdb")).st_ino
              for s in ("paper", "random0", "random1", "random2")}
    assert len(inodes) == 1   # hard links: the disk holds the images once
    assert res[1]["lmdb_shared_with"] is not None and res[1]["bytes"]["written"] < 100_000


def test_caffe_reads_the_output(syn):
    """Caffe's own Data layer and our TripletDataLayer, in real nets."""
    import caffe
    from caffe import layers as L, params as P
    d, _ = syn
    p = load_prepared(prepared_dir("synthetic", "tiny", "paper", str(d / "out")))
    n = caffe.NetSpec()
    n.data, n.label = L.Data(source=p.lmdb, backend=P.Data.LMDB, batch_size=5, ntop=2)
    n.a, n.p, n.n = L.Python(ntop=3, python_param=dict(
        module="layers.triplet_data", layer="TripletDataLayer",
        param_str=json.dumps({"source": p.lmdb, "triplets": p.triplets, "batch_size": 4,
                              "mirror": False, "shuffle": False})))
    proto = d / "net.prototxt"
    proto.write_text(str(n.to_proto()))
    net = caffe.Net(str(proto), caffe.TEST)
    net.forward()
    db = ImageDB(p.lmdb)
    assert np.array_equal(net.blobs["data"].data, db.images(range(5)).astype(np.float32))
    assert net.blobs["label"].data.tolist() == [im["label"] for im in p.images[:5]]
    trip = np.load(p.triplets)
    for top, col in (("a", 0), ("p", 1), ("n", 2)):
        assert np.array_equal(net.blobs[top].data, db.images(trip[:4, col]).astype(np.float32))


@needs_real("viper")
def test_viper_real_tiny(tmp_path):
    m = prepare("viper", None, "tiny", "paper", str(tmp_path), **quiet())[0]
    c = m["counts"]
    assert c["identities"]["total"] == 632 and c["images"]["total"] == 1264
    assert c["pairs"] == 316 and c["triplets"] == 6320
    p = load_prepared(prepared_dir("viper", "tiny", "paper", str(tmp_path)))
    paths = {im["path"] for im in p.images if im["role"] == "test"}
    assert "cam_a/242_0.bmp" in paths and "cam_b/242_90.bmp" in paths   # first recorded row
    assert m["images_per_second"] > 0 and m["bytes"]["per_image"] > 3 * 63 * 63


def test_fixture_datasets_build(tmp_path):
    """CUHK03 (testsets), i-LIDS and PRID2011 through the whole pipeline."""
    F.write_cuhk03(str(tmp_path / "c3" / "cuhk-03.mat"), [6, 5, 4, 2, 2], h=12, w=6,
                   testsets=[[(1, 1), (2, 2), (3, 3)], [(1, 2), (2, 3), (3, 4)]])
    res = prepare("cuhk03", str(tmp_path / "c3"), "tiny", "testsets", str(tmp_path / "out"),
                  num_val=2, options={"images": "detected"}, **quiet())
    assert [os.path.basename(prepared_dir("cuhk03", "tiny", r["split"], "x", {"images": "detected"}))
            for r in res] == ["cuhk03detected-tiny-testsets0", "cuhk03detected-tiny-testsets1"]
    p = load_prepared(prepared_dir("cuhk03", "tiny", "testsets1", str(tmp_path / "out"), {"images": "detected"}))
    assert p.split["test"] == [1002, 2003, 3004] and len(p.split["val"]) == 2
    assert p.manifest["counts"]["identities"]["train"] == 15 - 5
    assert p.manifest["counts"]["pairs"] == 10 * 4 and len(ImageDB(p.lmdb)) == 15 * 4

    F.write_ilids(tmp_path / "il", {k: 2 + k % 3 for k in range(1, 13)})
    m = prepare("ilids", str(tmp_path / "il"), "tiny", "random0", str(tmp_path / "out"), num_test=4,
                **quiet())[0]
    # every two images of a training person are a pair (no camera labels)
    p = load_prepared(prepared_dir("ilids", "tiny", "random0", str(tmp_path / "out")))
    n = {pid: 2 + pid % 3 for pid in p.split["train"]}
    assert m["counts"]["pairs"] == sum(k * (k - 1) // 2 for k in n.values())

    F.write_prid2011(tmp_path / "pr", range(1, 211), range(1, 231), h=16, w=8)
    m = prepare("prid2011", str(tmp_path / "pr"), "tiny", "paper", str(tmp_path / "out"), **quiet())[0]
    assert m["counts"]["identities"]["distractors"] == 30 and m["counts"]["images"]["total"] == 430
    assert any("549" in w for w in m["warnings"])


# ---------------------------------------------------------------- faults

def viper_copy(tmp_path, n=12):
    root = tmp_path / "viper"
    F.write_viper(root, range(1, n + 1))
    return root


def test_corrupt_image_leaves_nothing(tmp_path):
    root = viper_copy(tmp_path)
    bad = root / "cam_b" / "007_90.bmp"
    bad.write_bytes(b"BM" + b"\x00" * 40)
    with pytest.raises(MtdnetError, match=f"{bad}: cannot decode the image"):
        prepare("viper", str(root), "tiny", "random0", str(tmp_path / "out"), num_test=4, **quiet())
    assert os.listdir(tmp_path / "out") == []


def test_lmdb_map_full_leaves_nothing(tmp_path):
    root = viper_copy(tmp_path)
    with pytest.raises(MtdnetError, match=r"images.lmdb: LMDB map is full after \d+ images"):
        prepare("viper", str(root), "tiny", "random0", str(tmp_path / "out"), num_test=4,
                map_size=64 * 1024, **quiet())
    assert os.listdir(tmp_path / "out") == []


def test_disk_full_keeps_the_previous_output(tmp_path, monkeypatch):
    root = viper_copy(tmp_path)
    args = ("viper", str(root), "tiny", "random0", str(tmp_path / "out"))
    prepare(*args, num_test=4, **quiet())
    out = prepared_dir("viper", "tiny", "random0", str(tmp_path / "out"))
    before = open(os.path.join(out, "manifest.json")).read()
    real, calls = imagedb.encode_datum, [0]

    def filling(img, label):
        calls[0] += 1
        if calls[0] == 10:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.path.join(out, "images.lmdb"))
        return real(img, label)
    monkeypatch.setattr(imagedb, "encode_datum", filling)
    with pytest.raises(MtdnetError, match=r"images.lmdb: No space left on device while building"):
        prepare(*args, num_test=4, force=True, **quiet())
    assert calls[0] == 10
    assert open(os.path.join(out, "manifest.json")).read() == before   # untouched
    assert leftovers(str(tmp_path / "out")) == []
    assert ImageDB(os.path.join(out, "images.lmdb")).n == 24


def test_cli_errors_exit_nonzero(tmp_path):
    def run(*a):
        return subprocess.run([PY, "tools/prepare_data.py", "--no-progress", "--out-dir", str(tmp_path / "o"),
                               *a], cwd=REPO_ROOT, capture_output=True, text=True)
    r = run("--dataset", "viper", "--data-root", str(tmp_path / "none"))
    assert r.returncode == 1 and r.stderr.startswith(f"error: {tmp_path / 'none'}: VIPeR root not found")
    F.write_mat_v5(str(tmp_path / "cuhk-03.mat"))
    r = run("--dataset", "cuhk03", "--data-root", str(tmp_path))
    assert r.returncode == 1 and r.stderr.startswith(f"error: {tmp_path / 'cuhk-03.mat'}: a pre-7.3 MAT-file")
    assert "-v7.3" in r.stderr
    r = run("--dataset", "viper", "--split", "testsets", "--data-root", str(F.write_viper(tmp_path / "v", [1, 2])))
    assert r.returncode == 1 and "'testsets' is CUHK03's" in r.stderr
    r = run("--help")
    assert r.returncode == 0 and "--num-splits" in r.stdout
    assert not os.path.exists(tmp_path / "o") or os.listdir(tmp_path / "o") == []


def test_make_data_target(tmp_path):
    r = subprocess.run(["make", "-s", "data", "PROFILE=tiny", f"DATA_ROOT={tmp_path / 'raw'}",
                        f"DATA_ARGS=--out-dir {tmp_path / 'out'} --synthetic-ids 12 --synthetic-test 4 "
                        f"--no-progress"], cwd=REPO_ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "synthetic-tiny-paper: 12 identities (8 train / 0 val / 4 test), 24 images, 8 pairs, " \
           "160 triplets" in r.stdout
    assert os.path.isfile(tmp_path / "raw" / "synthetic.json")
    r = subprocess.run(["make", "-s", "data", "PROFILE=tiny", "DATASET=viper", f"DATA_ROOT={tmp_path / 'no'}"],
                       cwd=REPO_ROOT, capture_output=True, text=True)
    assert r.returncode != 0 and f"error: {tmp_path / 'no'}: VIPeR root not found" in r.stderr
