"""XnorLabelLayer: the cross-domain contrastive label, XNOR of two pair labels.

label_p = label_a XNOR label_b: 1 when the source pair and the target pair
at the same batch row are both positive or both negative (pull their joint
features together), 0 otherwise (push them apart). Paper, eq. (3).

Bottoms: two label vectors with the same number of entries, values 0 / 1.
Top: (M, 1, 1, 1) float, the shape Caffe's ContrastiveLoss wants for its label.
Labels have no gradient: backward writes zeros (force_backward reaches it).
param_str: none (any key is an error).
"""
import caffe
import numpy as np

from layers.params import parse_params

SCHEMA = {}


def xnor(a, b):
    a, b = np.asarray(a).ravel(), np.asarray(b).ravel()
    bad = ~np.isin(a, (0, 1)) | ~np.isin(b, (0, 1))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"XnorLabelLayer: labels must be 0 or 1, got {a[i]} and {b[i]} at row {i}")
    return (a == b).astype(np.float32)


class XnorLabelLayer(caffe.Layer):
    def setup(self, bottom, top):
        parse_params(self.__class__.__name__, self.param_str, SCHEMA)
        if len(bottom) != 2 or len(top) != 1:
            raise ValueError("XnorLabelLayer takes 2 bottoms (source labels, target labels) and gives 1 top")

    def reshape(self, bottom, top):
        m, m2 = bottom[0].data.size, bottom[1].data.size
        if m != m2:
            raise ValueError(f"XnorLabelLayer: the two label blobs differ in size ({m} vs {m2})")
        top[0].reshape(m, 1, 1, 1)

    def forward(self, bottom, top):
        top[0].data[...] = xnor(bottom[0].data, bottom[1].data).reshape(top[0].data.shape)

    def backward(self, top, propagate_down, bottom):
        for i in range(2):
            if propagate_down[i]:
                bottom[i].diff[...] = 0
