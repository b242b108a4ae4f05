"""The CPU fast path of our Caffe build (scripts/patch_caffe.sh, section F) computes what
stock Caffe computes: every blob's data and diff and every parameter's gradient of every
variant's train net, against golden values recorded from the unpatched build
(tests/data/caffe_stock_golden.npz, tools/record_caffe_golden.py) and against the stock
code paths kept in the same build (MTDNET_CAFFE_FAST=0), whole arrays; with both of the
fast path's convolution engines (oneDNN's, and its own im2col one: MTDNET_CAFFE_DNNL=0). Tolerance:
|fast - stock| <= 1e-5 x the blob's largest magnitude (float summation order only).
Outputs come from a fast forward, gradients from a fast backward after a stock forward, so
that max pooling picks the same of two inputs tied within rounding (mtdnet/caffe_speed.py)."""
import os

import pytest

from mtdnet import caffe_speed as cs

GOLDEN_META, GOLDEN = cs.read_golden()
CASES = {c.name: c for c in cs.cases()}


def _fails(bad):
    return ", ".join(f"{name} ({rel:.2e})" for name, rel in bad[:8])


def test_the_golden_file_covers_every_trained_variant_at_both_profiles():
    assert set(GOLDEN) == set(CASES)
    assert GOLDEN_META["tolerance"] == cs.TOLERANCE
    for name, arrays in GOLDEN.items():
        assert any(k.startswith("param/") for k in arrays), name
        assert any(k.endswith("/diff/val") and float(arrays[k[:-4] + "/max"]) > 0 for k in arrays), name


def test_this_build_runs_the_fast_path_on_openblas_threads():
    env = dict(os.environ, OPENBLAS_NUM_THREADS="2")
    assert cs.child_info("fast", env) == dict(fast=True, threads=2, conv="onednn")
    assert cs.child_info("im2col", env) == dict(fast=True, threads=2, conv="im2col")
    assert cs.child_info("stock", env)["fast"] is False
    assert cs.child_info("fast", dict(os.environ, OPENBLAS_NUM_THREADS="1"))["threads"] == 1


def _convolutions(text):
    return text.count('type: "Convolution"')


@pytest.mark.parametrize("profile", ["scratch", "paper"])
def test_onednn_runs_every_convolution_of_the_mtdnet_net(profile):
    """Each convolution's forward and backward go to oneDNN (none falls back unnoticed)."""
    text = CASES[f"{profile}_mtdnet_b2"].net_text()
    assert _convolutions(text) == 9
    assert cs.child_info("fast", net=text)["onednn_calls"] == 2 * 9
    assert cs.child_info("im2col", net=text)["onednn_calls"] == 0


def _data(arrays):
    return {k: v for k, v in arrays.items() if "/data" in k}


def _diffs(arrays):
    return {k: v for k, v in arrays.items() if "/diff" in k}


def _forward_and_backward(net, reference, env=None, mode="fast"):
    """Failures of the fast path (mode: fast or im2col) against reference arrays: the outputs
    of a fast forward, and the gradients of a fast backward after a stock forward (see
    mtdnet.caffe_speed)."""
    net = net if isinstance(net, str) else net.net_text()     # generated once for both runs
    fast = cs.capture(net, mode, seed=SEED, env=env)
    grads = cs.capture(net, mode, seed=SEED, env=env, forward="stock", backward="fast")
    return cs.compare(_data(fast), _data(reference)) + cs.compare(_diffs(grads), _diffs(reference))


SEED = GOLDEN_META["seed"]


@pytest.mark.parametrize("name", sorted(CASES))
def test_train_net_equals_the_unpatched_build(name):
    bad = _forward_and_backward(CASES[name], GOLDEN[name])
    assert not bad, f"{name}: beyond {cs.TOLERANCE:g} of stock Caffe: {_fails(bad)}"


def test_the_golden_check_catches_other_values():
    name = "scratch_mtdnet_b2"
    moved = cs.capture(CASES[name], "fast", seed=SEED + 1)
    assert len(cs.compare(moved, GOLDEN[name])) > 10


def test_a_stock_forward_then_fast_backward_switches_within_the_process():
    """The switch itself: a stock backward after a stock forward is the golden run exactly
    (sampled values equal to the last bit), the fast backward is not."""
    name = "scratch_mtdnet_b2"
    stock = cs.capture(CASES[name], "fast", seed=SEED, forward="stock", backward="stock")
    assert cs.compare(stock, GOLDEN[name], tolerance=0.0) == []
    grads = cs.capture(CASES[name], "fast", seed=SEED, forward="stock", backward="fast")
    assert cs.compare(_diffs(grads), _diffs(GOLDEN[name]), tolerance=0.0)


@pytest.mark.parametrize("name,mode,workspace_mb", [
    ("scratch_mtdnet_b2", "fast", None), ("scratch_cross_b2", "fast", None),
    ("scratch_rnk_b2", "fast", None), ("paper_rnk_b2", "fast", None),
    ("scratch_mtdnet_b2", "im2col", None), ("scratch_cross_b2", "im2col", None),
    ("scratch_rnk_b2", "im2col", None),
    ("scratch_mtdnet_b2", "im2col", "0.05"),   # a chunk of one image: the chunk loop and its offsets
    ("paper_rnk_b2", "im2col", "1"),
])
def test_fast_path_equals_the_stock_code_whole_arrays(name, mode, workspace_mb):
    env = dict(os.environ)
    if workspace_mb:
        env["MTDNET_CONV_WORKSPACE_MB"] = workspace_mb
    stock = cs.capture(CASES[name], "stock", seed=SEED, env=env)
    bad = _forward_and_backward(CASES[name], stock, env=env, mode=mode)
    assert not bad, f"{name} ({mode}): {_fails(bad)}"


ZOO = """
name: "zoo"
force_backward: true
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 5 dim: 4 dim: 23 dim: 19 } } }
layer { name: "odd" type: "Convolution" bottom: "x" top: "odd"
  convolution_param { num_output: 6 group: 2 bias_term: false kernel_h: 3 kernel_w: 4
    pad_h: 2 pad_w: 1 stride_h: 2 stride_w: 3 dilation: 2 } }
layer { name: "leaky" type: "ReLU" bottom: "odd" top: "odd" relu_param { negative_slope: 0.1 } }
layer { name: "wide" type: "Convolution" bottom: "x" top: "wide"
  convolution_param { num_output: 8 kernel_size: 5 pad: 3 stride: 1 } }
layer { name: "relu" type: "ReLU" bottom: "wide" top: "wide" }
layer { name: "pool" type: "Pooling" bottom: "wide" top: "pool" top: "mask"
  pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "lrn" type: "LRN" bottom: "pool" top: "lrn" lrn_param { local_size: 3 alpha: 0.01 beta: 0.6 k: 2 } }
layer { name: "lrn75" type: "LRN" bottom: "lrn" top: "lrn75" lrn_param { local_size: 5 alpha: 0.001 beta: 0.75 } }
layer { name: "one" type: "Convolution" bottom: "lrn75" top: "one" convolution_param { num_output: 3 kernel_size: 1 } }
layer { name: "ave" type: "Pooling" bottom: "one" top: "ave" pooling_param { pool: AVE kernel_size: 2 stride: 2 } }
layer { name: "fc" type: "InnerProduct" bottom: "ave" top: "fc" inner_product_param { num_output: 7 } }
layer { name: "fc2" type: "InnerProduct" bottom: "odd" top: "fc2" inner_product_param { num_output: 7 } }
layer { name: "sum" type: "Eltwise" bottom: "fc" bottom: "fc2" top: "sum" }
layer { name: "loss" type: "Reduction" bottom: "sum" top: "loss" loss_weight: 1 reduction_param { operation: SUMSQ } }
"""


@pytest.mark.parametrize("mode,workspace_mb", [("fast", None), ("im2col", None), ("im2col", "0.004")])
def test_unusual_geometries_equal_the_stock_code(mode, workspace_mb):
    """Grouped, dilated, asymmetric stride and padding, no bias, 1x1, leaky ReLU, max pooling
    with padding and a mask top, LRN at beta 0.6 and 0.75: fast against stock, whole arrays."""
    env = dict(os.environ)
    if workspace_mb:
        env["MTDNET_CONV_WORKSPACE_MB"] = workspace_mb
    if mode == "fast":     # oneDNN takes every one of these convolutions
        assert cs.child_info(mode, net=ZOO)["onednn_calls"] == 2 * _convolutions(ZOO)
    stock = cs.capture(ZOO, "stock", seed=SEED, env=env)
    assert float(abs(stock["blob/x/diff"]).max()) > 0       # col2im ran for the input
    bad = _forward_and_backward(ZOO, stock, env=env, mode=mode)
    assert not bad, _fails(bad)


def test_compare_flags_a_changed_value():
    import numpy as np
    a = {"blob/y/data": np.linspace(-1, 1, 50, dtype=np.float32)}
    b = {"blob/y/data": a["blob/y/data"].copy()}
    assert cs.compare(b, a) == []
    b["blob/y/data"][7] += 1e-4
    assert [n for n, _ in cs.compare(b, a)] == ["blob/y/data"]
    golden = cs.golden_samples(a)
    assert cs.compare(a, golden) == []
    c = {"blob/y/data": a["blob/y/data"] * 1.001}
    assert cs.compare(c, golden)
