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
Images are converted to float32 (and mirrored) one batch at a time, never as
a whole set, and the fast scorer caches per-image activations in blocks of at
most `memory` bytes: memory stays bounded for any number of pairs.
"""
import os
import tempfile

import caffe
import numpy as np
from caffe import layers as L
from tqdm import tqdm

from core import MtdnetError
from mtdnet.cmc import squared_euclidean_distances
from mtdnet.gpu import require_gpu_build
from prototxt.weights import read_caffemodel

MIRRORS = (False, True)
SCORE_BATCH = 64          # pairs (or images) per forward pass: speed only, not the result
# Bytes of cached conv3 halves the fast scorer may hold (speed only, not the
# result). 1 GiB holds ~1000 images at `paper` (1.04 MB each: 2 mirror states x
# 2 halves x 384x13x13 float32), ~14000 at `cpu`. The images themselves (uint8,
# held by the caller) and Caffe's activations for one batch come on top.
SCORE_MEMORY = 1 << 30
PAIR_PASSES = 8


def use_device(gpu=False, device=0):
    """Caffe's mode for the nets built next in this thread: CPU, or GPU `device` (a CUDA build)."""
    if gpu:
        require_gpu_build()
        caffe.set_device(device)
        caffe.set_mode_gpu()
    else:
        caffe.set_mode_cpu()


def load_net(deploy, weights):
    """A TEST-phase net with `weights` (in the mode use_device set; Caffe's default is CPU);
    a model that doesn't fit the net is a clear error."""
    for path, what in ((deploy, "deploy net"), (weights, "model")):
        if not os.path.exists(path):
            raise MtdnetError(f"{path}: {what} not found")
    net = caffe.Net(deploy, caffe.TEST)
    _check_fits(net, weights)
    net.copy_from(weights)
    return net


def _check_fits(net, weights):
    """Caffe aborts the process on a shape mismatch: check first, name the layer."""
    stored = {name: [a.shape for a in arrays] for name, arrays in read_caffemodel(weights).items()}
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


def _batch(images, which, mirrored):
    """float32 copy of images[which] (a slice or index array), mirrored or not."""
    x = images[which]
    return np.ascontiguousarray(mirror(x) if mirrored else x, dtype=np.float32)


def set_batch(net, names, n):
    if net.blobs[names[0]].data.shape[0] != n:
        for name in names:
            net.blobs[name].reshape(n, *net.blobs[name].data.shape[1:])
        net.reshape()


def pair_scores_naive(net, probes, gallery, batch=SCORE_BATCH, progress=None, memory=None):
    """(P, G) float64 mean P(same) over the 8 passes: one full net pass per pair and pass.

    Pairs are visited probe-major in batches of `batch` pairs; `progress`
    (a tqdm bar or None) advances by the number of pairs done. Holds one batch
    of activations only (`memory` is accepted for a common interface).
    """
    check_images(net, "data_1", probes, "probes")
    check_images(net, "data_2", gallery, "gallery")
    P, G = len(probes), len(gallery)
    total = np.zeros(P * G, np.float64)
    for s in range(0, P * G, batch):
        idx = np.arange(s, min(P * G, s + batch))
        pi, gj = idx // G, idx % G
        set_batch(net, ("data_1", "data_2"), idx.size)
        for mp in MIRRORS:
            a = _batch(probes, pi, mp)
            for mg in MIRRORS:
                b = _batch(gallery, gj, mg)
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


class Conv3Halves:
    """conv3's contribution of each image in each pair position, once per image.

    conv3(concat(x, y)) = W_first * x + W_second * y + b exactly (convolution is
    linear in its input channels). The two kernel halves are stacked into one
    Caffe convolution over a single image's norm2 (2 x conv3's outputs, half
    its input channels): both halves of an image for the cost of one conv3.
    Output channels [0, O) are W_first * x + b, [O, 2 O) are W_second * x.
    """

    def __init__(self, net):
        w, b = (p.data for p in net.params[CONV3])
        o, c2, kh, kw = w.shape
        c, h, wd = net.blobs[TRUNK_END[0]].data.shape[1:]
        oh, ow = net.blobs[CONV3].data.shape[2:]
        ph, pw = (oh - h + kh - 1) / 2, (ow - wd + kw - 1) / 2   # stride 1: out = in + 2 pad - k + 1
        if c2 != 2 * c or ph != int(ph) or pw != int(pw) or min(ph, pw) < 0:
            raise MtdnetError(f"{CONV3}: kernel {tuple(w.shape)} over norm2 {(c, h, wd)} -> {(oh, ow)} is "
                              "not a stride-1, group-1 convolution of both images' channels; the "
                              "fast scorer cannot split it (use --scorer naive)")
        n = caffe.NetSpec()
        n.x = L.Input(shape=dict(dim=[1, int(c), int(h), int(wd)]))
        n.y = L.Convolution(n.x, num_output=2 * o, kernel_h=kh, kernel_w=kw, pad_h=int(ph), pad_w=int(pw))
        with tempfile.NamedTemporaryFile("w", suffix=".prototxt") as f:
            f.write(str(n.to_proto()))
            f.flush()
            self.net = caffe.Net(f.name, caffe.TEST)
        hw, hb = self.net.params["y"]
        hw.data[:o], hw.data[o:] = w[:, :c], w[:, c:]
        hb.data[:o], hb.data[o:] = b, 0
        self.o = o
        self.shape = (o, oh, ow)
        # per image: 2 mirror states x 2 halves, float32
        self.bytes_per_image = 4 * o * oh * ow * 4

    def empty(self, n):
        """A cache for n images: [mirror state, half, image] -> (O, H, W) float32."""
        return np.empty((len(MIRRORS), 2, n) + self.shape, np.float32)

    def fill(self, net, images, start, cache, batch):
        """Both halves of images[start:start + len(cache[0, 0])] (fewer at the end), both mirrors.

        Runs the pair net's first stream to norm2 (the trunk's weights are shared
        by the two streams, so it serves both positions), then the halves.
        Returns the number of images done.
        """
        n = min(cache.shape[2], len(images) - start)
        for k, m in enumerate(MIRRORS):
            for s in range(0, n, batch):
                e = min(n, s + batch)
                x = _batch(images, slice(start + s, start + e), m)
                set_batch(net, ("data_1", "data_2"), len(x))
                net.blobs["data_1"].data[...] = x
                net.forward(end=TRUNK_END[0])
                set_batch(self.net, ("x",), len(x))
                self.net.blobs["x"].data[...] = net.blobs[TRUNK_END[0]].data
                y = self.net.forward()["y"]
                cache[k, 0, s:e] = y[:, :self.o]
                cache[k, 1, s:e] = y[:, self.o:]
        return n


def block_sizes(n_probes, n_gallery, bytes_per_image, memory, batch=SCORE_BATCH):
    """(probes, gallery images) per block, so that their cached halves fit `memory` bytes.

    Everything at once when it fits. Otherwise as many probes as fit beside a
    batch of gallery images: each probe block recomputes the gallery's trunk,
    negligible next to the 8 head passes of every pair (1000 x 10000 at
    `paper` with 1 GiB: 2 probe blocks, trunk and halves < 0.2% of the work).
    At least one image of each per block, whatever the budget.
    """
    cap = int(memory // bytes_per_image)
    if n_probes + n_gallery <= cap:
        return n_probes, n_gallery
    bp = max(1, min(n_probes, cap - min(n_gallery, batch)))
    bg = max(1, min(n_gallery, cap - bp))
    return bp, bg


def _score_block(net, hp, hg, n_p, n_g, out, batch, progress):
    """out[i, j] += the 8 passes' P(same) of the cached probe i and gallery image j."""
    conv3 = net.blobs[CONV3]
    for s in range(0, n_p * n_g, batch):
        idx = np.arange(s, min(n_p * n_g, s + batch))
        pi, gj = idx // n_g, idx % n_g
        set_batch(net, ("data_1", "data_2"), idx.size)
        acc = np.zeros(idx.size, np.float64)
        for mp in range(len(MIRRORS)):
            for mg in range(len(MIRRORS)):
                # probe first, then gallery first: both input orders.
                for a, b in ((hp[mp, 0][pi], hg[mg, 1][gj]), (hg[mg, 0][gj], hp[mp, 1][pi])):
                    np.add(a, b, out=conv3.data)
                    acc += net.forward(start=HEAD_START)["prob"][:, 1]
        out[pi, gj] += acc
        if progress is not None:
            progress.update(idx.size)


def pair_scores_fast(net, probes, gallery, batch=SCORE_BATCH, progress=None, memory=SCORE_MEMORY):
    """The naive scorer's exact scores at a fraction of the cost, in bounded memory.

    conv1..norm2 and both conv3 halves run once per image and mirror state
    (`Conv3Halves`); per pair and pass only the sum, ReLU and conv4..fc8 run
    (Caffe's own layers, from relu3_pair on). The cached halves of probes and
    gallery images take at most `memory` bytes (`block_sizes`): blocks of
    probes x blocks of gallery images, the gallery recomputed per probe block
    when both do not fit. Blocks change only the speed, not the scores (beyond
    float32 rounding in Caffe's GEMMs over other batch compositions, ~1e-8).
    """
    check_images(net, "data_1", probes, "probes")
    check_images(net, "data_2", gallery, "gallery")
    P, G = len(probes), len(gallery)
    if P == 0 or G == 0:
        return np.zeros((P, G), np.float64)
    halves = Conv3Halves(net)
    bp, bg = block_sizes(P, G, halves.bytes_per_image, memory, batch)
    hp, hg = halves.empty(bp), halves.empty(bg)
    total = np.zeros((P, G), np.float64)
    for p0 in range(0, P, bp):
        n_p = halves.fill(net, probes, p0, hp, batch)
        for g0 in range(0, G, bg):
            if bg < G or p0 == 0:   # one gallery block: computed once for all probe blocks
                n_g = halves.fill(net, gallery, g0, hg, batch)
            _score_block(net, hp, hg, n_p, n_g, total[p0:p0 + n_p, g0:g0 + n_g], batch, progress)
    return total / PAIR_PASSES


PAIR_SCORERS = {"fast": pair_scores_fast, "naive": pair_scores_naive}


def features(net, images, batch=SCORE_BATCH, progress=None):
    """{mirrored: (N, D) float32 features} of the original and mirrored images."""
    check_images(net, "data", images, "images")
    out = {}
    for m in MIRRORS:
        feats = None
        for s in range(0, len(images), batch):
            x = _batch(images, slice(s, s + batch), m)
            set_batch(net, ("data",), len(x))
            net.blobs["data"].data[...] = x
            f = net.forward()["feature"].reshape(len(x), -1)
            if feats is None:
                feats = np.empty((len(images), f.shape[1]), np.float32)
            feats[s:s + len(x)] = f
            if progress is not None:
                progress.update(len(x))
        out[m] = feats
    return out


def feature_distances(probe_feats, gallery_feats):
    """(P, G) squared Euclidean distance averaged over the 4 mirror combinations."""
    d = 0.0
    for mp in MIRRORS:
        for mg in MIRRORS:
            d = d + squared_euclidean_distances(probe_feats[mp], gallery_feats[mg])
    return d / 4.0


def score_matrix(kind, net, probes, gallery, scorer="fast", batch=SCORE_BATCH, progress=True,
                 memory=SCORE_MEMORY):
    """(scores (P, G) float64, higher_is_better) for kind 'pair' or 'feature'.

    progress=True shows a tqdm bar (pairs or images); False shows none.
    memory: bytes of cached activations the fast pair scorer may hold.
    """
    if kind == "pair":
        try:
            fn = PAIR_SCORERS[scorer]
        except KeyError:
            raise MtdnetError(f"unknown scorer '{scorer}'; valid: {', '.join(PAIR_SCORERS)}") from None
        with tqdm(total=len(probes) * len(gallery), unit="pair", disable=not progress,
                  desc=f"scoring pairs ({PAIR_PASSES} passes each)", dynamic_ncols=True) as bar:
            return fn(net, probes, gallery, batch=batch, progress=bar, memory=memory), True
    if kind == "feature":
        with tqdm(total=2 * (len(probes) + len(gallery)), unit="img", disable=not progress,
                  desc="features (original + mirrored)", dynamic_ncols=True) as bar:
            pf = features(net, probes, batch, bar)
            gf = features(net, gallery, batch, bar)
        return feature_distances(pf, gf), False
    raise MtdnetError(f"unknown score kind '{kind}'; valid: pair, feature")
