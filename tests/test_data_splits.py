"""Splits (paper / random / testsets), the evaluation's image lists, and the triplets."""
from itertools import combinations

import numpy as np
import pytest

from core import MtdnetError
from data_prep import splitting as protocol
from data_prep.datasets import read_dataset
from data_prep.records import paper_split
from data_prep.triplets import make_triplets, positive_pairs
from tests import fixtures as F
from tests.helpers import needs_real

CUHK03_PAIRS = [843, 440, 77, 58, 49]   # persons per camera pair in cuhk-03.mat


def split_of(ds, name, seed=1701, **kw):
    s = protocol.make_split(ds, name, seed, **kw)
    recs, images = protocol.select_images(ds, s)
    s["eval"] = protocol.eval_sets(s, images)
    return s, images


def check_partition(s, pool):
    tr, va, te = set(s["train"]), set(s["val"]), set(s["test"])
    assert not (tr & va) and not (tr & te) and not (va & te)
    assert tr | va | te == set(pool)


@pytest.fixture(scope="module")
def cuhk03(tmp_path_factory):
    """Real sizes (1467 persons in 5 camera pairs), one image per view, person 1 of pair 1 five."""
    d = tmp_path_factory.mktemp("cuhk03")
    views = lambda pair, i, col: (pair, i) == (1, 1) or col in (1, 6)
    F.write_cuhk03(str(d / "cuhk-03.mat"), CUHK03_PAIRS, views, h=4, w=2,
                   testsets=[[(1, 1 + k), (2, 5 + k), (3, 7)] for k in range(20)], detected=False)
    return read_dataset("cuhk03", str(d))


def test_split_names():
    class Facts:
        name, testsets = "X", None
    def names(*a, **kw):
        return [s.name for s in protocol.split_names(*a, **kw)]
    assert names(Facts, "paper") == ["paper"]
    assert names(Facts, "val") == ["val"]
    assert names(Facts, "random") == [f"random{k}" for k in range(10)]
    assert names(Facts, "random", num_splits=3) == ["random0", "random1", "random2"]
    assert names(Facts, "random7") == ["random7"]
    with pytest.raises(MtdnetError, match="there are random0..random9"):
        protocol.split_names(Facts, "random12")
    with pytest.raises(MtdnetError, match="'testsets' is CUHK03's"):
        protocol.split_names(Facts, "testsets")
    with pytest.raises(MtdnetError, match="unknown split 'half'"):
        protocol.split_names(Facts, "half")
    Facts.testsets = [[1]] * 20
    assert names(Facts, "testsets")[-1] == "testsets19"


@needs_real("viper")
def test_viper_paper_split_uses_the_recorded_stems():
    ds = read_dataset("viper")
    s, images = split_of(ds, "paper")
    assert len(s["train"]) == 316 and len(s["test"]) == 316 and s["val"] == []
    assert s["warnings"] == []
    name = {im["index"]: im["path"] for im in images}
    got = {e["person_id"]: (name[e["probe"][0]], name[e["gallery"][0]]) for e in s["eval"]["test"]["identities"]}
    want = {pid: (f"cam_a/{a}.bmp", f"cam_b/{b}.bmp") for pid, a, b in paper_split("viper_test.json")["rows"]}
    assert got == want
    check_partition(s, ds.person_ids())


@needs_real("viper")
def test_viper_val_split_never_touches_the_paper_test_identities():
    """`val` (for tuning) holds out training identities; the paper's test ids are not even imaged."""
    ds = read_dataset("viper")
    paper = protocol.make_split(ds, "paper", 1701)
    s, images = split_of(ds, "val", num_test=100)
    assert len(s["test"]) == 100 and len(s["train"]) == 216
    check_partition(s, paper["train"])
    assert not {im["person_id"] for im in images} & set(paper["test"])
    assert "left out" in s["rule"]
    assert split_of(ds, "val", num_test=100)[0]["test"] == s["test"]              # seeded
    assert split_of(ds, "val", seed=7, num_test=100)[0]["test"] != s["test"]
    assert len(protocol.make_split(ds, "val", 1701)["test"]) == 316 // 3           # default: a third
    with pytest.raises(MtdnetError, match="too few"):
        protocol.make_split(ds, "val", 1701, num_test=315)


def test_viper_paper_split_checks_the_stems(tmp_path):
    rows = paper_split("viper_test.json")["rows"]
    ids = sorted({r[0] for r in rows} | {2, 3})
    F.write_viper(tmp_path, ids)   # names NNN_0 / NNN_90: most recorded stems differ
    ds = read_dataset("viper", str(tmp_path))
    with pytest.raises(MtdnetError, match=r"recorded test images of data_prep/splits/viper_test.json are missing"):
        protocol.make_split(ds, "paper", 1)
    s = protocol.make_split(ds, "random0", 1, num_test=5)   # a random split does not need them
    assert len(s["test"]) == 5


def test_cuhk01_paper_split(tmp_path):
    test = paper_split("cuhk01_test.json")["person_ids"]
    F.write_cuhk01(tmp_path, sorted(test) + [2, 4, 5], h=8, w=4)
    ds = read_dataset("cuhk01", str(tmp_path))
    s, images = split_of(ds, "paper")
    assert s["test"] == sorted(test) and s["train"] == [2, 4, 5]
    assert any("differ from the paper protocol" in w for w in s["warnings"])
    e = s["eval"]["test"]["identities"][0]
    name = {im["index"]: im["path"] for im in images}
    assert [name[i][-7:-4] for i in e["probe"]] == ["001", "002"]
    assert [name[i][-7:-4] for i in e["gallery"]] == ["003"]          # first camera-B image
    assert [name[i][-7:-4] for i in e["gallery_all"]] == ["003", "004"]


def recorded_val():
    return sorted(p * 1000 + i for p, i in paper_split("cuhk03_recorded_val.json")["rows"])


def test_cuhk03_paper_split_is_testsets1_with_the_recorded_validation_list(cuhk03):
    """As the authors' BuildData_cuhk03.py: test = testsets{1}, val = their recorded list."""
    s, images = split_of(cuhk03, "paper")
    assert s["test"] == [1001, 2005, 3007]               # the fixture's testsets{1}
    assert s["val"] == recorded_val() and s["substitute"] is None
    assert "testsets{1} of cuhk-03.mat" in s["rule"]
    assert (len(s["train"]), len(s["val"])) == (1360 - 3 - 100, 100)
    check_partition(s, cuhk03.facts.identities)
    assert all(p // 1000 in (1, 2, 3) for p in s["train"] + s["val"])
    assert not any(im["person_id"] // 1000 in (4, 5) for im in images)   # pairs 4-5: not in the protocol
    assert len(s["eval"]["val"]["identities"]) == 100
    r = protocol.make_split(cuhk03, "random0", 1701)
    again = protocol.make_split(cuhk03, "random0", 1701)
    other = protocol.make_split(cuhk03, "random0", 7)
    assert again["val"] == r["val"] and other["val"] != r["val"]


@pytest.fixture(scope="module")
def cuhk03_folders(tmp_path_factory):
    """torchreid's image folders with the real camera-pair sizes: no cuhk-03.mat, no testsets."""
    d = tmp_path_factory.mktemp("cuhk03_folders")
    F.write_cuhk03_folder(str(d), CUHK03_PAIRS[:3] + [2, 2], h=4, w=2)
    return read_dataset("cuhk03detected", str(d))


def test_cuhk03_without_the_mat_uses_a_named_substitute(cuhk03_folders):
    s, _ = split_of(cuhk03_folders, "paper")
    unknown = sorted(p * 1000 + i for p, i in paper_split("cuhk03_official_testset_index_unknown.json")["rows"])
    assert s["test"] == unknown
    shared = set(recorded_val()) & set(unknown)
    assert len(shared) == 6 and set(recorded_val()) - shared <= set(s["val"]) and len(s["val"]) == 100
    assert not set(s["val"]) & set(s["test"])
    assert s["substitute"] and "index unknown" in s["substitute"] and s["substitute"] in s["warnings"]
    assert "(substitute)" in s["rule"] and "6 drawn from the rest" in s["rule"]
    assert (len(s["train"]), len(s["test"])) == (1160, 100)
    with pytest.raises(MtdnetError, match="no recorded test sets"):
        protocol.split_names(cuhk03_folders.facts, "testsets")


def test_cuhk03_gallery_is_first_camera_b_image(cuhk03):
    s, images = split_of(cuhk03, "testsets0")
    assert s["test"] == [1001, 2005, 3007]
    name = {im["index"]: im["path"] for im in images}
    e = next(e for e in s["eval"]["test"]["identities"] if e["person_id"] == 1001)
    assert [name[i] for i in e["probe"]] == [f"cuhk-03.mat:labeled{{1}}(1,0{c})" for c in range(1, 6)]
    assert [name[i] for i in e["gallery"]] == ["cuhk-03.mat:labeled{1}(1,06)"]
    assert len(e["gallery_all"]) == 5
    assert protocol.make_split(cuhk03, "testsets19", 1)["test"] == [1020, 2024, 3007]
    with pytest.raises(MtdnetError, match="--num-test applies to random and val splits"):
        protocol.make_split(cuhk03, "testsets1", 1, num_test=5)


def test_random_splits_seeded_and_sized(cuhk03):
    a = protocol.make_split(cuhk03, "random0", 5)
    b = protocol.make_split(cuhk03, "random0", 5)
    c = protocol.make_split(cuhk03, "random1", 5)
    assert a["test"] == b["test"] and a["val"] == b["val"]
    assert a["test"] != c["test"]
    assert (len(a["train"]), len(a["val"]), len(a["test"])) == (1160, 100, 100)
    check_partition(a, cuhk03.facts.identities)
    small = protocol.make_split(cuhk03, "random2", 5, num_test=10, num_val=0)
    assert len(small["test"]) == 10 and small["val"] == [] and len(small["train"]) == 1350
    with pytest.raises(MtdnetError, match="too few for 1400 test"):
        protocol.make_split(cuhk03, "random0", 5, num_test=1400)


def test_prid2011_paper_split_with_549_distractors(tmp_path):
    F.write_prid2011(tmp_path, range(1, 386), range(1, 750), h=8, w=4)
    ds = read_dataset("prid2011", str(tmp_path))
    s, images = split_of(ds, "paper")
    assert s["test"] == sorted(paper_split("prid_test.json")["person_ids"])
    assert (len(s["train"]), len(s["test"]), len(s["distractors"])) == (100, 100, 549)
    assert s["warnings"] == []
    d = s["eval"]["test"]["distractors"]
    assert len(d) == 549 and all(images[i]["camera_id"] == 1 and images[i]["person_id"] > 200 for i in d)
    gallery = {i for e in s["eval"]["test"]["identities"] for i in e["gallery"]} | set(d)
    assert len(gallery) == 649                                   # the paper's gallery
    assert not any(im["camera_id"] == 0 and im["person_id"] > 200 for im in images)   # unused


def test_ilids_paper_split(tmp_path):
    rows = paper_split("ilids_test.json")["rows"]
    counts = {pid: 3 for pid in range(1, 120)}
    counts.update({pid: n for pid, n in rows})
    F.write_ilids(tmp_path, counts, h=8, w=4)
    ds = read_dataset("ilids", str(tmp_path))
    s, images = split_of(ds, "paper")
    assert (len(s["train"]), len(s["test"])) == (60, 59) and s["warnings"] == []
    assert s["cameras_known"] is False
    name = {im["index"]: im["path"] for im in images}
    for e in s["eval"]["test"]["identities"]:
        assert [name[i][-7:] for i in e["gallery"]] == ["001.jpg"]
        assert len(e["probe"]) == counts[e["person_id"]] - 1


# ---------------------------------------------------------------- triplets

def toy_images(per_person):
    """images.json-like records: per_person = {pid: (n camera-0 images, n camera-1 images)}."""
    out = []
    for pid, (na, nb) in per_person.items():
        for cam, n in ((0, na), (1, nb)):
            out += [{"index": len(out) + k, "person_id": pid, "camera_id": cam} for k in range(n)]
    return out


def test_triplets_follow_the_authors_rule():
    images = toy_images({1: (2, 3), 2: (1, 1), 3: (1, 2), 4: (1, 1), 5: (1, 1)})   # 5: not training
    train = [1, 2, 3, 4]
    trip, n_pairs = make_triplets(images, train, 10, seed=3)
    assert n_pairs == 2 * 3 + 1 + 2 + 1 and trip.dtype == np.int32 and trip.shape == (n_pairs * 20, 3)
    pid = np.array([im["person_id"] for im in images])
    cam = np.array([im["camera_id"] for im in images])
    a, p, n = trip.T
    assert (pid[a] == pid[p]).all() and (cam[a] != cam[p]).all()
    assert (pid[n] != pid[a]).all() and (cam[n] == cam[p]).all()
    assert set(pid[trip.ravel()]) <= set(train)
    assert (cam[a] == 0).sum() == (cam[a] == 1).sum() == n_pairs * 10    # both directions
    # each positive pair appears 10 times per direction
    pairs, counts = np.unique(np.sort(trip[:, :2], axis=1), axis=0, return_counts=True)
    assert len(pairs) == n_pairs and (counts == 20).all()
    # negatives are spread over the other identities, shuffled, seeded
    assert len(set(pid[n[pid[a] == 1]])) == 3
    assert not (np.diff(trip[:, 0]) >= 0).all()
    again, _ = make_triplets(images, train, 10, seed=3)
    other, _ = make_triplets(images, train, 10, seed=4)
    assert np.array_equal(trip, again) and not np.array_equal(trip, other)


def test_triplets_without_camera_labels():
    images = toy_images({1: (3, 1), 2: (1, 1), 3: (0, 2)})
    pairs = positive_pairs(images, [1, 2, 3], cameras_known=False)
    assert sorted(map(tuple, pairs)) == sorted(list(combinations(range(4), 2)) + [(4, 5), (6, 7)])
    trip, n_pairs = make_triplets(images, [1, 2, 3], 2, seed=0, cameras_known=False)
    pid = np.array([im["person_id"] for im in images])
    assert n_pairs == 8 and len(trip) == 32 and (pid[trip[:, 2]] != pid[trip[:, 0]]).all()


def test_triplets_need_negatives_and_pairs():
    with pytest.raises(MtdnetError, match="fewer than 2 training identities"):
        make_triplets(toy_images({1: (1, 1)}), [1], 10, 0)
    with pytest.raises(MtdnetError, match="no positive cross-camera pair"):
        make_triplets(toy_images({1: (2, 0), 2: (2, 0)}), [1, 2], 10, 0)
