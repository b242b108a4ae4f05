"""The Python layers of MTDnet: triplet loss, pair regrouping, XNOR label.

Each layer's math is checked in float64 numpy (analytic vs numerical
gradients), then the Caffe layer itself in float32 through pycaffe on a small
net with force_backward: forward against numpy, backward against numerical
derivatives of what Caffe computes, with loss weights other than 1.
"""
import json

import numpy as np
import pytest

import caffe
from caffe import layers as L

from layers import pair_regroup, triplet_loss, xnor_label
from layers.params import LayerParamError, parse_params

caffe.set_mode_cpu()


def numerical_grad(f, x, h):
    """Central differences of the scalar f() w.r.t. every entry of x (modified in place)."""
    g = np.zeros(x.shape, np.float64)
    for i in np.ndindex(x.shape):
        old = x[i]
        x[i] = old + h
        up = f()
        x[i] = old - h
        down = f()
        x[i] = old
        g[i] = (up - down) / (2 * h)
    return g


def mixed_triplets(n=8, d=5, seed=0, margin=1.0, normalize=True, gap=0.2):
    """Raw features with some active and some inactive hinges, none within `gap` of the kink."""
    rng = np.random.RandomState(seed)
    while True:
        a, p, n_ = (rng.randn(n, d) * rng.uniform(0.5, 3, (n, 1)) for _ in range(3))
        p = a + rng.uniform(0.1, 1.2, (n, 1)) * p / np.linalg.norm(p, axis=1, keepdims=True)
        f = [triplet_loss.l2_normalize(x)[0] for x in (a, p, n_)] if normalize else (a, p, n_)
        h = margin + np.sum((f[0] - f[1]) ** 2, 1) - np.sum((f[0] - f[2]) ** 2, 1)
        if np.all(np.abs(h) > gap) and 2 <= np.sum(h > 0) <= n - 2:
            return a, p, n_, h > 0


# ---------------------------------------------------------------- float64 numpy

def test_l2_normalize_gradient():
    rng = np.random.RandomState(1)
    x = rng.randn(4, 6) * 3
    w = rng.randn(4, 6)
    y, norm = triplet_loss.l2_normalize(x)
    np.testing.assert_allclose(np.linalg.norm(y, axis=1), 1, rtol=1e-12)
    num = numerical_grad(lambda: np.sum(w * triplet_loss.l2_normalize(x)[0]), x, 1e-6)
    np.testing.assert_allclose(triplet_loss.l2_normalize_backward(y, norm, w), num, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("scale", [1.0, 0.3])
def test_triplet_loss_gradient_numpy(normalize, scale):
    margin = 1.0 if normalize else 4.0
    a, p, n, active = mixed_triplets(normalize=normalize, margin=margin, seed=2)

    def loss():
        return scale * triplet_loss.normalized_triplet_forward(a, p, n, margin, normalize)[0]
    l, cache = triplet_loss.normalized_triplet_forward(a, p, n, margin, normalize)
    np.testing.assert_array_equal(cache[-1], active)
    grads = triplet_loss.normalized_triplet_backward(cache, scale)
    for x, g in zip((a, p, n), grads):
        np.testing.assert_allclose(g, numerical_grad(loss, x, 1e-6), rtol=1e-5, atol=1e-9)
        assert np.all(g[~active] == 0) and np.all(np.abs(g[active]).sum(1) > 0)


def test_triplet_loss_formula():
    """L = 1/(2N) sum max(0, m + |a-p|^2 - |a-n|^2); active-hinge gradients (n-p)/N, (p-a)/N, (a-n)/N."""
    a = np.array([[1.0, 0], [0, 1]])
    p = np.array([[0.0, 1], [0, 1]])
    n = np.array([[0.0, 1], [0, -1]])
    # Triplet 0: 1 + 2 - 2 = 1 > 0 (active); triplet 1: 1 + 0 - 4 < 0.
    loss, active = triplet_loss.triplet_forward(a, p, n, 1.0)
    assert loss == pytest.approx(1.0 / 4)
    assert active.tolist() == [True, False]
    da, dp, dn = triplet_loss.triplet_backward(a, p, n, active)
    np.testing.assert_allclose(da[0], (n[0] - p[0]) / 2)
    np.testing.assert_allclose(dp[0], (p[0] - a[0]) / 2)
    np.testing.assert_allclose(dn[0], (a[0] - n[0]) / 2)
    assert not da[1].any() and not dp[1].any() and not dn[1].any()


@pytest.mark.parametrize("order", pair_regroup.ORDERS)
def test_pair_regroup_numpy(order):
    rng = np.random.RandomState(3)
    a, p, n = (rng.randn(3, 2, 2, 2) for _ in range(3))
    pairs = pair_regroup.regroup_forward(a, p, n, order)
    labels = pair_regroup.pair_labels(3, order)
    assert pairs.shape == (6, 4, 2, 2) and labels.sum() == 3
    for row in range(6):
        i = row % 3 if order == "blocked" else row // 2
        other = p[i] if labels[row] == 1 else n[i]
        np.testing.assert_array_equal(pairs[row], np.concatenate([a[i], other]))
    w = rng.randn(*pairs.shape)

    def f():
        return np.sum(w * pair_regroup.regroup_forward(a, p, n, order))
    for x, g in zip((a, p, n), pair_regroup.regroup_backward(w, order)):
        np.testing.assert_allclose(g, numerical_grad(f, x, 1e-6), rtol=1e-6, atol=1e-9)


def test_xnor_truth_table_and_bad_labels():
    np.testing.assert_array_equal(xnor_label.xnor([0, 0, 1, 1], [0, 1, 0, 1]), [1, 0, 0, 1])
    with pytest.raises(ValueError, match=r"0 or 1.*row 1"):
        xnor_label.xnor([0, 2], [0, 1])


@pytest.mark.parametrize("schema,param_str,msg", [
    (triplet_loss.SCHEMA, '{"margn": 1}', r"unknown param_str key.*margn"),
    (triplet_loss.SCHEMA, '{"margin": -0.5}', r"'margin'=-0.5: must be >= 0"),
    (triplet_loss.SCHEMA, '{"margin": "1"}', r"'margin' must be float"),
    (triplet_loss.SCHEMA, '{"normalize": 1}', r"'normalize' must be bool"),
    (pair_regroup.SCHEMA, '{"order": "random"}', r"'order'='random': must be one of"),
    (xnor_label.SCHEMA, '{"margin": 1}', r"unknown param_str key.*margin"),
    (triplet_loss.SCHEMA, '{margin: 1}', r"not valid JSON"),
])
def test_param_str_validation(schema, param_str, msg):
    with pytest.raises(LayerParamError, match=msg):
        parse_params("L", param_str, schema)


def test_param_str_defaults():
    assert parse_params("L", "", triplet_loss.SCHEMA) == {"margin": 1.0, "normalize": True}
    assert parse_params("L", "", pair_regroup.SCHEMA) == {"order": "blocked"}


# ---------------------------------------------------------------- float32 through pycaffe

def _net(tmp_path, build):
    n = caffe.NetSpec()
    build(n)
    path = tmp_path / "net.prototxt"
    path.write_text("force_backward: true\n" + str(n.to_proto()))
    return caffe.Net(str(path), caffe.TRAIN)


def _inputs(n, shapes):
    for name, shape in shapes.items():
        setattr(n, name, L.Input(shape=dict(dim=list(shape))))


def _python(*bottoms, module, layer, params=None, **kw):
    return L.Python(*bottoms, python_param=dict(module=module, layer=layer,
                                                param_str=json.dumps(params or {})), **kw)


def caffe_numerical_grad(net, blob, out, h):
    """d(net output `out`)/d(input `blob`) by central differences through Caffe's forward (float32)."""
    x = net.blobs[blob].data

    def f():
        return float(net.forward()[out].ravel()[0])
    g = numerical_grad(f, x, h)
    net.forward()
    return g


@pytest.mark.parametrize("weight", [1.0, 2.5])
def test_triplet_loss_layer_in_caffe(tmp_path, weight):
    a, p, n, active = mixed_triplets(n=6, d=5, seed=4, gap=0.3)

    def build(ns):
        _inputs(ns, dict(a=a.shape, p=p.shape, n=n.shape))
        ns.loss = _python(ns.a, ns.p, ns.n, module="layers.triplet_loss", layer="TripletLossLayer",
                          params=dict(margin=1.0), loss_weight=weight)
    net = _net(tmp_path, build)
    for name, x in zip("apn", (a, p, n)):
        net.blobs[name].data[...] = x
    out = net.forward()
    expect, _ = triplet_loss.normalized_triplet_forward(*(x.astype(np.float32).astype(np.float64)
                                                          for x in (a, p, n)), 1.0)
    assert float(out["loss"][0]) == pytest.approx(expect, rel=1e-5)
    net.backward()
    for name in "apn":
        analytic = net.blobs[name].diff.copy()
        num = weight * caffe_numerical_grad(net, name, "loss", 1e-3)
        np.testing.assert_allclose(analytic, num, rtol=2e-2, atol=2e-3 * weight)
        # Inactive hinges give nothing; active ones do.
        assert np.all(analytic[~active] == 0)
        assert np.all(np.abs(analytic[active]).sum(1) > 1e-3)


def test_triplet_loss_layer_all_inactive_and_any_batch(tmp_path):
    """One triplet, far from its margin: loss 0, zero gradients."""
    a = np.array([[1.0, 0, 0]])
    p = np.array([[1.0, 0.01, 0]])
    n = np.array([[-1.0, 0, 0]])

    def build(ns):
        _inputs(ns, dict(a=(1, 3, 1, 1), p=(1, 3, 1, 1), n=(1, 3, 1, 1)))
        ns.loss = _python(ns.a, ns.p, ns.n, module="layers.triplet_loss", layer="TripletLossLayer",
                          params=dict(margin=1.0), loss_weight=3.0)
    net = _net(tmp_path, build)
    for name, x in zip("apn", (a, p, n)):
        net.blobs[name].data[...] = x.reshape(1, 3, 1, 1)
    assert float(net.forward()["loss"][0]) == 0
    net.backward()
    for name in "apn":
        assert not net.blobs[name].diff.any()


@pytest.mark.parametrize("order", pair_regroup.ORDERS)
def test_pair_regroup_layer_in_caffe(tmp_path, order):
    """PairRegroup -> EuclideanLoss (weight 1.5) against a fixed target; gradients vs Caffe's forward."""
    rng = np.random.RandomState(5)
    shape = (3, 2, 2, 2)
    a, p, n = (rng.randn(*shape) for _ in range(3))
    target = rng.randn(6, 4, 2, 2)

    def build(ns):
        _inputs(ns, dict(a=shape, p=shape, n=shape, target=target.shape))
        ns.pairs, ns.labels = _python(ns.a, ns.p, ns.n, module="layers.pair_regroup", layer="PairRegroupLayer",
                                      params=dict(order=order), ntop=2)
        ns.loss = L.EuclideanLoss(ns.pairs, ns.target, loss_weight=1.5)
    net = _net(tmp_path, build)
    for name, x in zip(("a", "p", "n", "target"), (a, p, n, target)):
        net.blobs[name].data[...] = x
    net.forward()
    np.testing.assert_allclose(net.blobs["pairs"].data, pair_regroup.regroup_forward(a, p, n, order), rtol=1e-6)
    np.testing.assert_array_equal(net.blobs["labels"].data, pair_regroup.pair_labels(3, order))
    assert net.blobs["labels"].data.shape == (6,)
    net.backward()
    dpairs = net.blobs["pairs"].diff.copy()
    da = net.blobs["a"].diff.copy()
    # The anchor's gradient is the sum of its positive and negative pair's.
    pos, neg = pair_regroup.pair_rows(3, order)
    np.testing.assert_allclose(da, dpairs[pos, :2] + dpairs[neg, :2], rtol=1e-6)
    for name in "apn":
        analytic = net.blobs[name].diff.copy()
        num = 1.5 * caffe_numerical_grad(net, name, "loss", 1e-2)
        np.testing.assert_allclose(analytic, num, rtol=1e-2, atol=1e-3)


def test_xnor_layer_feeds_caffe_contrastive_loss(tmp_path):
    """XNOR labels have the (M,1,1,1) shape ContrastiveLoss wants; its loss matches eq. (4)."""
    rng = np.random.RandomState(6)
    m, d, margin = 8, 4, 1.0
    la = pair_regroup.pair_labels(4, "interleaved")
    lb = pair_regroup.pair_labels(4, "blocked")
    fa, fb = rng.randn(m, d) * 0.4, rng.randn(m, d) * 0.4

    def build(ns):
        _inputs(ns, dict(la=(m,), lb=(m,), fa=(m, d), fb=(m, d)))
        ns.y = _python(ns.la, ns.lb, module="layers.xnor_label", layer="XnorLabelLayer")
        ns.loss = L.ContrastiveLoss(ns.fa, ns.fb, ns.y, margin=margin, loss_weight=1)
    net = _net(tmp_path, build)
    for name, x in dict(la=la, lb=lb, fa=fa, fb=fb).items():
        net.blobs[name].data[...] = x
    out = net.forward()
    y = (la == lb).astype(float)
    assert net.blobs["y"].data.shape == (m, 1, 1, 1)
    np.testing.assert_array_equal(net.blobs["y"].data.ravel(), y)
    assert 0 < y.sum() < m  # interleaved vs blocked: not a constant label
    dist = np.linalg.norm(fa - fb, axis=1)
    expect = np.sum(y * dist ** 2 + (1 - y) * np.maximum(margin - dist, 0) ** 2) / (2 * m)
    assert float(out["loss"]) == pytest.approx(expect, rel=1e-5)
    net.blobs["la"].diff[...] = 7
    net.backward()  # force_backward reaches the XNOR layer: labels get zero gradient
    assert not net.blobs["la"].diff.any() and not net.blobs["lb"].diff.any()


@pytest.mark.parametrize("layer,params,bottoms,msg", [
    ("TripletLossLayer", {"margn": 1}, 3, "margn"),
    ("TripletLossLayer", {"margin": -1}, 3, "must be >= 0"),
    ("PairRegroupLayer", {"order": "shuffled"}, 3, "must be one of"),
    ("XnorLabelLayer", {"seed": 1}, 2, "seed"),
])
def test_bad_param_str_stops_net_setup(tmp_path, layer, params, bottoms, msg):
    module = {"TripletLossLayer": "layers.triplet_loss", "PairRegroupLayer": "layers.pair_regroup",
              "XnorLabelLayer": "layers.xnor_label"}[layer]
    ntop = 2 if layer == "PairRegroupLayer" else 1

    def build(ns):
        _inputs(ns, {f"x{i}": (2, 3) for i in range(bottoms)})
        tops = _python(*(getattr(ns, f"x{i}") for i in range(bottoms)), module=module, layer=layer,
                       params=params, ntop=ntop)
        ns.out = tops if ntop == 1 else tops[0]
    with pytest.raises(LayerParamError, match=msg):
        _net(tmp_path, build)


# ---------------------------------------------------------------- the data layer's extensions

def _source(tmp_path, name, n, size, seed):
    from data_prep.imagedb import write_image_lmdb
    rng = np.random.RandomState(seed)
    imgs = rng.randint(0, 256, size=(n, 3, size, size)).astype(np.uint8)
    write_image_lmdb(str(tmp_path / name / "images.lmdb"), ((im, i) for i, im in enumerate(imgs)))
    trip = np.array([[i, (i + 1) % n, (i + 2) % n] for i in range(n)], np.int32)
    np.save(tmp_path / name / "t.npy", trip)
    return imgs, str(tmp_path / name / "images.lmdb"), str(tmp_path / name / "t.npy")


def _data_net(tmp_path, params):
    n = caffe.NetSpec()
    n.data_a, n.data_p, n.data_n = _python(module="layers.triplet_data", layer="TripletDataLayer",
                                           params=params, ntop=3)
    path = tmp_path / "data.prototxt"
    path.write_text(str(n.to_proto()))
    return caffe.Net(str(path), caffe.TRAIN)


def test_data_layer_mixes_a_list_of_sources(tmp_path):
    """MTDnet-aug: the target's and CUHK03's triplets in one shuffled list, each image from its own LMDB."""
    a_imgs, a_db, a_trip = _source(tmp_path, "target", 5, 7, 0)
    b_imgs, b_db, b_trip = _source(tmp_path, "source", 6, 7, 1)
    net = _data_net(tmp_path, dict(source=[a_db, b_db], triplets=[a_trip, b_trip], batch_size=11,
                                   mirror=False, input_size=7, seed=3))
    net.forward()  # one epoch: every triplet of both sources once
    seen = {tuple(x.astype(np.uint8).ravel()) for x in net.blobs["data_a"].data}
    assert seen == {tuple(x.ravel()) for x in np.concatenate([a_imgs, b_imgs])}
    trips = net.layers[0].batcher.triplets
    assert len(trips) == 11 and trips[5:].min() >= 5  # the second source's indices are offset


def test_data_layer_shift_translates_with_edge_replication(tmp_path):
    """shift: every image is some (dy, dx) translation in [-s, s]^2 of its source, borders replicated."""
    imgs, db, trip = _source(tmp_path, "target", 4, 7, 0)
    s = 2
    net = _data_net(tmp_path, dict(source=db, triplets=trip, batch_size=4, mirror=False, shuffle=False,
                                   shift=s, seed=5))
    padded = np.pad(imgs, ((0, 0), (0, 0), (s, s), (s, s)), mode="edge")
    moved = 0
    for _ in range(3):
        net.forward()
        for top, col in (("data_a", 0), ("data_p", 1), ("data_n", 2)):
            for got, i in zip(net.blobs[top].data.astype(np.uint8), np.load(trip)[:, col]):
                hits = [(dy, dx) for dy in range(2 * s + 1) for dx in range(2 * s + 1)
                        if np.array_equal(got, padded[i, :, dy:dy + 7, dx:dx + 7])]
                assert hits, "not a translation of its source image"
                moved += (s, s) not in hits
    assert moved > 20        # 36 images; almost all moved (1/25 stay put)
    with pytest.raises((ValueError, LayerParamError), match="shift 7 must be smaller"):
        _data_net(tmp_path, dict(source=db, triplets=trip, batch_size=4, shift=7))
    with pytest.raises(LayerParamError, match="must be >= 0"):
        _data_net(tmp_path, dict(source=db, triplets=trip, batch_size=4, shift=-1))


@pytest.mark.parametrize("params,msg", [
    (dict(input_size=9), "images are 7x7, the net expects 9x9"),
    (dict(source="LIST", triplets="ONE"), "both be paths or both be lists"),
    (dict(source=[], triplets=[]), "must be a path or a non-empty list of paths"),
])
def test_data_layer_rejects(tmp_path, params, msg):
    _, db, trip = _source(tmp_path, "target", 4, 7, 0)
    p = dict(source=db, triplets=trip, batch_size=2)
    p.update(params)
    if p["source"] == "LIST":
        p["source"] = [db]
    with pytest.raises((ValueError, LayerParamError), match=msg):
        _data_net(tmp_path, p)
