"""Pair and feature scoring through pycaffe with the generated tiny deploy nets.

The models are real train-net snapshots (the tiny MTDnet / MTDnet-rnk train
nets instantiated on prepared synthetic data and saved with net.save), their
weights redrawn at a scale where scores differ from pair to pair, so a
mixed-up pair, pass or mirror shows. The helpers here (prepare_synthetic,
make_model, deploy_file) are shared with test_eval.py.
"""
import os

import numpy as np
import pytest

from core import MtdnetError
from core.profiles import get_profile
from mtdnet import scoring
from tests.helpers import PROFILE, deploy_file, make_model, prepare_synthetic, save_deploy_model



# ---- fixtures -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("scoring"))
    data = prepare_synthetic(root)
    from data_prep.imagedb import ImageDB
    db = ImageDB(os.path.join(data, "synthetic-tiny-paper", "images.lmdb"))
    images = db.images(range(7))
    db.close()
    return dict(root=root, data=data, images=images,
                mtdnet=make_model(os.path.join(root, "m", "mtdnet.caffemodel"), data, "mtdnet", 1),
                rnk=make_model(os.path.join(root, "m", "rnk.caffemodel"), data, "rnk", 2))


@pytest.fixture(scope="module")
def pair_net(world):
    return scoring.load_net(deploy_file(world["root"], "pair_score"), world["mtdnet"])


def one_pass(net, a, b):
    """P(same) of the single pair (a, b) in this input order, batch of one."""
    for name, img in (("data_1", a), ("data_2", b)):
        net.blobs[name].reshape(1, *img.shape)
        net.blobs[name].data[0] = img.astype(np.float32)
    net.reshape()
    return float(net.forward()["prob"][0, 1])


def by_hand(net, p, g):
    vals = []
    for pp in (p, p[..., ::-1]):
        for gg in (g, g[..., ::-1]):
            vals += [one_pass(net, pp, gg), one_pass(net, gg, pp)]
    return np.mean(vals), vals


# ---- pair scores -------------------------------------------------------------------

def test_pair_scores_equal_the_eight_passes_by_hand(world, pair_net):
    imgs = world["images"]
    probes, gallery = imgs[:3], imgs[3:7]
    # batch 5 does not divide 3 x 4 pairs: batches cross probe boundaries and end short.
    s = scoring.pair_scores_naive(pair_net, probes, gallery, batch=5)
    assert s.shape == (3, 4) and s.dtype == np.float64
    for i, j in ((0, 0), (1, 3), (2, 1)):
        mean, passes = by_hand(pair_net, probes[i], gallery[j])
        assert s[i, j] == pytest.approx(mean, abs=1e-6)
        # The passes disagree, so leaving out a mirror or an order would show.
        assert max(passes) - min(passes) > 1e-3
    assert s.std() > 1e-3
    assert ((s > 0) & (s < 1)).all()


def test_pair_score_is_symmetric_and_batch_independent(world, pair_net):
    imgs = world["images"]
    a, b = imgs[:3], imgs[3:7]
    s_ab = scoring.pair_scores_naive(pair_net, a, b, batch=64)
    s_ba = scoring.pair_scores_naive(pair_net, b, a, batch=1)
    np.testing.assert_allclose(s_ab, s_ba.T, atol=1e-6)


def test_fast_scorer_gives_the_naive_scores(world, pair_net):
    """conv3 split into its two halves, computed once per image: the same scores to 1e-5."""
    imgs = world["images"]
    probes, gallery = imgs[:3], imgs[2:7]   # image 2 on both sides
    naive = scoring.pair_scores_naive(pair_net, probes, gallery, batch=4)
    fast = scoring.pair_scores_fast(pair_net, probes, gallery, batch=4)
    assert naive.std() > 1e-3  # the scores differ, so a wrong pairing would show
    np.testing.assert_allclose(fast, naive, atol=1e-5, rtol=0)
    # Batch size changes only the speed.
    np.testing.assert_allclose(scoring.pair_scores_fast(pair_net, probes, gallery, batch=64), fast, atol=1e-6)


def test_fast_scorer_in_small_memory_blocks_gives_the_same_scores(world, pair_net, monkeypatch):
    """A budget smaller than the cached halves of all images: blocks of probes x gallery
    images, each within the budget, and the same scores as all at once."""
    imgs = world["images"]
    probes, gallery = imgs[:3], imgs[2:7]
    per = scoring.Conv3Halves(pair_net).bytes_per_image
    c = pair_net.blobs["conv3_pair"].data.shape[1:]
    assert per == 2 * 2 * 4 * int(np.prod(c))       # 2 mirror states x 2 halves, float32
    whole = scoring.pair_scores_fast(pair_net, probes, gallery, batch=4)
    np.testing.assert_allclose(whole, scoring.pair_scores_naive(pair_net, probes, gallery), atol=1e-5, rtol=0)

    cached = []
    empty = scoring.Conv3Halves.empty
    monkeypatch.setattr(scoring.Conv3Halves, "empty", lambda self, n: cached.append(n) or empty(self, n))

    class Bar:
        n = 0

        def update(self, k):
            self.n += k
    # budget (in images) -> (probes, gallery images) per block; batch 4
    for images, blocks in ((8, (3, 5)), (6, (2, 4)), (3, (1, 2)), (0, (1, 1))):
        memory = images * per
        assert scoring.block_sizes(3, 5, per, memory, batch=4) == blocks
        cached.clear()
        bar = Bar()
        s = scoring.pair_scores_fast(pair_net, probes, gallery, batch=4, progress=bar, memory=memory)
        assert cached == list(blocks)
        if images:
            assert sum(cached) * per <= memory
        assert bar.n == 15                                # every pair once
        # Only BLAS rounding of other batch compositions may differ (~1e-8).
        np.testing.assert_allclose(s, whole, atol=1e-6, rtol=0)


def test_block_sizes():
    # Everything fits; probes fill the budget beside a batch of gallery images; the
    # probes fit and the gallery takes the rest; never less than one image each.
    assert scoring.block_sizes(10, 100, 1, 110) == (10, 100)
    assert scoring.block_sizes(100, 1000, 1, 150, batch=16) == (100, 50)
    assert scoring.block_sizes(1000, 10000, 1, 1032, batch=64) == (968, 64)
    assert scoring.block_sizes(5, 7, 1000, 10) == (1, 1)


def test_score_matrix_pair_reports_similarity_and_progress(world, pair_net):
    imgs = world["images"]

    class Bar:
        n = 0

        def update(self, k):
            self.n += k
    bar = Bar()
    s = scoring.pair_scores_naive(pair_net, imgs[:2], imgs[2:5], batch=4, progress=bar)
    assert bar.n == 6
    s2, higher = scoring.score_matrix("pair", pair_net, imgs[:2], imgs[2:5], progress=False)
    assert higher is True
    np.testing.assert_allclose(s, s2, atol=1e-6)
    with pytest.raises(MtdnetError, match="unknown scorer 'bogus'"):
        scoring.score_matrix("pair", pair_net, imgs[:2], imgs[2:5], scorer="bogus", progress=False)


# ---- features ----------------------------------------------------------------------

@pytest.mark.parametrize("kind,variant", [("feature", "mtdnet"), ("rnk_feature", "rnk")])
def test_feature_distances_by_hand(world, kind, variant):
    net = scoring.load_net(deploy_file(world["root"], kind), world[variant])
    imgs = world["images"]
    probes, gallery = imgs[:3], imgs[3:7]
    d, higher = scoring.score_matrix("feature", net, probes, gallery, progress=False)
    assert higher is False and d.shape == (3, 4)

    def feat(img):
        net.blobs["data"].reshape(1, *img.shape)
        net.blobs["data"].data[0] = img.astype(np.float32)
        net.reshape()
        return net.forward()["feature"][0].astype(np.float64).ravel()
    for i in range(3):
        for j in range(4):
            fp = [feat(probes[i]), feat(probes[i][..., ::-1])]
            fg = [feat(gallery[j]), feat(gallery[j][..., ::-1])]
            for f in fp + fg:
                assert np.linalg.norm(f) == pytest.approx(1.0, abs=1e-4)   # L2-normalised
            want = np.mean([np.sum((x - y) ** 2) for x in fp for y in fg])
            assert d[i, j] == pytest.approx(want, abs=1e-5)
    assert (d >= 0).all() and (d <= 4 + 1e-6).all() and d.std() > 1e-3
    # The mirror matters for these weights: the plain distance differs from the average.
    plain = np.sum((feat(probes[0]) - feat(gallery[0])) ** 2)
    assert abs(plain - d[0, 0]) > 1e-4


# ---- errors --------------------------------------------------------------------------

def test_missing_files_are_clear_errors(world, tmp_path):
    deploy = deploy_file(world["root"], "pair_score")
    with pytest.raises(MtdnetError, match=r"nope\.caffemodel: model not found"):
        scoring.load_net(deploy, str(tmp_path / "nope.caffemodel"))
    with pytest.raises(MtdnetError, match="deploy net not found"):
        scoring.load_net(str(tmp_path / "none.prototxt"), world["mtdnet"])


def test_model_of_another_profile_does_not_fit(world):
    cpu_model = save_deploy_model(os.path.join(world["root"], "cpu_pair.caffemodel"), "pair_score", "cpu")
    cpu, tiny = get_profile("cpu").conv1, get_profile(PROFILE).conv1
    assert cpu != tiny
    with pytest.raises(MtdnetError, match=rf"layer 'conv1' blob 0 has shape \({cpu}, 3, 11, 11\)"
                                          rf".*\({tiny}, 3, 11, 11\).*does not fit"):
        scoring.load_net(deploy_file(world["root"], "pair_score"), cpu_model)


def test_model_of_another_variant_does_not_fit(world):
    with pytest.raises(MtdnetError, match=r"no weights for layer\(s\) conv3_pair.*wrong variant"):
        scoring.load_net(deploy_file(world["root"], "pair_score"), world["rnk"])
    with pytest.raises(MtdnetError, match=r"no weights for layer\(s\) conv3, conv4, conv5, fc6, fc7, fc8_rnk"):
        scoring.load_net(deploy_file(world["root"], "rnk_feature"), world["mtdnet"])


def test_garbage_model_file(world, tmp_path):
    bad = tmp_path / "bad.caffemodel"
    bad.write_bytes(b"\xff\xfe not a protobuf \x00" * 10)
    with pytest.raises(MtdnetError, match="bad.caffemodel"):
        scoring.load_net(deploy_file(world["root"], "pair_score"), str(bad))


def test_images_of_the_wrong_size(pair_net):
    size = get_profile(PROFILE).input_size
    wrong = np.zeros((2, 3, size - 2, size - 2), np.uint8)
    with pytest.raises(MtdnetError, match=rf"probes: images of shape \(3, {size - 2}, {size - 2}\)"
                                          rf".*\(3, {size}, {size}\)"):
        scoring.pair_scores_naive(pair_net, wrong, wrong)
