"""TripletLossLayer: the ranking loss of MTDnet on L2-normalised features.

    L = 1/(2N) * sum_i max(0, margin + |a_i - p_i|^2 - |a_i - n_i|^2)

with a, p, n the L2-normalised features of the anchor, positive and negative
images (FaceNet form; the authors' release normalises, then applies this loss
with margin 1.0). Where a hinge is active the gradients w.r.t. the normalised
features are (n-p)/N, (p-a)/N, (a-n)/N; they are then taken through the
normalisation and scaled by the loss weight Caffe stores in top[0].diff.

Bottoms: anchor, positive, negative features, each (N, D) or (N, D, 1, 1).
Top: the loss (a scalar). Declare `loss_weight` in the prototxt (a Python layer
is no loss to Caffe otherwise).

param_str (JSON):
  margin     hinge margin alpha (default 1.0, >= 0)
  normalize  L2-normalise the features inside the layer (default true)
"""
import caffe
import numpy as np

from layers.params import non_negative, parse_params

SCHEMA = {
    "margin": (float, 1.0, non_negative),
    "normalize": (bool, True, None),
}

# Keeps the normalisation finite for an all-zero feature; far below any real norm.
NORM_EPS = 1e-12


def l2_normalize(x):
    """Rows of x scaled to unit length: (y, norms), norms of shape (N, 1)."""
    norm = np.sqrt(np.sum(x * x, axis=1, keepdims=True) + NORM_EPS)
    return x / norm, norm


def l2_normalize_backward(y, norm, dy):
    """dL/dx from dL/dy for y = x / |x|: (dy - y <y, dy>) / |x|."""
    return (dy - y * np.sum(y * dy, axis=1, keepdims=True)) / norm


def triplet_forward(a, p, n, margin):
    """(loss, active) for (N, D) features; active[i] says triplet i's hinge is on."""
    d_ap = np.sum((a - p) ** 2, axis=1)
    d_an = np.sum((a - n) ** 2, axis=1)
    hinge = margin + d_ap - d_an
    active = hinge > 0
    return float(np.sum(hinge[active]) / (2.0 * len(a))), active


def triplet_backward(a, p, n, active, scale=1.0):
    """Gradients (da, dp, dn) of scale * L; zero for inactive triplets."""
    k = (scale / len(a)) * active[:, None].astype(a.dtype)
    return k * (n - p), k * (p - a), k * (a - n)


def normalized_triplet_forward(a, p, n, margin, normalize=True):
    """The layer's forward on raw features; returns (loss, cache for the backward)."""
    if normalize:
        (ya, na), (yp, np_), (yn, nn) = l2_normalize(a), l2_normalize(p), l2_normalize(n)
    else:
        ya, yp, yn = a, p, n
        na = np_ = nn = None
    loss, active = triplet_forward(ya, yp, yn, margin)
    return loss, (ya, yp, yn, na, np_, nn, active)


def normalized_triplet_backward(cache, scale=1.0):
    """Gradients w.r.t. the raw features (da, dp, dn)."""
    ya, yp, yn, na, np_, nn, active = cache
    grads = triplet_backward(ya, yp, yn, active, scale)
    if na is None:
        return grads
    return tuple(l2_normalize_backward(y, nrm, g) for y, nrm, g in zip((ya, yp, yn), (na, np_, nn), grads))


class TripletLossLayer(caffe.Layer):
    def setup(self, bottom, top):
        p = parse_params(self.__class__.__name__, self.param_str, SCHEMA)
        self.margin, self.normalize = p["margin"], p["normalize"]
        if len(bottom) != 3 or len(top) != 1:
            raise ValueError("TripletLossLayer takes 3 bottoms (anchor, positive, negative) and gives 1 top (loss)")

    def reshape(self, bottom, top):
        shapes = [tuple(bottom[i].data.shape) for i in range(3)]
        if len(set(shapes)) != 1:
            raise ValueError(f"TripletLossLayer: anchor, positive and negative shapes differ: {shapes}")
        if shapes[0][0] == 0:
            raise ValueError("TripletLossLayer: empty batch")
        top[0].reshape(1)

    def _features(self, bottom):
        n = bottom[0].data.shape[0]
        return [bottom[i].data.reshape(n, -1).astype(np.float64) for i in range(3)]

    def forward(self, bottom, top):
        a, p, n = self._features(bottom)
        loss, self.cache = normalized_triplet_forward(a, p, n, self.margin, self.normalize)
        top[0].data[0] = loss

    def backward(self, top, propagate_down, bottom):
        grads = normalized_triplet_backward(self.cache, float(top[0].diff[0]))
        for i in range(3):
            if propagate_down[i]:
                bottom[i].diff[...] = grads[i].reshape(bottom[i].diff.shape)
