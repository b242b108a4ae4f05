"""Probe x gallery scores from a trained model, through pycaffe.

cls-type models (mtdnet, cls, aug, cross): the pair score is the mean softmax
P(same) over 8 passes: probe original or mirrored x gallery original or
mirrored x both input orders (the authors' test), with the deploy net
`prototxt/<profile>/pair_score.prototxt` (inputs data_1, data_2; P(same) =
prob[:, 1]). trp / rnk: the squared Euclidean distance between the
L2-normalised features (`feature.prototxt` / `rnk_feature.prototxt`, output
`feature`), averaged over the four mirror combinations.

Images are (N, 3, S, S) BGR, raw 0..255 (uint8 or float), as in the LMDB.
`score_matrix` is the one entry point; a pair scorer is any function
(net, probes, gallery, batch, progress) -> (P, G) array registered in
PAIR_SCORERS, so a faster exact scorer plugs in beside the naive one.
"""
import os

import numpy as np

from mtdnet import MtdnetError

MIRRORS = (False, True)
SCORE_BATCH = 64          # pairs (or images) per forward pass: speed only, not the result
PAIR_PASSES = 8
# What each score kind means (recorded in cmc.json).
SCORE_KINDS = {
    "pair": "mean softmax P(same) over 8 passes (probe, gallery each original or mirrored; "
            "both input orders)",
    "feature": "squared Euclidean distance of the L2-normalised features, mean over the 4 "
               "mirror combinations",
}


def _caffe():
    # Caffe's glog chatter on every net construction hides the progress bar.
    # glog reads the variable when libcaffe loads; restore it right after, so
    # `caffe` processes started later from this process still log normally.
    before = os.environ.get("GLOG_minloglevel")
    os.environ.setdefault("GLOG_minloglevel", "2")
    try:
        import caffe
    finally:
        if before is None:
            os.environ.pop("GLOG_minloglevel", None)
    caffe.set_mode_cpu()
    return caffe


def load_net(deploy, weights):
    """A TEST-phase net with `weights`; a model that doesn't fit the net is a clear error."""
    caffe = _caffe()
    for path, what in ((deploy, "deploy net"), (weights, "model")):
        if not os.path.exists(path):
            raise MtdnetError(f"{path}: {what} not found")
    net = caffe.Net(deploy, caffe.TEST)
    _check_fits(net, weights)
    net.copy_from(weights)
    return net


def model_blobs(weights):
    """{layer name: [blob shapes]} of a .caffemodel (layers with weights only)."""
    from caffe.proto import caffe_pb2
    param = caffe_pb2.NetParameter()
    try:
        with open(weights, "rb") as f:
            param.ParseFromString(f.read())
    except Exception as e:
        raise MtdnetError(f"{weights}: not a Caffe model ({e})")
    return {l.name: [tuple(b.shape.dim) if b.shape.dim else
                     tuple(x for x in (b.num, b.channels, b.height, b.width))
                     for b in l.blobs] for l in param.layer if l.blobs}


def _check_fits(net, weights):
    """Caffe aborts the process on a shape mismatch: check first, name the layer."""
    stored = model_blobs(weights)
    missing = []
    for name, blobs in net.params.items():
        if name not in stored:
            missing.append(name)
            continue
        if len(stored[name]) != len(blobs):
            raise MtdnetError(f"{weights}: layer '{name}' has {len(stored[name])} blobs, the net "
                              f"needs {len(blobs)}: the model does not fit this net")
        for i, (b, got) in enumerate(zip(blobs, stored[name])):
            want = tuple(b.data.shape)
            # Legacy 4-d shapes pad with 1s: compare the counts then.
            if int(np.prod(want)) != int(np.prod(got)) or (len(got) == len(want) and got != want):
                raise MtdnetError(f"{weights}: layer '{name}' blob {i} has shape {got}, "
                                  f"the net needs {want}: the model does not fit this net "
                                  f"(wrong profile?)")
    if missing:
        raise MtdnetError(f"{weights}: has no weights for layer(s) {', '.join(missing)}: "
                          "the model does not fit this net (wrong variant or profile?)")


def input_size(net, name):
    return tuple(net.blobs[name].data.shape[1:])


def check_images(net, name, images, what):
    want = input_size(net, name)
    if images.ndim != 4 or tuple(images.shape[1:]) != want:
        raise MtdnetError(f"{what}: images of shape {tuple(images.shape[1:])}, the net's input "
                          f"'{name}' takes {want} (data prepared for another profile?)")


def mirror(images):
    """Horizontal mirror of (N, C, H, W) images."""
    return images[..., ::-1]


def _views(images):
    """{mirrored: float32 contiguous copy} for both mirror states."""
    return {m: np.ascontiguousarray(mirror(images) if m else images, dtype=np.float32)
            for m in MIRRORS}


def _set_batch(net, names, n):
    if net.blobs[names[0]].data.shape[0] != n:
        for name in names:
            net.blobs[name].reshape(n, *net.blobs[name].data.shape[1:])
        net.reshape()


def pair_scores_naive(net, probes, gallery, batch=SCORE_BATCH, progress=None):
    """(P, G) float64 mean P(same) over the 8 passes: one full net pass per pair and pass.

    Pairs are visited probe-major in batches of `batch` pairs; `progress`
    (a tqdm bar or None) advances by the number of pairs done.
    """
    check_images(net, "data_1", probes, "probes")
    check_images(net, "data_2", gallery, "gallery")
    P, G = len(probes), len(gallery)
    pro, gal = _views(probes), _views(gallery)
    total = np.zeros(P * G, np.float64)
    for s in range(0, P * G, batch):
        idx = np.arange(s, min(P * G, s + batch))
        pi, gj = idx // G, idx % G
        _set_batch(net, ("data_1", "data_2"), idx.size)
        for mp in MIRRORS:
            a = pro[mp][pi]
            for mg in MIRRORS:
                b = gal[mg][gj]
                for first, second in ((a, b), (b, a)):
                    net.blobs["data_1"].data[...] = first
                    net.blobs["data_2"].data[...] = second
                    total[idx] += net.forward()["prob"][:, 1]
        if progress is not None:
            progress.update(idx.size)
    return (total / PAIR_PASSES).reshape(P, G)


# Layer names of the pair-scoring deploy net (prototxt/nets.py).
TRUNK_END = ("norm2", "norm2_p")          # first / second input stream
CONV3, HEAD_START = "conv3_pair", "relu3_pair"


def _conv3_halves(net, images, batch):
    """conv3's contribution of each image in each pair position, computed once per image.

    conv3(concat(x, y)) = W_first * x + W_second * y + b exactly (convolution is
    linear in its input channels), so Caffe's own conv3 over concat(x, 0)
    gives W_first * x + b and over concat(0, y) minus b gives W_second * y.
    Returns (first (N, O, H, W) incl. bias, second (N, O, H, W)).
    """
    n = len(images)
    first = second = None
    bias = net.params[CONV3][1].data.reshape(1, -1, 1, 1)
    for s in range(0, n, batch):
        sl = slice(s, min(n, s + batch))
        m = sl.stop - sl.start
        _set_batch(net, ("data_1", "data_2"), m)
        net.blobs["data_1"].data[...] = images[sl]
        net.forward(end=TRUNK_END[0])
        x = net.blobs[TRUNK_END[0]].data.copy()
        c = x.shape[1]
        pairs = net.blobs["pairs"]
        out = []
        for half in (0, 1):
            pairs.data[...] = 0
            pairs.data[:, half * c:(half + 1) * c] = x
            net.forward(start=CONV3, end=CONV3)
            out.append(net.blobs[CONV3].data.copy())
        if first is None:
            shape = (n,) + out[0].shape[1:]
            first, second = np.empty(shape, np.float32), np.empty(shape, np.float32)
        first[sl] = out[0]
        second[sl] = out[1] - bias
    return first, second


def pair_scores_fast(net, probes, gallery, batch=SCORE_BATCH, progress=None):
    """The naive scorer's exact scores at a fraction of the cost.

    conv1..norm2 and both conv3 halves run once per image and mirror state;
    per pair and pass only the sum, ReLU and conv4..fc8 run (Caffe's own
    layers, from relu3_pair on). The trunk's weights are shared by the two
    input streams, so the first stream's trunk serves both positions.
    """
    check_images(net, "data_1", probes, "probes")
    check_images(net, "data_2", gallery, "gallery")
    P, G = len(probes), len(gallery)
    pro, gal = _views(probes), _views(gallery)
    # (first, second) halves per mirror state, for probes and gallery images.
    hp = {m: _conv3_halves(net, pro[m], batch) for m in MIRRORS}
    hg = {m: _conv3_halves(net, gal[m], batch) for m in MIRRORS}
    total = np.zeros(P * G, np.float64)
    for s in range(0, P * G, batch):
        idx = np.arange(s, min(P * G, s + batch))
        pi, gj = idx // G, idx % G
        _set_batch(net, ("data_1", "data_2"), idx.size)
        conv3 = net.blobs[CONV3]
        for mp in MIRRORS:
            for mg in MIRRORS:
                # probe first, then gallery first: both input orders.
                for a, b in ((hp[mp][0][pi], hg[mg][1][gj]), (hg[mg][0][gj], hp[mp][1][pi])):
                    np.add(a, b, out=conv3.data)
                    total[idx] += net.forward(start=HEAD_START)["prob"][:, 1]
        if progress is not None:
            progress.update(idx.size)
    return (total / PAIR_PASSES).reshape(P, G)


PAIR_SCORERS = {"fast": pair_scores_fast, "naive": pair_scores_naive}


def features(net, images, batch=SCORE_BATCH, progress=None):
    """{mirrored: (N, D) float32 features} of the original and mirrored images."""
    check_images(net, "data", images, "images")
    out = {}
    for m, views in _views(images).items():
        feats = None
        for s in range(0, len(views), batch):
            x = views[s:s + batch]
            _set_batch(net, ("data",), len(x))
            net.blobs["data"].data[...] = x
            f = net.forward()["feature"].reshape(len(x), -1)
            if feats is None:
                feats = np.empty((len(views), f.shape[1]), np.float32)
            feats[s:s + len(x)] = f
            if progress is not None:
                progress.update(len(x))
        out[m] = feats
    return out


def feature_distances(probe_feats, gallery_feats):
    """(P, G) squared Euclidean distance averaged over the 4 mirror combinations."""
    from mtdnet.evaluation import squared_euclidean_distances
    d = 0.0
    for mp in MIRRORS:
        for mg in MIRRORS:
            d = d + squared_euclidean_distances(probe_feats[mp], gallery_feats[mg])
    return d / 4.0


def score_matrix(kind, net, probes, gallery, scorer="fast", batch=SCORE_BATCH, progress=True):
    """(scores (P, G) float64, higher_is_better) for kind 'pair' or 'feature'.

    progress=True shows a tqdm bar (pairs or images); False shows none.
    """
    from tqdm import tqdm
    if kind == "pair":
        try:
            fn = PAIR_SCORERS[scorer]
        except KeyError:
            raise MtdnetError(f"unknown scorer '{scorer}'; valid: {', '.join(PAIR_SCORERS)}") from None
        with tqdm(total=len(probes) * len(gallery), unit="pair", disable=not progress,
                  desc=f"scoring pairs ({PAIR_PASSES} passes each)", dynamic_ncols=True) as bar:
            return fn(net, probes, gallery, batch=batch, progress=bar), True
    if kind == "feature":
        with tqdm(total=2 * (len(probes) + len(gallery)), unit="img", disable=not progress,
                  desc="features (original + mirrored)", dynamic_ncols=True) as bar:
            pf = features(net, probes, batch, bar)
            gf = features(net, gallery, batch, bar)
        return feature_distances(pf, gf), False
    raise MtdnetError(f"unknown score kind '{kind}'; valid: pair, feature")
