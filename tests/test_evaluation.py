"""CMC / mAP math on hand-computed cases, against a plain loop implementation,
and the whole chain on real VIPeR images (end of file)."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from core import MtdnetError
from data_prep.records import SPLITS_DIR
from mtdnet import cmc as E
from mtdnet import plots
from mtdnet import trials as P
from mtdnet.cmc import loop_rank_ap
from tests.helpers import VIPER, needs_real


def test_simple_ranks_cmc_and_map():
    s = np.array([[0.9, 0.1, 0.2],
                  [0.8, 0.5, 0.1],
                  [0.3, 0.4, 0.2]])
    ev = E.evaluate(s, [1, 2, 3], [1, 2, 3], higher_is_better=True)
    assert ev.ranks.tolist() == [1, 2, 3]
    assert ev.cmc == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert ev.ap == pytest.approx([1.0, 0.5, 1 / 3])
    assert ev.mAP == pytest.approx(11 / 18)
    assert ev.rank(1) == pytest.approx(1 / 3)


def test_ties_rank_the_true_match_behind():
    s = np.array([[0.5, 0.5, 0.5],      # probe 1: ties with both others -> rank 3
                  [0.7, 0.5, 0.5],      # probe 2: beaten by one, ties with one -> rank 3
                  [0.1, 0.2, 0.6]])     # probe 3: clean win -> rank 1
    ev = E.evaluate(s, [1, 2, 3], [1, 2, 3], higher_is_better=True)
    assert ev.ranks.tolist() == [3, 3, 1]
    assert ev.ap == pytest.approx([1 / 3, 1 / 3, 1.0])
    # Probe 2's match at column 3 ties with column 2 too: same rank from the other side.
    ev = E.evaluate(s, [1, 3, 3], [1, 2, 3], higher_is_better=True)
    assert ev.ranks.tolist() == [3, 3, 1]
    # A constant matrix is worst case for every probe, never chance or better.
    ev = E.evaluate(np.zeros((4, 4)), [0, 1, 2, 3], [0, 1, 2, 3], higher_is_better=True)
    assert ev.ranks.tolist() == [4, 4, 4, 4]
    assert ev.rank(1) == 0.0


def test_tied_true_matches_follow_all_tied_wrong_images():
    # gallery ids [1, 1, 2] all at 0.5: the wrong image first, then both matches.
    ev = E.evaluate([[0.5, 0.5, 0.5]], [1], [1, 1, 2], higher_is_better=True)
    assert ev.ranks.tolist() == [2]
    assert ev.ap == pytest.approx([(1 / 2 + 2 / 3) / 2])


def test_several_gallery_images_per_identity():
    # ranking: 0.9 (id 2), 0.8 (id 1), 0.2 (id 1), 0.1 (id 3)
    ev = E.evaluate([[0.2, 0.8, 0.9, 0.1]], [1], [1, 1, 2, 3], higher_is_better=True)
    assert ev.ranks.tolist() == [2]
    assert ev.ap == pytest.approx([(1 / 2 + 2 / 3) / 2])


def test_distance_versus_similarity():
    d = np.array([[0.1, 0.9, 0.4],
                  [0.3, 0.2, 0.1],
                  [0.5, 0.6, 0.7]])
    ids = [1, 2, 3]
    ev = E.evaluate(d, ids, ids, higher_is_better=False)
    assert ev.ranks.tolist() == [1, 2, 3]
    # Read as a similarity the same numbers rank the other way round.
    ev = E.evaluate(d, ids, ids, higher_is_better=True)
    assert ev.ranks.tolist() == [3, 2, 1]
    # Integer distances go through the same path.
    ev = E.evaluate(np.array([[2, 1], [0, 0]]), [1, 2], [1, 2], higher_is_better=False)
    assert ev.ranks.tolist() == [2, 2]


def test_prid_style_distractors():
    # 2 test identities + 3 distractors (ids 201..203) in the gallery.
    g = [1, 2, 201, 202, 203]
    s = np.array([[0.6, 0.3, 0.7, 0.1, 0.65],    # beaten by 2 distractors -> rank 3
                  [0.2, 0.9, 0.95, 0.0, 0.0]])   # beaten by 1 distractor -> rank 2
    ev = E.evaluate(s, [1, 2], g, higher_is_better=True)
    assert ev.gallery_size == 5
    assert ev.ranks.tolist() == [3, 2]
    assert ev.cmc == pytest.approx([0, 0.5, 1, 1, 1])
    assert ev.mAP == pytest.approx((1 / 3 + 1 / 2) / 2)


def test_ilids_style_several_probes_per_identity():
    # 4 probes of 2 identities against a 2-image gallery.
    s = np.array([[0.9, 0.1],
                  [0.2, 0.8],
                  [0.4, 0.4],
                  [0.3, 0.7]])
    ev = E.evaluate(s, [1, 1, 1, 2], [1, 2], higher_is_better=True)
    assert ev.ranks.tolist() == [1, 2, 2, 1]
    assert ev.cmc == pytest.approx([0.5, 1.0])
    assert ev.mAP == pytest.approx((1 + 0.5 + 0.5 + 1) / 4)


def test_rank_beyond_the_gallery_reads_the_whole_gallery():
    s = np.array([[0.1, 0.2, 0.3], [0.3, 0.2, 0.1], [0.0, 0.0, 0.0]])
    ev = E.evaluate(s, [1, 2, 3], [1, 2, 3], higher_is_better=True)
    assert ev.ranks.tolist() == [3, 2, 3]
    assert len(ev.cmc) == 3
    assert ev.rank(20) == ev.rank(3) == 1.0
    summary = E.trial_summary(ev)
    assert summary["rank1"] == 0.0 and summary["rank20"] == 100.0
    assert summary["gallery_size"] == 3
    with pytest.raises(MtdnetError, match="rank must be >= 1"):
        ev.rank(0)


def test_missing_identity_is_an_error_unless_excluded():
    s = np.array([[0.9, 0.1], [0.5, 0.4], [0.2, 0.6]])
    with pytest.raises(MtdnetError, match=r"1 of 3 probes have no true match.*person ids 7"):
        E.evaluate(s, [1, 7, 2], [1, 2], higher_is_better=True)
    ev = E.evaluate(s, [1, 7, 2], [1, 2], higher_is_better=True, exclude_missing=True)
    assert ev.kept.tolist() == [0, 2] and ev.excluded.tolist() == [1]
    assert ev.ranks.tolist() == [1, 1]
    assert E.trial_summary(ev)["n_excluded"] == 1


@pytest.mark.parametrize("scores, probes, gallery, message", [
    (np.ones((2, 3)), [1, 2], [1, 2], r"shape \(2, 3\) but there are 2 probe ids and 2"),
    (np.ones(3), [1], [1, 2, 3], "must be a \\(probes, gallery\\) matrix"),
    (np.array([[0.5, np.nan]]), [1], [1, 2], r"non-finite.*probe 0, gallery 1"),
    (np.array([[np.inf, 0.0]]), [1], [1, 2], "non-finite"),
    (np.zeros((0, 2)), [], [1, 2], "nothing to evaluate"),
    (np.array([["a", "b"]]), [1], [1, 2], "real numbers"),
])
def test_bad_input_is_rejected(scores, probes, gallery, message):
    with pytest.raises(MtdnetError, match=message):
        E.evaluate(scores, probes, gallery, higher_is_better=True)


def _random_case(rng, n_ids, n_probe, per_id, n_distract, integer):
    gallery_ids = np.concatenate([np.repeat(np.arange(n_ids), per_id),
                                  1000 + np.arange(n_distract)])
    probe_ids = rng.integers(0, n_ids, n_probe)
    shape = (n_probe, gallery_ids.size)
    scores = rng.integers(0, 4, shape) if integer else rng.normal(size=shape)
    return scores, probe_ids, gallery_ids


@pytest.mark.parametrize("integer", [False, True])
@pytest.mark.parametrize("higher", [True, False])
@pytest.mark.parametrize("per_id", [1, 3])
def test_vectorised_agrees_with_loop(integer, higher, per_id):
    rng = np.random.default_rng(17 + per_id + 2 * integer + 4 * higher)
    for _ in range(5):
        s, p, g = _random_case(rng, n_ids=12, n_probe=30, per_id=per_id, n_distract=7,
                               integer=integer)
        ev = E.evaluate(s, p, g, higher_is_better=higher)
        ranks, aps = loop_rank_ap(s, p, g, higher)
        assert ev.ranks.tolist() == ranks.tolist()
        assert ev.ap == pytest.approx(aps, rel=1e-12)
        # CMC from the loop ranks, counted directly.
        direct = [(ranks <= k).mean() for k in range(1, g.size + 1)]
        assert ev.cmc == pytest.approx(direct)


def test_chunked_path_agrees_with_loop(monkeypatch):
    # Small chunks exercise the multi-chunk and several-matches-per-probe branches.
    monkeypatch.setattr(E, "_CHUNK_ROWS", 4)
    rng = np.random.default_rng(5)
    s, p, g = _random_case(rng, n_ids=6, n_probe=23, per_id=2, n_distract=3, integer=True)
    ev = E.evaluate(s, p, g, higher_is_better=True)
    ranks, aps = loop_rank_ap(s, p, g, True)
    assert ev.ranks.tolist() == ranks.tolist()
    assert ev.ap == pytest.approx(aps)


def test_ranked_gallery_order_matches_ranks():
    rng = np.random.default_rng(3)
    s, p, g = _random_case(rng, n_ids=8, n_probe=20, per_id=2, n_distract=4, integer=True)
    ev = E.evaluate(s, p, g, higher_is_better=False)
    for i in range(len(p)):
        order, match, first = E.ranked_gallery(s[i], g, p[i], higher_is_better=False)
        assert first == ev.ranks[i]
        assert sorted(order.tolist()) == list(range(g.size))
        keyed = s[i][order]
        assert np.all(np.diff(keyed) >= 0)       # distances: best (smallest) first
        # Among equal scores, wrong images come before true matches.
        for a in range(len(order) - 1):
            if keyed[a] == keyed[a + 1]:
                assert not (match[a] and not match[a + 1])
    order, match, first = E.ranked_gallery([0.1, 0.9, 0.5], [1, 2, 3], 3,
                                           higher_is_better=True, top=2)
    assert order.tolist() == [1, 2] and match.tolist() == [False, True] and first == 2
    assert E.ranked_gallery([0.1], [1], 9, higher_is_better=True)[2] is None


def test_squared_euclidean_distances():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(4, 5)), rng.normal(size=(6, 5))
    d = E.squared_euclidean_distances(a, b)
    loop = [[float(((x - y) ** 2).sum()) for y in b] for x in a]
    assert d == pytest.approx(np.array(loop))
    assert (E.squared_euclidean_distances(a, a).diagonal() >= 0).all()
    with pytest.raises(MtdnetError, match="same D"):
        E.squared_euclidean_distances(a, rng.normal(size=(2, 3)))


def test_protocol_result_means_and_spread():
    ids = [1, 2]
    ev_a = E.evaluate([[0.9, 0.1], [0.1, 0.9]], ids, ids, higher_is_better=True)  # ranks 1, 1
    ev_b = E.evaluate([[0.1, 0.9], [0.1, 0.9]], ids, ids, higher_is_better=True)  # ranks 2, 1
    res = E.protocol_result([ev_a, ev_b], "random", higher_is_better=True, seed=7)
    assert res["protocol"] == "random" and res["trials"] == 2 and res["seed"] == 7
    assert res["rank1"] == pytest.approx(75.0)
    assert res["rank1_std"] == pytest.approx(np.std([100.0, 50.0], ddof=1), abs=1e-4)
    assert res["rank5"] == 100.0 and res["rank20"] == 100.0
    assert res["mAP"] == pytest.approx((100.0 + 75.0) / 2)
    assert res["cmc"] == pytest.approx([75.0, 100.0])
    assert [t["rank1"] for t in res["per_trial"]] == [100.0, 50.0]
    assert res["score"] == "similarity" and res["n_probes"] == 2 and res["gallery_size"] == 2
    single = E.protocol_result([ev_b], "paper", higher_is_better=False)
    assert single["trials"] == 1 and single["rank1_std"] == 0.0 and single["rank1"] == 50.0
    assert single["score"] == "distance"
    for key in ("protocol", "rank1", "rank5", "rank10", "rank20", "mAP", "trials", "cmc"):
        assert key in single
    assert json.loads(json.dumps(res)) == res          # plain JSON types only


def test_combine_splits():
    ids = [1, 2]
    good = E.evaluate([[0.9, 0.1], [0.1, 0.9]], ids, ids, higher_is_better=True)
    half = E.evaluate([[0.1, 0.9], [0.1, 0.9]], ids, ids, higher_is_better=True)
    r1 = E.protocol_result([good, half], "random", higher_is_better=True, seed=1)  # 75
    r2 = E.protocol_result([half], "random", higher_is_better=True, seed=2)        # 50
    out = E.combine_splits([r1, r2], names=["random0", "random1"])
    assert out["splits"] == 2 and out["trials"] == 3
    assert out["rank1"] == pytest.approx(62.5)
    assert out["rank1_std"] == pytest.approx(np.std([75.0, 50.0], ddof=1), abs=1e-4)
    assert out["cmc"] == pytest.approx([62.5, 100.0])
    assert [s["name"] for s in out["per_split"]] == ["random0", "random1"]
    with pytest.raises(MtdnetError, match="different protocols"):
        E.combine_splits([r1, E.protocol_result([half], "paper", higher_is_better=True)])
    with pytest.raises(MtdnetError, match="similarity and distance"):
        E.combine_splits([r1, E.protocol_result([half], "random", higher_is_better=False)])
    with pytest.raises(MtdnetError, match="no split results"):
        E.combine_splits([])

# ---- real data ------------------------------------------------------------------
# The evaluation chain on real data: VIPeR's paper split, real images, a fixed
# hand-made feature (stripe colour histograms), paper protocol -> CMC / mAP -> PNGs.
#
# The feature has no randomness, so the numbers are fixed; the thresholds only
# guard the chain. It gives about 9.5% rank-1 on the 316-person gallery (chance
# 0.32%): we ask for 10x chance (3.2%), and the same distances read the wrong way
# round (as similarities) must fall to about chance or below, which catches a
# flipped score direction or a broken identity alignment.

SPLIT = os.path.join(SPLITS_DIR, "viper_test.json")   # the authors' recorded split, shipped


def stripe_histograms(path, stripes=8, bins=8):
    hsv = np.asarray(Image.open(path).convert("HSV"), dtype=np.float64) / 255.0
    parts = []
    for band in np.array_split(hsv, stripes, axis=0):
        for c in range(3):
            h, _ = np.histogram(band[..., c], bins=bins, range=(0.0, 1.0))
            parts.append(h / h.sum())
    return np.sqrt(np.concatenate(parts))     # Hellinger: Euclidean on square roots


@pytest.fixture(scope="module")
def viper():
    with open(SPLIT) as f:
        rows = json.load(f)["rows"]
    cam_a = [os.path.join(VIPER, "cam_a", a + ".bmp") for _, a, _ in rows]
    cam_b = [os.path.join(VIPER, "cam_b", b + ".bmp") for _, _, b in rows]
    ids = [pid for pid, _, _ in rows]
    # Image indices as a prepared dataset would number them: cam_a, then cam_b.
    probes = [(i, pid) for i, pid in enumerate(ids)]
    gallery = [(len(ids) + i, pid) for i, pid in enumerate(ids)]
    feats = np.array([stripe_histograms(p) for p in cam_a + cam_b])
    return ids, cam_a + cam_b, probes, gallery, feats


@needs_real("viper")
def test_paper_protocol_on_real_viper(viper, tmp_path):
    ids, paths, probes, gallery, feats = viper
    assert len(set(ids)) == 316
    trial = P.paper_trial(probes, gallery)
    rows, cols = P.score_layout([trial])
    dist = E.squared_euclidean_distances(feats[rows], feats[cols])
    res = P.evaluate_protocol(dist, rows, cols, [trial], protocol="paper",
                              higher_is_better=False)
    chance = 100.0 / 316
    assert res["gallery_size"] == 316 and res["n_probes"] == 316 and len(res["cmc"]) == 316
    assert res["rank1"] > 10 * chance
    assert res["rank1"] <= res["rank5"] <= res["rank10"] <= res["rank20"] <= 100.0
    assert res["rank20"] > 3 * 20 * chance
    flipped = P.evaluate_protocol(dist, rows, cols, [trial], protocol="paper",
                                  higher_is_better=True)
    assert flipped["rank1"] <= chance
    # The vectorised ranks agree with the plain loop on real scores.
    ranks, aps = loop_rank_ap(dist, trial.probe_ids, trial.gallery_ids, False)
    ev = E.evaluate(dist, trial.probe_ids, trial.gallery_ids, higher_is_better=False)
    assert ev.ranks.tolist() == ranks.tolist()
    assert res["mAP"] == pytest.approx(100 * aps.mean(), abs=1e-4)
    # The pictures of a real result.
    cmc = plots.plot_cmc({"stripe histograms": res}, tmp_path / "cmc.png", title="VIPeR")
    with Image.open(cmc) as im:
        assert im.size == plots.CMC_SIZE
    shown = plots.ranked_gallery_rows(dist, trial.probe_ids, trial.gallery_ids,
                                      [paths[i] for i in trial.probe],
                                      [paths[j] for j in trial.gallery],
                                      higher_is_better=False, n_rows=4)
    assert [r["first_match_rank"] for r in shown] == \
        [int(ev.ranks[i]) for i in np.linspace(0, 315, 4).round().astype(int)]
    out = plots.plot_ranked_gallery(shown, tmp_path / "ranked.png", title="VIPeR")
    with Image.open(out) as im:
        assert im.size == plots.ranked_gallery_size(4, 10)
