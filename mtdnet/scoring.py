"""Probe x gallery scores from a trained model, through pycaffe.

cls-type models (mtdnet, cls, aug, cross): the pair score is the mean softmax
P(same) over 8 passes: probe original or mirrored x gallery original or
mirrored x both input orders (the authors' test). trp / rnk: the squared
Euclidean distance between L2-normalised features, averaged over the four
mirror combinations.
"""
import numpy as np

from mtdnet import MtdnetError

MIRRORS = (False, True)


def _caffe():
    import caffe
    caffe.set_mode_cpu()
    return caffe


def load_net(deploy, weights):
    """A TEST-phase net with `weights`; a model that doesn't fit the net is a clear error."""
    import os
    caffe = _caffe()
    for path, what in ((deploy, "deploy net"), (weights, "model")):
        if not os.path.exists(path):
            raise MtdnetError(f"{path}: {what} not found")
    net = caffe.Net(deploy, caffe.TEST)
    _check_fits(net, weights)
    net.copy_from(weights)
    return net


def _check_fits(net, weights):
    """Caffe aborts the process on a shape mismatch: check first, name the layer."""
    from caffe.proto import caffe_pb2
    param = caffe_pb2.NetParameter()
    try:
        with open(weights, "rb") as f:
            param.ParseFromString(f.read())
    except Exception as e:
        raise MtdnetError(f"{weights}: not a Caffe model ({e})")
    stored = {l.name: [tuple(b.shape.dim) if b.shape.dim else (b.num, b.channels, b.height, b.width)
                       for b in l.blobs] for l in param.layer}
    missing = []
    for name, blobs in net.params.items():
        if name not in stored or not stored[name]:
            missing.append(name)
            continue
        for i, (b, shape) in enumerate(zip(blobs, stored[name])):
            want = tuple(b.data.shape)
            got = tuple(s for s in shape)
            if int(np.prod(want)) != int(np.prod(got)) or (len(got) == len(want) and got != want):
                raise MtdnetError(f"{weights}: layer '{name}' blob {i} has shape {got}, "
                                  f"the net needs {want}: the model does not fit this net/profile")
    if missing:
        raise MtdnetError(f"{weights}: has no weights for layer(s) {missing}: "
                          "the model does not fit this net (wrong variant or profile?)")


def mirror(images):
    return images[..., ::-1]


def _batches(n, size):
    for s in range(0, n, size):
        yield slice(s, min(n, s + size))


def _run(net, feeds, out, batch):
    """Forward the arrays in `feeds` ({input name: (N, ...) array}) in batches; return `out` rows."""
    n = len(next(iter(feeds.values())))
    res = None
    for sl in _batches(n, batch):
        for name, arr in feeds.items():
            blob = net.blobs[name]
            if blob.data.shape[0] != sl.stop - sl.start:
                blob.reshape(sl.stop - sl.start, *arr.shape[1:])
            blob.data[...] = arr[sl]
        net.reshape()
        o = net.forward()[out]
        if res is None:
            res = np.empty((n,) + o.shape[1:], np.float32)
        res[sl] = o
    return res


def pair_scores_naive(net, probes, gallery, batch=64, progress=None):
    """(P, G) mean P(same) over the 8 passes, one full net pass per pair and pass."""
    P, G = len(probes), len(gallery)
    scores = np.zeros((P, G), np.float64)
    gal = {m: (mirror(gallery) if m else gallery).astype(np.float32) for m in MIRRORS}
    for i in range(P):
        for mp in MIRRORS:
            p = np.repeat((mirror(probes[i:i + 1]) if mp else probes[i:i + 1]).astype(np.float32), G, 0)
            for mg in MIRRORS:
                for first, second in ((p, gal[mg]), (gal[mg], p)):
                    prob = _run(net, {"data_1": first, "data_2": second}, "prob", batch)
                    scores[i] += prob[:, 1]
        if progress is not None:
            progress.update(1)
    return scores / 8.0


def features(net, images, batch=64):
    """{mirrored: (N, D) L2-normalised features} for the original and mirrored images."""
    return {m: _run(net, {"data": (mirror(images) if m else images).astype(np.float32)}, "feature", batch)
            .reshape(len(images), -1) for m in MIRRORS}


def feature_distances(probe_feats, gallery_feats):
    """(P, G) squared Euclidean distance averaged over the 4 mirror combinations."""
    from mtdnet.evaluation import squared_euclidean_distances
    d = 0.0
    for mp in MIRRORS:
        for mg in MIRRORS:
            d = d + squared_euclidean_distances(probe_feats[mp], gallery_feats[mg])
    return d / 4.0
