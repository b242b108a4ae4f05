"""PairRegroupLayer: the triplets' trunk features regrouped into image pairs.

From the anchor, positive and negative feature maps (N, C, H, W) of N triplets
it builds 2N pairs of 2C channels: (anchor, positive) = a positive pair,
label 1, and (anchor, negative) = a negative pair, label 0. The anchor takes
part in both pairs, so its gradient is the sum of the two pairs' gradients on
its channels.

Tops: pairs (2N, 2C, H, W), labels (2N,) float (1 / 0).

param_str (JSON):
  order  where pair i's two pairs sit on the batch axis:
         "blocked" (default): positive pairs 0..N-1, negative pairs N..2N-1;
         "interleaved": positive pair i at 2i, negative pair i at 2i+1.
         The cross-domain net regroups its source (auxiliary) triplets
         interleaved and its target triplets blocked, so the XNOR of the two
         label vectors is half ones and half zeros instead of all ones.
"""
import caffe
import numpy as np

from layers.params import parse_params

ORDERS = ("blocked", "interleaved")

SCHEMA = {
    "order": (str, "blocked", lambda v: None if v in ORDERS else f"must be one of {list(ORDERS)}"),
}


def pair_rows(n, order):
    """Batch rows of the positive pairs and of the negative pairs, (N,) each."""
    i = np.arange(n)
    if order == "blocked":
        return i, n + i
    if order == "interleaved":
        return 2 * i, 2 * i + 1
    raise ValueError(f"unknown pair order {order!r}; valid: {list(ORDERS)}")


def pair_labels(n, order):
    labels = np.zeros(2 * n, np.float32)
    labels[pair_rows(n, order)[0]] = 1
    return labels


def regroup_forward(a, p, n, order="blocked"):
    """pairs (2N, 2C, ...) from three (N, C, ...) arrays."""
    pos, neg = pair_rows(len(a), order)
    out = np.empty((2 * len(a), 2 * a.shape[1]) + a.shape[2:], a.dtype)
    c = a.shape[1]
    out[pos, :c], out[pos, c:] = a, p
    out[neg, :c], out[neg, c:] = a, n
    return out


def regroup_backward(dpairs, order="blocked"):
    """(da, dp, dn) from the pairs' gradient: the anchor gets both pairs' share."""
    n, c = dpairs.shape[0] // 2, dpairs.shape[1] // 2
    pos, neg = pair_rows(n, order)
    return dpairs[pos, :c] + dpairs[neg, :c], dpairs[pos, c:], dpairs[neg, c:]


class PairRegroupLayer(caffe.Layer):
    def setup(self, bottom, top):
        self.order = parse_params(self.__class__.__name__, self.param_str, SCHEMA)["order"]
        if len(bottom) != 3 or len(top) != 2:
            raise ValueError("PairRegroupLayer takes 3 bottoms (anchor, positive, negative) "
                             "and gives 2 tops (pairs, labels)")

    def reshape(self, bottom, top):
        shapes = [tuple(bottom[i].data.shape) for i in range(3)]
        if len(set(shapes)) != 1 or len(shapes[0]) < 2:
            raise ValueError(f"PairRegroupLayer: anchor, positive and negative must have one shape (N, C, ...), "
                             f"got {shapes}")
        n, c = shapes[0][:2]
        top[0].reshape(2 * n, 2 * c, *shapes[0][2:])
        top[1].reshape(2 * n)

    def forward(self, bottom, top):
        top[0].data[...] = regroup_forward(bottom[0].data, bottom[1].data, bottom[2].data, self.order)
        top[1].data[...] = pair_labels(bottom[0].data.shape[0], self.order)

    def backward(self, top, propagate_down, bottom):
        grads = regroup_backward(top[0].diff, self.order)
        for i in range(3):
            if propagate_down[i]:
                bottom[i].diff[...] = grads[i]
