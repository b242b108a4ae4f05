"""Initial models: ImageNet conv1/conv2 into a fresh MTDnet model, a CUHK03 MTDnet into the cross net.

The "ImageNet" models are CaffeNet-shaped nets at the tiny profile's widths
that the tests build and save with pycaffe (current format) or write as V1
protobuf (the format of the released bvlc_reference_caffenet.caffemodel).
"""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import caffe
from caffe.proto import caffe_pb2

from core import REPO_ROOT, MtdnetError, Run, get_profile
from prototxt import generate, weights
from tests.helpers import caffenet_like, make_reid_data, run_caffe

caffe.set_mode_cpu()

TOOL = [sys.executable, os.path.join(REPO_ROOT, "tools", "copy_imagenet_weights.py")]


def as_v1(blobs, path):
    """The same weights as a V1-format model (`layers`, blobs with num/channels/height/width)."""
    m = caffe_pb2.NetParameter()
    for name, arrays in blobs.items():
        lay = m.layers.add()
        lay.name = name
        lay.type = caffe_pb2.V1LayerParameter.CONVOLUTION
        for a in arrays:
            b = lay.blobs.add()
            shape = (1,) * (4 - a.ndim) + a.shape
            b.num, b.channels, b.height, b.width = shape
            b.data.extend(a.ravel().tolist())
    with open(path, "wb") as f:
        f.write(m.SerializeToString())


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("weights_project")
    files = generate.render(["tiny"], ["viper"], ["mtdnet", "cross"])
    files.update(generate.render(["tiny"], ["cuhk03"], ["mtdnet"]))
    generate.write(files, str(root))
    prof = get_profile("tiny")
    for ds in ("viper", "cuhk03"):
        make_reid_data(str(root / "data" / f"{ds}-tiny-paper"), prof.input_size, seed=len(ds))
    imagenet = caffenet_like(str(root / "imagenet.caffemodel"), prof.conv1, prof.conv2)
    return root, imagenet


def tool(*args, cwd):
    return subprocess.run(TOOL + list(args), cwd=cwd, capture_output=True, text=True, timeout=120)


def test_copy_imagenet_conv1_conv2_into_a_fresh_model(project):
    root, imagenet = project
    net_path = "prototxt/tiny/viper_mtdnet_train.prototxt"
    p = tool("--imagenet", "imagenet.caffemodel", "--net", net_path, "--out", "init/a.caffemodel", cwd=root)
    assert p.returncode == 0, p.stderr
    assert "copied conv1: 8x3x11x11, 8" in p.stdout
    model = weights.read_caffemodel(str(root / "init/a.caffemodel"))
    for name in ("conv1", "conv2"):
        for stream in ("", "_p", "_n"):  # the shared streams carry the same weights
            for got, want in zip(model[name + stream], imagenet[name]):
                np.testing.assert_array_equal(got, want)
    # Everything else is the seeded fillers: not ImageNet's, not zero.
    assert model["conv3_pair"][0].shape == (24, 32, 3, 3) and model["conv3_pair"][0].std() > 0
    assert model["fc8_pair"][0].shape == (2, 128)
    rec = json.loads((root / "init/a.caffemodel.json").read_text())
    assert rec["seed"] == get_profile("tiny").seed and set(rec["copied"]) == {"conv1", "conv2"}
    # Seeded: a second run gives the same model, byte for byte.
    assert tool("--imagenet", "imagenet.caffemodel", "--net", net_path, "--out", "init/b.caffemodel",
                cwd=root).returncode == 0
    assert (root / "init/a.caffemodel").read_bytes() == (root / "init/b.caffemodel").read_bytes()
    # The model loads by name into the train net (with its data layer) for `caffe train -weights`.
    os.chdir(root)
    try:
        net = caffe.Net(net_path, caffe.TRAIN)
        net.copy_from("init/a.caffemodel")
        np.testing.assert_array_equal(net.params["conv2_n"][0].data, imagenet["conv2"][0])
        assert np.isfinite(net.forward()["cls_loss"])
    finally:
        os.chdir(REPO_ROOT)


def test_v1_format_models_are_read(project, tmp_path):
    root, imagenet = project
    as_v1({k: imagenet[k] for k in ("conv1", "conv2")}, str(tmp_path / "v1.caffemodel"))
    out = tmp_path / "init.caffemodel"
    weights.init_from_imagenet(str(tmp_path / "v1.caffemodel"), str(root / "prototxt/tiny/viper_mtdnet_train.prototxt"),
                               str(out))
    model = weights.read_caffemodel(str(out))
    np.testing.assert_array_equal(model["conv1"][0], imagenet["conv1"][0])
    np.testing.assert_array_equal(model["conv2"][1], imagenet["conv2"][1])


def test_caffenet_names_do_not_clash(project, tmp_path):
    """Caffe copies a CaffeNet model into the generated net by name: conv1 and conv2 only. No other
    layer shares a CaffeNet name (Caffe aborts when a same-named layer has another shape, e.g. conv3)."""
    root, imagenet = project
    net = "prototxt/tiny/viper_mtdnet_train.prototxt"
    rc, log = run_caffe(["test", "-model", net, "-weights", "imagenet.caffemodel", "-iterations", "1"],
                        cwd=str(root))
    assert rc == 0, log[-2000:]
    # Control: the same net with the head's conv3 named like CaffeNet's is refused.
    clash = tmp_path / "clash.prototxt"
    clash.write_text((root / net).read_text().replace('name: "conv3_pair"', 'name: "conv3"'))
    rc, log = run_caffe(["test", "-model", str(clash), "-weights", "imagenet.caffemodel", "-iterations", "1"],
                        cwd=str(root))
    assert rc != 0 and "shape mismatch" in log
    # The same copy (Net::CopyTrainedLayersFrom) through pycaffe, to look at the weights.
    os.chdir(root)
    try:
        n = caffe.Net(net, caffe.TRAIN)
        fillers = n.params["conv3_pair"][0].data.copy()
        n.copy_from("imagenet.caffemodel")
        for name in ("conv1", "conv2", "conv1_n"):
            np.testing.assert_array_equal(n.params[name][0].data, imagenet[name.split("_")[0]][0])
        np.testing.assert_array_equal(n.params["conv3_pair"][0].data, fillers)
    finally:
        os.chdir(REPO_ROOT)


def test_caffe_train_weights_flag(project, tmp_path):
    """scripts/patch_caffe.sh restores BVLC's CopyLayers: -weights really initialises."""
    root, imagenet = project
    # The generated solver, for one step at lr 0, so the snapshot holds the initial weights.
    solver = (root / Run.create("viper", "mtdnet", "tiny").generated_solver).read_text()
    solver = re.sub(r"(?m)^max_iter: .*$", "max_iter: 1", solver)
    solver = re.sub(r"(?m)^base_lr: .*$", "base_lr: 0", solver)
    solver = re.sub(r'(?m)^snapshot_prefix: .*$', f'snapshot_prefix: "{tmp_path}/snap"', solver)
    (tmp_path / "solver.prototxt").write_text(solver)
    rc, log = run_caffe(["train", "-solver", str(tmp_path / "solver.prototxt"), "-weights", "imagenet.caffemodel"],
                        cwd=str(root))
    assert rc == 0, log[-2000:]
    model = weights.read_caffemodel(str(tmp_path / "snap_iter_1.caffemodel"))
    for name in ("conv1", "conv2", "conv1_n"):
        np.testing.assert_array_equal(model[name][0], imagenet[name.split("_")[0]][0])


def test_shape_mismatch_is_a_clear_error_and_writes_nothing(project, tmp_path):
    root, _ = project
    caffenet_like(str(tmp_path / "paper_widths.caffemodel"), 96, 256)  # ImageNet widths vs the tiny net
    out = tmp_path / "x.caffemodel"
    p = tool("--imagenet", str(tmp_path / "paper_widths.caffemodel"), "--net",
             "prototxt/tiny/viper_mtdnet_train.prototxt", "--out", str(out), cwd=root)
    assert p.returncode == 1
    assert "layer 'conv1' param 0 has shape (96, 3, 11, 11)" in p.stderr and "(8, 3, 11, 11)" in p.stderr
    assert "paper profile" in p.stderr and "Traceback" not in p.stderr
    assert not out.exists() and not os.path.exists(str(out) + ".json")


@pytest.mark.parametrize("case,msg", [
    ("missing_model", "model file not found"),
    ("missing_net", "net prototxt not found"),
    ("garbage_model", "not a Caffe model"),
    ("no_conv2", "no layer 'conv2'"),
])
def test_bad_inputs(project, tmp_path, case, msg):
    root, imagenet = project
    model, net = str(root / "imagenet.caffemodel"), str(root / "prototxt/tiny/viper_mtdnet_train.prototxt")
    if case == "missing_model":
        model = str(tmp_path / "nope.caffemodel")
    elif case == "missing_net":
        net = str(tmp_path / "nope.prototxt")
    elif case == "garbage_model":
        model = str(tmp_path / "garbage.caffemodel")
        open(model, "wb").write(b"\xff\xfe not protobuf \x00" * 10)
    else:
        model = str(tmp_path / "conv1_only.caffemodel")
        as_v1({"conv1": imagenet["conv1"]}, model)
    out = tmp_path / "out.caffemodel"
    p = tool("--imagenet", model, "--net", net, "--out", str(out), cwd=root)
    assert p.returncode == 1 and msg in p.stderr, p.stderr
    assert (model in p.stderr) or (net in p.stderr)
    assert not out.exists()


def test_init_cross_from_an_mtdnet_model(project, tmp_path):
    root, _ = project
    os.chdir(root)
    try:
        # A "CUHK03 model": the tiny mtdnet net after two SGD steps.
        run = Run.create("cuhk03", "mtdnet", "tiny")
        os.makedirs(os.path.dirname(run.generated_snapshot_prefix()), exist_ok=True)
        solver = caffe.SGDSolver(run.generated_solver)
        solver.step(2)
        mtdnet_model = str(tmp_path / "cuhk03.caffemodel")
        solver.net.save(mtdnet_model)
        src = {k: [b.data.copy() for b in v] for k, v in solver.net.params.items()}
        cross = Run.create("viper", "cross", "tiny").generated_net
        out = str(tmp_path / "cross_init.caffemodel")
        rec = weights.init_cross_from_mtdnet(mtdnet_model, cross, out)
        model = weights.read_caffemodel(out)
        for name in ("conv1", "conv2_n", "feat", "conv3_pair", "fc7_pair", "fc8_pair"):
            np.testing.assert_array_equal(model[name][0], src[name][0])
        for name in ("conv1", "conv2_p", "conv3_pair", "fc6_pair", "fc7_pair"):
            for got, want in zip(model[name + "_src"], src[name]):
                np.testing.assert_array_equal(got, want)
        assert "fc8_pair_src" not in model
        assert "fc7_pair_src" in rec["copied"]
        # The cross net trains from it; the source copy's fc7 starts equal to the target's weights.
        net = caffe.Net(cross, caffe.TRAIN)
        net.copy_from(out)
        np.testing.assert_array_equal(net.params["fc7_pair_src"][0].data, net.params["fc7_pair"][0].data)
        assert np.isfinite(net.forward()["cts_loss"])
    finally:
        os.chdir(REPO_ROOT)


def test_init_cross_rejects_wrong_inputs(project, tmp_path):
    root, imagenet = project
    cross = str(root / "prototxt/tiny/viper_cross_train.prototxt")
    with pytest.raises(MtdnetError, match=r"no layer 'conv1_p' \(and \d+ more"):  # ImageNet's is no MTDnet
        weights.init_cross_from_mtdnet(str(root / "imagenet.caffemodel"), cross, str(tmp_path / "o.caffemodel"))
    with pytest.raises(MtdnetError, match="not a cross-domain net"):
        weights.init_cross_from_mtdnet(str(root / "imagenet.caffemodel"),
                                       str(root / "prototxt/tiny/viper_mtdnet_train.prototxt"),
                                       str(tmp_path / "o.caffemodel"))
    assert not (tmp_path / "o.caffemodel").exists()
