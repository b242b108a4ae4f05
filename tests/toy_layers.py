"""A minimal Python loss layer, used only by the toolchain tests.

L = 0.5 * sum(x^2); gradient x, scaled by the loss weight Caffe puts in top[0].diff.
"""
import caffe
import numpy as np


class HalfSumSquares(caffe.Layer):
    def setup(self, bottom, top):
        if len(bottom) != 1:
            raise ValueError("HalfSumSquares takes one bottom")

    def reshape(self, bottom, top):
        top[0].reshape(1)

    def forward(self, bottom, top):
        top[0].data[0] = 0.5 * np.sum(np.square(bottom[0].data, dtype=np.float64))

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].diff[...] = top[0].diff[0] * bottom[0].data
