"""Probe / gallery sets of the paper and random protocols, and scoring through them."""
import numpy as np
import pytest

from core import MtdnetError
from mtdnet import cmc as E
from mtdnet import trials as P


def test_paper_trial_two_cameras():
    probes = [(0, 10), (1, 11), (2, 12)]       # camera A
    gallery = [(5, 12), (3, 10), (4, 11)]      # camera B, any order
    t = P.paper_trial(probes, gallery)
    assert t.probe.tolist() == [0, 1, 2] and t.probe_ids.tolist() == [10, 11, 12]
    assert t.gallery.tolist() == [5, 3, 4] and t.gallery_ids.tolist() == [12, 10, 11]
    assert t.n_distractors == 0
    assert P.paper_trial(probes, gallery).to_dict() == t.to_dict()


def test_paper_trial_prid_distractors():
    probes = [(0, 1), (1, 2)]
    gallery = [(10, 1), (11, 2)]
    distractors = [(20, 201), (21, 202), (22, 203)]
    t = P.paper_trial(probes, gallery, distractors)
    assert t.gallery.tolist() == [10, 11, 20, 21, 22]
    assert t.gallery_ids.tolist() == [1, 2, 201, 202, 203]
    assert t.n_distractors == 3
    with pytest.raises(MtdnetError, match="person id 2 is also a probe identity"):
        P.paper_trial(probes, gallery, [(20, 2)])
    with pytest.raises(MtdnetError, match="image index 11 is also a gallery image"):
        P.paper_trial(probes, gallery, [(11, 300)])


def test_paper_trial_ilids_drops_gallery_images_from_probes():
    # i-LIDS: image 1 of each identity is the gallery, the rest are probes. Passing
    # every image as a probe gives the same trial: no image is its own probe.
    images = [(0, 1), (1, 1), (2, 1), (3, 2), (4, 2), (5, 3)]
    gallery = [(0, 1), (3, 2), (5, 3)]
    t = P.paper_trial(images, gallery)
    assert t.probe.tolist() == [1, 2, 4] and t.probe_ids.tolist() == [1, 1, 2]
    assert t.gallery_ids.tolist() == [1, 2, 3]


@pytest.mark.parametrize("probes, gallery, message", [
    ([(0, 1), (1, 9)], [(5, 1)], r"1 probe identity has no gallery image \(person ids 9\)"),
    ([(0, 1), (0, 2)], [(5, 1), (6, 2)], "probes: image index 0 is listed twice"),
    ([(0, 1)], [(5, 1), (5, 2)], "gallery: image index 5 is listed twice"),
    ([(-1, 1)], [(5, 1)], "non-negative integers, got -1"),
    ([(1.5, 1)], [(5, 1)], "non-negative integers, got 1.5"),
    ([], [(5, 1)], "probes: empty list"),
    ([(0, 1)], [], "gallery: empty list"),
    ([7], [(5, 1)], r"expected \(image_index, person_id\) pairs"),
    ([(5, 1)], [(5, 1)], "no probe left"),
])
def test_paper_trial_bad_input(probes, gallery, message):
    with pytest.raises(MtdnetError, match=message):
        P.paper_trial(probes, gallery)


def test_random_trials_one_gallery_image_per_identity():
    probes = [(1000 + i, i) for i in range(5)]
    # identity k has k+1 candidates: indices 100*k + j
    candidates = [(100 * k + j, k) for k in range(5) for j in range(k + 1)]
    trials = P.random_trials(probes, candidates, n_trials=40, seed=3)
    assert len(trials) == 40
    picked = set()
    for t in trials:
        assert t.gallery_ids.tolist() == [0, 1, 2, 3, 4]
        assert all(g // 100 == pid for g, pid in zip(t.gallery.tolist(), t.gallery_ids.tolist()))
        assert t.probe.tolist() == [1000, 1001, 1002, 1003, 1004]
        picked.update(t.gallery.tolist())
    # Over 40 seeded draws every candidate of identity 4 (5 of them) was used.
    assert {400, 401, 402, 403, 404} <= picked
    again = P.random_trials(probes, candidates, n_trials=40, seed=3)
    assert [t.to_dict() for t in again] == [t.to_dict() for t in trials]
    other = P.random_trials(probes, candidates, n_trials=40, seed=4)
    assert [t.gallery.tolist() for t in other] != [t.gallery.tolist() for t in trials]


def test_random_trials_ilids_pool_and_distractors():
    pool = [(0, 1), (1, 1), (2, 1), (3, 2), (4, 2), (5, 3)]   # identity 3 has one image
    distractors = [(50, 900), (51, 901)]
    trials = P.random_trials(pool, pool, n_trials=10, seed=0, distractors=distractors)
    for t in trials:
        assert t.gallery_ids.tolist() == [1, 2, 3, 900, 901]
        assert t.gallery.tolist()[-2:] == [50, 51] and t.n_distractors == 2
        assert not set(t.probe.tolist()) & set(t.gallery.tolist())
        assert t.probe.size == 6 - 3                  # every image but the gallery ones
        assert 3 not in t.probe_ids.tolist()          # its only image is in the gallery
    single = P.random_trials(pool, pool, n_trials=10, seed=0, probes_per_identity=1)
    for t in single:
        assert sorted(t.probe_ids.tolist()) == [1, 2]
        assert not set(t.probe.tolist()) & set(t.gallery.tolist())


@pytest.mark.parametrize("kwargs, message", [
    ({"n_trials": 0}, "trials must be a positive integer"),
    ({"n_trials": 2, "probes_per_identity": 2}, "probes_per_identity must be None or 1"),
])
def test_random_trials_bad_arguments(kwargs, message):
    with pytest.raises(MtdnetError, match=message):
        P.random_trials([(0, 1)], [(1, 1)], seed=0, **kwargs)


def test_random_trials_missing_identity():
    with pytest.raises(MtdnetError, match=r"trial 0: 1 probe identity has no gallery image"):
        P.random_trials([(0, 1), (1, 2)], [(5, 1)], n_trials=3, seed=0)


def test_check_protocol():
    assert P.check_protocol("paper") == "paper"
    with pytest.raises(MtdnetError, match="unknown protocol 'best'; valid: paper, random"):
        P.check_protocol("best")


def test_pairs_from_records():
    records = [
        {"index": 0, "path": "a/1.bmp", "person_id": 1, "camera_id": 0, "role": "train"},
        {"index": 1, "path": "a/2.bmp", "person_id": 2, "camera_id": 0, "role": "test"},
        {"index": 2, "path": "b/2.bmp", "person_id": 2, "camera_id": 1, "role": "test"},
        {"index": 3, "path": "a/3.bmp", "person_id": 3, "camera_id": 0, "role": "test"},
    ]
    assert P.pairs_from_records(records, role="test", camera=0) == [(1, 2), (3, 3)]
    assert P.pairs_from_records(records, role="test", camera=1) == [(2, 2)]
    assert P.pairs_from_records(records, person_ids=[1, 3]) == [(0, 1), (3, 3)]
    with pytest.raises(MtdnetError, match="record 0 lacks the field 'role'"):
        P.pairs_from_records([{"index": 0, "person_id": 1}], role="test")


def _pair_score(i, j):
    # A deterministic "model": integer-valued so ties happen.
    return float((7 * i + 3 * j) % 5)


def test_layout_slicing_and_evaluate_protocol():
    probes = [(i, i % 6) for i in range(12)]                 # two probes per identity
    candidates = [(20 + 2 * k + j, k) for k in range(6) for j in range(2)]
    distractors = [(40, 100), (41, 101)]
    trials = P.random_trials(probes, candidates, n_trials=4, seed=11, distractors=distractors)
    rows, cols = P.score_layout(trials)
    assert rows.tolist() == list(range(12))
    assert set(cols.tolist()) <= {c for c, _ in candidates} | {40, 41}
    full = np.array([[_pair_score(i, j) for j in cols] for i in rows])
    for t in trials:
        block = P.trial_scores(full, rows, cols, t)
        assert block.shape == (t.probe.size, t.gallery.size)
        assert block.tolist() == [[_pair_score(i, j) for j in t.gallery] for i in t.probe]
    res = P.evaluate_protocol(full, rows, cols, trials, protocol="random",
                              higher_is_better=False, seed=11)
    direct = [E.evaluate([[_pair_score(i, j) for j in t.gallery] for i in t.probe],
                         t.probe_ids, t.gallery_ids, higher_is_better=False) for t in trials]
    assert res["trials"] == 4 and res["seed"] == 11 and res["protocol"] == "random"
    assert res["gallery_size"] == 8 and res["score"] == "distance"
    assert res["rank1"] == pytest.approx(np.mean([100 * ev.rank(1) for ev in direct]), abs=1e-4)
    assert res["mAP"] == pytest.approx(np.mean([100 * ev.mAP for ev in direct]), abs=1e-4)
    with pytest.raises(MtdnetError, match="expected \\(12, "):
        P.trial_scores(full[:-1], rows, cols, trials[0])
    with pytest.raises(MtdnetError, match="gallery image 99 is not in the scored layout"):
        P.trial_scores(full, rows, cols, P.paper_trial([(0, 0)], [(99, 0)]))
    with pytest.raises(MtdnetError, match="unknown protocol"):
        P.evaluate_protocol(full, rows, cols, trials, protocol="x", higher_is_better=False)


def _rec(index, pid, cam, role="test"):
    return {"index": index, "path": f"x/{index}.png", "person_id": pid, "camera_id": cam,
            "role": role}


def test_trials_from_records_paper_and_random():
    records = [_rec(0, 1, 0, "train"), _rec(1, 1, 1, "train"),
               _rec(2, 5, 0), _rec(3, 5, 0), _rec(4, 5, 1), _rec(5, 5, 1),   # CUHK03-like
               _rec(6, 6, 0), _rec(7, 6, 1),
               _rec(8, 201, 1), _rec(9, 202, 1, "distractor"), _rec(10, 203, 0)]
    [t] = P.trials_from_records(records, "paper", distractor_ids=[201, 202, 203])
    assert t.probe.tolist() == [2, 3, 6]
    assert t.gallery.tolist() == [4, 7, 8, 9]        # first camera-B image, then distractors
    assert t.gallery_ids.tolist() == [5, 6, 201, 202] and t.n_distractors == 2
    trials = P.trials_from_records(records, "random", n_trials=20, seed=1,
                                   distractor_ids=[201, 202, 203])
    assert len(trials) == 20
    assert {t.gallery[0] for t in trials} == {4, 5}    # person 5 has two candidates
    assert all(t.gallery.tolist()[1:] == [7, 8, 9] for t in trials)
    with pytest.raises(MtdnetError, match="0 'val' images in the probe camera 0"):
        P.trials_from_records(records, "paper", role="val")


def test_trials_from_records_ilids_pool():
    # i-LIDS: camera 1 = each person's image 1 (gallery), camera 0 = the others.
    records = [_rec(0, 3, 1), _rec(1, 3, 0), _rec(2, 3, 0), _rec(3, 4, 1), _rec(4, 4, 0)]
    [t] = P.trials_from_records(records, "paper")
    assert t.probe.tolist() == [1, 2, 4] and t.gallery.tolist() == [0, 3]
    trials = P.trials_from_records(records, "random", n_trials=30, seed=2, pool=True)
    galleries = {tuple(t.gallery.tolist()) for t in trials}
    assert len(galleries) > 1 and all(g[0] in (0, 1, 2) and g[1] in (3, 4) for g in galleries)
    for t in trials:
        assert t.probe.size == 3
        assert not set(t.probe.tolist()) & set(t.gallery.tolist())
