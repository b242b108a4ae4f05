"""The net and solver generator, through real Caffe.

The committed files must equal a fresh generation; every generated net parses
and instantiates (tiny: all of them, on a small LMDB the tests write; paper and
cpu: every variant at batch 2); the paper profile has the paper's shapes;
`caffe time` runs each tiny train net and `caffe train` lowers the tiny loss.
"""
import dataclasses
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from google.protobuf import text_format

import caffe
from caffe.proto import caffe_pb2

from core import REPO_ROOT, MtdnetError, Run, datasets, get_profile, variants
from layers import pair_regroup, triplet_data, triplet_loss, xnor_label
from layers.params import parse_params
from prototxt import generate, nets
from tests.helpers import make_reid_data, run_caffe

caffe.set_mode_cpu()

GEN = [sys.executable, os.path.join(REPO_ROOT, "tools", "generate_prototxt.py")]
PYTHON_LAYERS = {"layers.triplet_data": triplet_data, "layers.triplet_loss": triplet_loss,
                 "layers.pair_regroup": pair_regroup, "layers.xnor_label": xnor_label}
# Plain BVLC layer types (this Caffe fork has more; the nets must not need them).
BVLC_TYPES = {"Python", "Input", "Convolution", "ReLU", "Pooling", "LRN", "InnerProduct", "Dropout",
              "Concat", "SoftmaxWithLoss", "Softmax", "Accuracy", "Reduction", "Power", "Scale",
              "ContrastiveLoss"}


def generate_cli(*args):
    return subprocess.run(GEN + list(args), cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)


def read_net(path):
    net = caffe_pb2.NetParameter()
    text_format.Merge(open(path).read(), net)
    return net


def layer(net, name):
    (found,) = [x for x in net.layer if x.name == name]
    return found


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    """A project root with the tiny nets (from the CLI) and data for every dataset."""
    root = tmp_path_factory.mktemp("tiny_project")
    p = generate_cli("--profile", "tiny", "--out", str(root))
    assert p.returncode == 0, p.stderr
    for k, ds in enumerate(datasets.names()):
        # A source dataset's mix is longer than a target's (MTDnet-aug cuts it to the target's).
        make_reid_data(str(root / "data" / f"{ds}-tiny-paper"), get_profile("tiny").input_size, seed=k,
                       mix=1.0 if datasets.get_dataset(ds).spec.source else 0.5)
    return root


# ---------------------------------------------------------------- the committed files

TRAINED = [v.key for v in variants.trained_variants()]


def expected_train_nets(profile):
    """(dataset, variant) of every train net a profile has: trained variants on every dataset,
    less the source dataset's cross-domain variants."""
    return {(r.dataset.name, r.variant.key) for r in generate.runs_for(get_profile(profile))}


def test_committed_files_equal_a_fresh_generation(tmp_path):
    p = generate_cli("--out", str(tmp_path))
    assert p.returncode == 0, p.stderr
    for prof in generate.COMMITTED:
        for top in ("prototxt", "solvers"):
            fresh = sorted(os.listdir(tmp_path / top / prof))
            committed_dir = os.path.join(REPO_ROOT, top, prof)
            assert os.path.isdir(committed_dir), f"{top}/{prof} missing: run `make prototxt`"
            assert sorted(os.listdir(committed_dir)) == fresh, f"{top}/{prof}: other files than generated"
            for name in fresh:
                with open(tmp_path / top / prof / name) as a, open(os.path.join(committed_dir, name)) as b:
                    assert a.read() == b.read(), f"{top}/{prof}/{name} differs from the generator: run `make prototxt`"
    pairs = {(d, v) for d, v in expected_train_nets("paper") if d in generate.COMMITTED_DATASETS}
    assert {(d, v) for d in datasets.table1_datasets() for v in TRAINED
            if not (get_dataset_spec(d).source and variants.get_variant(v).source)} == pairs
    # What a user runs by hand, not every combination the generator can write.
    n_committed = sum(len(os.listdir(os.path.join(REPO_ROOT, top, prof)))
                      for prof in generate.COMMITTED for top in ("prototxt", "solvers"))
    assert n_committed <= 100
    assert sorted(os.listdir(tmp_path / "prototxt" / "paper")) == sorted(
        [f"{d}_{v}_train.prototxt" for d, v in pairs] + [f"{k}.prototxt" for k in nets.DEPLOY_NETS])
    assert sorted(os.listdir(tmp_path / "solvers" / "paper")) == sorted(f"{d}_{v}_solver.prototxt" for d, v in pairs)
    assert generate_cli("--check").returncode == 0
    # Other profiles are generated on demand, not committed.
    assert sorted(os.listdir(os.path.join(REPO_ROOT, "prototxt"))) == sorted(
        list(generate.COMMITTED) + [f for f in os.listdir(os.path.join(REPO_ROOT, "prototxt"))
                                    if not os.path.isdir(os.path.join(REPO_ROOT, "prototxt", f))
                                    or f.startswith("__")])
    assert generate.committed_problems() == []


def get_dataset_spec(name):
    return datasets.get_dataset(name).spec


def test_check_names_changed_and_stale_files(tmp_path):
    assert generate_cli("--profile", "tiny", "--out", str(tmp_path)).returncode == 0
    changed = tmp_path / "prototxt" / "tiny" / "viper_mtdnet_train.prototxt"
    changed.write_text(changed.read_text().replace("num_output: 2\n", "num_output: 3\n"))
    solvers = tmp_path / "solvers" / "tiny"
    (solvers / "old_solver.prototxt").write_text((solvers / "viper_mtdnet_solver.prototxt").read_text())
    p = generate_cli("--profile", "tiny", "--out", str(tmp_path), "--check")
    assert p.returncode == 1
    assert "differs: prototxt/tiny/viper_mtdnet_train.prototxt" in p.stderr
    assert "stale: solvers/tiny/old_solver.prototxt" in p.stderr
    # A full regeneration replaces the profile's directories: the stale generated file goes.
    assert generate_cli("--profile", "tiny", "--out", str(tmp_path)).returncode == 0
    assert generate_cli("--profile", "tiny", "--out", str(tmp_path), "--check").returncode == 0


def test_the_generator_never_replaces_a_users_file(tmp_path):
    assert generate_cli("--profile", "tiny", "--out", str(tmp_path)).returncode == 0
    mine = tmp_path / "prototxt" / "tiny" / "my_net.prototxt"
    mine.write_text("name: 'mine'\n")
    before = sorted(os.listdir(mine.parent))
    for extra in ((), ("--dataset", "viper")):
        p = generate_cli("--profile", "tiny", "--out", str(tmp_path), *extra)
        if not extra:
            assert p.returncode == 1 and f"error: {mine.parent}: not empty and not made by this project" in p.stderr
    assert mine.read_text() == "name: 'mine'\n" and sorted(os.listdir(mine.parent)) == before
    # Written one by one (--dataset): a file of the user's under a generated name is refused.
    target = tmp_path / "prototxt" / "tiny" / "viper_cls_train.prototxt"
    target.write_text("my edit\n")
    p = generate_cli("--profile", "tiny", "--out", str(tmp_path), "--dataset", "viper")
    assert p.returncode == 1 and f"error: {target}: exists and was not written by this generator" in p.stderr
    assert target.read_text() == "my edit\n"
    assert "Traceback" not in p.stderr


def _committed(top, ext=".prototxt"):
    for prof in generate.COMMITTED:
        d = os.path.join(REPO_ROOT, top, prof)
        for name in sorted(os.listdir(d)):
            assert name.endswith(ext)
            yield prof, name, os.path.join(d, name)


def test_committed_nets_parse_and_use_only_bvlc_layers():
    count = 0
    for prof, name, path in _committed("prototxt"):
        net = read_net(path)  # raises on anything Caffe's parser would reject
        assert "ceil_mode" not in open(path).read()  # this fork's pooling option
        for x in net.layer:
            assert x.type in BVLC_TYPES, f"{path}: layer {x.name} has type {x.type}"
            assert x.top, f"{path}: layer {x.name} has no top"
            if x.type == "Python":
                module = PYTHON_LAYERS[x.python_param.module]
                assert hasattr(module, x.python_param.layer)
                parse_params(x.name, x.python_param.param_str, module.SCHEMA)  # valid param_str
        names = [x.name for x in net.layer]
        assert len(names) == len(set(names)), f"{path}: duplicate layer names"
        count += 1
    assert count == sum(len({(d, v) for d, v in expected_train_nets(p) if d in generate.COMMITTED_DATASETS})
                        + len(nets.DEPLOY_NETS) for p in generate.COMMITTED)


def test_committed_solvers():
    for prof, name, path in _committed("solvers"):
        s = caffe_pb2.SolverParameter()
        text_format.Merge(open(path).read(), s)
        dataset, variant = re.match(r"(\w+?)_(\w+)_solver\.prototxt$", name).groups()
        p = get_profile(prof)
        assert os.path.exists(os.path.join(REPO_ROOT, s.net)), f"{path}: net {s.net} missing"
        assert s.net == f"prototxt/{prof}/{dataset}_{variant}_train.prototxt"
        assert (s.base_lr, s.max_iter) == pytest.approx(Run.create(dataset, variant, prof).solver_settings())
        assert s.type == "SGD"
        if p.lr_steps:
            assert s.lr_policy == "multistep" and s.gamma == pytest.approx(p.lr_gamma)
            assert list(s.stepvalue) == [round(f * s.max_iter) for f in p.lr_steps]
        else:
            assert s.lr_policy == "fixed" and not s.stepvalue
        assert s.momentum == pytest.approx(p.momentum) and s.weight_decay == pytest.approx(p.weight_decay)
        assert s.random_seed == p.seed
        assert s.solver_mode == caffe_pb2.SolverParameter.CPU
        assert s.snapshot == p.snapshot
        assert s.snapshot_prefix == f"runs/{dataset}-{variant}-{prof}/snapshots/{dataset}_{variant}"


def test_lr_steps_follow_iters():
    run = Run.create("viper", "mtdnet", "tiny", overrides=["lr_steps=0.5:0.75", "lr_gamma=0.2"])
    default = run.profile.max_iter
    for iters, want in ((None, [round(0.5 * default), round(0.75 * default)]), (2000, [1000, 1500])):
        s = caffe_pb2.SolverParameter()
        text_format.Merge(generate.solver_text(run, iters=iters), s)
        assert s.lr_policy == "multistep" and list(s.stepvalue) == want and s.gamma == pytest.approx(0.2)
    with pytest.raises(MtdnetError, match="ITERS must be >= 1"):
        generate.solver_text(run, iters=0)


def test_profile_shift_reaches_the_data_layer(tmp_path):
    for k, (overrides, want) in enumerate((((), None), (["shift=3"], 3))):
        path = tmp_path / f"{k}.prototxt"
        path.write_text(generate.train_net_text(Run.create("viper", "mtdnet", "tiny", overrides=overrides)))
        assert json.loads(layer(read_net(str(path)), "data_a").python_param.param_str).get("shift") == want
    path = tmp_path / "small.prototxt"
    path.write_text(generate.train_net_text(Run.create("viper", "mtdnet", "tiny", overrides=["fc8_std=0.01"])))
    net = read_net(str(path))
    f = layer(net, "fc8_pair").inner_product_param.weight_filler
    assert (f.type, f.std) == ("gaussian", pytest.approx(0.01))
    assert layer(net, "fc7_pair").inner_product_param.weight_filler.type == "msra"


def test_scratch_profile_starts_every_bias_at_zero():
    """The from-scratch profile's one change to the net: He weights and zero biases (cpu: CaffeNet's 1s)."""
    for prof, biases in (("scratch", {0.0}), ("cpu", {0.0, 1.0, 0.1})):
        net = caffe_pb2.NetParameter()
        text_format.Merge(generate.train_net_text(Run.create("viper", "mtdnet", prof)), net)
        params = [getattr(l, f) for l in net.layer
                  for f in ("convolution_param", "inner_product_param") if l.HasField(f)]
        assert {round(p.bias_filler.value, 6) for p in params} == biases
        assert {p.weight_filler.type for p in params} == {"msra"}


def test_paper_solver_numbers_are_the_authors():
    def solver(dataset):
        s = caffe_pb2.SolverParameter()
        text_format.Merge(open(os.path.join(REPO_ROOT, f"solvers/paper/{dataset}_mtdnet_solver.prototxt")).read(), s)
        return s
    for ds, lr, it in (("viper", 1e-3, 20000), ("cuhk03", 1e-3, 200000), ("prid2011", 1e-4, 20000)):
        s = solver(ds)
        assert s.base_lr == pytest.approx(lr) and s.max_iter == it
        assert s.momentum == pytest.approx(0.9) and s.weight_decay == pytest.approx(5e-4) and s.snapshot == 500
    net = read_net(os.path.join(REPO_ROOT, "prototxt/paper/viper_mtdnet_train.prototxt"))
    assert json.loads(layer(net, "data_a").python_param.param_str)["batch_size"] == 128
    assert json.loads(layer(net, "trp_loss").python_param.param_str) == {"margin": 1.0}
    assert layer(net, "trp_loss").loss_weight == [1] and layer(net, "cls_loss").loss_weight == [1]
    # The authors' fillers, untouched at the paper profile.
    assert layer(net, "conv3_pair").convolution_param.weight_filler.std == pytest.approx(0.01)
    assert layer(net, "fc6_pair").inner_product_param.weight_filler.std == pytest.approx(0.005)
    assert layer(net, "feat").inner_product_param.weight_filler.std == pytest.approx(0.005)
    assert layer(net, "feat").inner_product_param.bias_filler.value == pytest.approx(0.1)
    lrn = layer(net, "norm2").lrn_param
    assert (lrn.local_size, lrn.alpha, lrn.beta) == (5, pytest.approx(1e-4), pytest.approx(0.75))
    assert layer(net, "drop6_pair").dropout_param.dropout_ratio == pytest.approx(0.5)


# ---------------------------------------------------------------- instantiation and shapes

def test_every_tiny_net_instantiates_and_runs(tiny_root, monkeypatch):
    monkeypatch.chdir(tiny_root)
    prof = get_profile("tiny")
    train = sorted(f for f in os.listdir("prototxt/tiny") if f.endswith("_train.prototxt"))
    assert train == sorted(f"{d}_{v}_train.prototxt" for d, v in expected_train_nets("tiny"))
    for f in train:
        net = caffe.Net(f"prototxt/tiny/{f}", caffe.TRAIN)
        out = net.forward()
        losses = [k for k in out if k.endswith("_loss")]
        assert losses and all(np.isfinite(out[k]).all() for k in losses), f
        assert net.blobs["data_a"].data.shape == (prof.batch_triplets, 3, prof.input_size, prof.input_size)
    net = caffe.Net("prototxt/tiny/pair_score.prototxt", caffe.TEST)
    prob = net.forward()["prob"]
    assert prob.shape == (1, 2) and prob.sum() == pytest.approx(1, rel=1e-5)
    for f in ("feature", "rnk_feature"):
        feat = caffe.Net(f"prototxt/tiny/{f}.prototxt", caffe.TEST).forward()["feature"]
        assert feat.shape == (1, prof.feat) and np.linalg.norm(feat) == pytest.approx(1, rel=1e-4)


@pytest.mark.parametrize("variant,deploy", [("mtdnet", "pair_score"), ("cross", "pair_score"),
                                            ("mtdnet", "feature"), ("rnk", "rnk_feature")])
def test_deploy_nets_load_train_models_by_name(tiny_root, monkeypatch, tmp_path, variant, deploy):
    """Every deploy layer with weights gets them from the train model by name (cross: its target copy)."""
    from prototxt.weights import read_caffemodel
    monkeypatch.chdir(tiny_root)
    caffe.set_random_seed(11)
    train = caffe.Net(f"prototxt/tiny/viper_{variant}_train.prototxt", caffe.TRAIN)
    model = str(tmp_path / "model.caffemodel")
    train.save(model)
    saved = read_caffemodel(model)
    net = caffe.Net(f"prototxt/tiny/{deploy}.prototxt", caffe.TEST)
    net.copy_from(model)
    assert net.params
    for name, blobs in net.params.items():
        assert name in saved and not name.endswith("_src"), name
        for b, want in zip(blobs, saved[name]):
            np.testing.assert_array_equal(b.data, want)


@pytest.fixture(scope="module")
def paper_root(tmp_path_factory):
    """paper and cpu nets at batch 2 triplets, with small 227 / 127 data for viper and cuhk03."""
    root = tmp_path_factory.mktemp("paper_project")
    files = generate.render(["paper", "cpu"], ["viper"], None, batch=2)
    files.update(generate.render(["paper", "cpu"], ["cuhk03"], ["mtdnet"], batch=2))
    generate.write(files, str(root))
    for prof in ("paper", "cpu"):
        for ds in ("viper", "cuhk03"):
            make_reid_data(str(root / "data" / f"{ds}-{prof}-paper"), get_profile(prof).input_size, n_ids=3,
                           per_camera=1)
    return root


def test_paper_profile_has_the_papers_shapes(paper_root, monkeypatch):
    monkeypatch.chdir(paper_root)
    net = caffe.Net("prototxt/paper/viper_mtdnet_train.prototxt", caffe.TRAIN)
    b = net.blobs
    assert b["data_a"].data.shape == (2, 3, 227, 227)
    for s in nets.STREAMS:
        assert b["norm2" + s].data.shape == (2, 256, 13, 13)
        assert b["feat" + s].data.shape == (2, 512)
    assert b["pairs"].data.shape == (4, 512, 13, 13)
    assert b["pool5_pair"].data.shape == (4, 256, 6, 6)
    assert b["fc8_pair"].data.shape == (4, 2)
    w = {k: v[0].data.shape for k, v in net.params.items()}
    assert w["conv1"] == (96, 3, 11, 11) and w["conv2"] == (256, 48, 5, 5)  # ImageNet CaffeNet's shapes
    assert w["conv3_pair"] == (384, 512, 3, 3)
    assert w["conv4_pair"] == (384, 192, 3, 3) and w["conv5_pair"] == (256, 192, 3, 3)
    assert w["fc6_pair"] == (4096, 9216) and w["fc7_pair"] == (4096, 4096) and w["fc8_pair"] == (2, 4096)
    assert w["feat"] == (512, 256 * 13 * 13)
    # One set of trunk weights for the three streams.
    net.params["conv1"][0].data[0, 0, 0, 0] = 0.123
    assert net.params["conv1_p"][0].data[0, 0, 0, 0] == net.params["conv1_n"][0].data[0, 0, 0, 0] == \
        pytest.approx(0.123)
    out = net.forward()
    assert np.isfinite(out["cls_loss"]) and np.isfinite(out["trp_loss"])

    rnk = caffe.Net("prototxt/paper/viper_rnk_train.prototxt", caffe.TRAIN)
    w = {k: v[0].data.shape for k, v in rnk.params.items()}
    assert w["conv3"] == (384, 256, 3, 3) and w["fc6"] == (4096, 9216) and w["fc8_rnk"] == (512, 4096)

    score = caffe.Net("prototxt/paper/pair_score.prototxt", caffe.TEST)
    assert score.blobs["pairs"].data.shape == (1, 512, 13, 13) and score.blobs["prob"].data.shape == (1, 2)
    for f in ("feature", "rnk_feature"):
        assert caffe.Net(f"prototxt/paper/{f}.prototxt", caffe.TEST).blobs["feature"].data.shape == (1, 512)


@pytest.mark.parametrize("variant", ["cls", "aug", "cross"])
def test_paper_variants_instantiate(paper_root, monkeypatch, variant):
    monkeypatch.chdir(paper_root)
    net = caffe.Net(f"prototxt/paper/viper_{variant}_train.prototxt", caffe.TRAIN)
    assert net.blobs["pairs"].data.shape == (4, 512, 13, 13)
    assert net.params["conv3_pair"][0].data.shape == (384, 512, 3, 3)
    if variant == "cross":
        assert net.params["conv3_pair_src"][0].data.shape == (384, 512, 3, 3)
        assert net.blobs["fc7_pair_l2"].data.shape == (4, 4096)


def test_cpu_profile_geometry(paper_root, monkeypatch):
    monkeypatch.chdir(paper_root)
    prof = get_profile("cpu")
    g = nets.geometry(prof)
    assert g["norm2"] == 7 and g["pool5"] == 3
    assert caffe.Net("prototxt/cpu/pair_score.prototxt", caffe.TEST).blobs["pairs"].data.shape == \
        (1, 2 * prof.conv2, 7, 7)
    for f in ("feature", "rnk_feature"):
        assert caffe.Net(f"prototxt/cpu/{f}.prototxt", caffe.TEST).blobs["feature"].data.shape == (1, prof.feat)
    for v in TRAINED:
        net = caffe.Net(f"prototxt/cpu/viper_{v}_train.prototxt", caffe.TRAIN)
        # The trunk's output: norm2 (CaffeNet order), MTDnet-rnk's pool2 (AlexNet order: LRN first).
        assert net.blobs["pool2" if v == "rnk" else "norm2"].data.shape == (2, prof.conv2, 7, 7)
        if v != "rnk":
            assert net.blobs["pairs"].data.shape == (4, 2 * prof.conv2, 7, 7)
            assert net.params["conv3_pair"][0].data.shape == (prof.conv3, 2 * prof.conv2, 3, 3)
            assert net.blobs["fc8_pair"].data.shape == (4, 2)


def test_bad_profiles_are_rejected():
    tiny = get_profile("tiny")
    with pytest.raises(MtdnetError, match="too small"):
        nets.pair_score_net(dataclasses.replace(tiny, input_size=31))
    with pytest.raises(MtdnetError, match="conv4 width 25 must be even"):
        nets.feature_net(dataclasses.replace(tiny, conv4=25))


# ---------------------------------------------------------------- the caffe binary

def test_caffe_time_runs_each_tiny_train_net(tiny_root):
    for v in TRAINED:
        rc, log = run_caffe(["time", "-model", f"prototxt/tiny/viper_{v}_train.prototxt", "-iterations", "2"],
                            cwd=str(tiny_root))
        assert rc == 0, log[-3000:]
        assert "Average Forward-Backward" in log


def test_caffe_train_tiny_lowers_the_loss(tiny_root):
    run = Run.create("synthetic", "mtdnet", "tiny")
    files = dict(snapshot_prefix=run.generated_snapshot_prefix(), solver=run.generated_solver)
    os.makedirs(tiny_root / os.path.dirname(files["snapshot_prefix"]))
    # The generated solver as is, but shorter: the losses fall well within 300 iterations.
    iters = 300
    short = tiny_root / "short_solver.prototxt"
    text = (tiny_root / files["solver"]).read_text()
    short.write_text(re.sub(r"max_iter: \d+", f"max_iter: {iters}", text))
    rc, log = run_caffe(["train", "-solver", str(short)], cwd=str(tiny_root))
    assert rc == 0, log[-3000:]
    prof = get_profile("tiny")
    smoothed = [float(x) for x in re.findall(r"Iteration \d+(?: \(.*?\))?, loss = ([-+.\deE]+)", log)]
    cls = [float(x) for x in re.findall(r"cls_loss = ([-+.\deE]+)", log)]
    trp = [float(x) for x in re.findall(r"trp_loss = ([-+.\deE]+)", log)]
    assert len(cls) == len(trp) == iters // prof.display
    # Per-display values of one batch each: compare the first and last five.
    assert np.mean(trp[-5:]) < 0.5 * np.mean(trp[:5]), trp
    assert np.mean(cls[-5:]) < np.mean(cls[:5]) - 0.05, cls
    assert np.mean(smoothed[-3:]) < 0.8 * np.mean(np.add(cls[:5], trp[:5])), smoothed
    for k in range(prof.snapshot, iters + 1, prof.snapshot):
        assert os.path.exists(tiny_root / f"{files['snapshot_prefix']}_iter_{k}.caffemodel")


# ---------------------------------------------------------------- variants

def test_cls_has_triplet_loss_weight_zero(tiny_root, monkeypatch):
    monkeypatch.chdir(tiny_root)
    for variant, weight in (("cls", 0), ("mtdnet", 1)):
        path = f"prototxt/tiny/viper_{variant}_train.prototxt"
        assert list(layer(read_net(path), "trp_loss").loss_weight) == [weight]
        net = caffe.Net(path, caffe.TRAIN)
        net.forward()
        net.backward()
        feat_grad = np.abs(net.params["feat"][0].diff).sum()
        assert (feat_grad == 0) if weight == 0 else (feat_grad > 0)
        assert np.abs(net.params["conv1"][0].diff).sum() > 0  # the softmax loss still trains the trunk


def test_rnk_is_a_triplet_only_alexnet(tiny_root):
    net = read_net(tiny_root / "prototxt/tiny/viper_rnk_train.prototxt")
    types = [x.type for x in net.layer]
    assert "SoftmaxWithLoss" not in types and types.count("Convolution") == 15  # 3 streams x 5
    assert list(layer(net, "trp_loss").bottom) == ["fc8_rnk", "fc8_rnk_p", "fc8_rnk_n"]


def test_aug_reads_target_and_cuhk03(tiny_root, monkeypatch):
    monkeypatch.chdir(tiny_root)
    path = "prototxt/tiny/viper_aug_train.prototxt"
    p = json.loads(layer(read_net(path), "data_a").python_param.param_str)
    assert p["source"] == ["data/viper-tiny-paper/images.lmdb", "data/cuhk03-tiny-paper/images.lmdb"]
    assert p["triplets"] == ["data/viper-tiny-paper/mix_triplets.npy", "data/cuhk03-tiny-paper/mix_triplets.npy"]
    assert p["balance"] is True
    net = caffe.Net(path, caffe.TRAIN)
    n_viper = len(np.load("data/viper-tiny-paper/mix_triplets.npy"))
    n_cuhk = len(np.load("data/cuhk03-tiny-paper/mix_triplets.npy"))
    assert n_viper < n_cuhk
    # The release's 1:1 mix: CUHK03's list is cut to the target's length.
    trip = net.layers[0].batcher.triplets
    n_target = net.layers[0].batcher.db.offsets[1]
    assert len(trip) == 2 * n_viper and (trip[:, 0] < n_target).sum() == n_viper


def test_cross_domain_net(tiny_root, monkeypatch):
    monkeypatch.chdir(tiny_root)
    run = Run.create("viper", "cross", "tiny")
    files = dict(train=run.generated_net, solver=run.generated_solver, snapshot_prefix=run.generated_snapshot_prefix())
    net_param = read_net(files["train"])
    by_name = {x.name: x for x in net_param.layer}
    src = [x for x in net_param.layer if x.param and x.name.endswith("_src")]
    tgt = [x for x in net_param.layer if x.param and not x.name.endswith("_src")]
    assert src and tgt
    for x in src:  # the source copy is frozen
        assert all(p.lr_mult == 0 and p.decay_mult == 0 for p in x.param), x.name
    for x in tgt:
        assert all(p.lr_mult > 0 for p in x.param), x.name
    # Every target layer up to fc7_pair has its frozen twin.
    twins = {x.name[:-4] for x in src}
    assert twins == {x.name for x in tgt if x.name not in ("feat", "feat_p", "feat_n", "fc8_pair")}
    cts = by_name["cts_loss"]
    assert cts.type == "ContrastiveLoss"
    assert cts.contrastive_loss_param.margin == pytest.approx(get_profile("tiny").contrastive_margin)
    assert list(cts.bottom) == ["fc7_pair_l2", "fc7_pair_l2_src", "cts_labels"]
    xnor = by_name["cts_labels"]
    assert xnor.python_param.layer == "XnorLabelLayer" and list(xnor.bottom) == ["pair_labels_src", "pair_labels"]
    # The L2-normalised features are fc7 before ReLU and dropout.
    assert list(by_name["fc7_pair_l2_sumsq"].bottom) == ["fc7_pair"]
    assert list(by_name["relu7_pair"].top) == ["relu7_pair"]

    os.makedirs(os.path.dirname(files["snapshot_prefix"]), exist_ok=True)
    solver = caffe.SGDSolver(files["solver"])
    net = solver.net
    before = {k: net.params[k][0].data.copy() for k in ("conv1", "fc7_pair", "conv1_src", "fc7_pair_src")}
    solver.step(2)
    for k in ("conv1_src", "fc7_pair_src"):
        np.testing.assert_array_equal(net.params[k][0].data, before[k])
    for k in ("conv1", "fc7_pair"):
        assert not np.array_equal(net.params[k][0].data, before[k])
    y = net.blobs["cts_labels"].data.ravel()
    np.testing.assert_array_equal(y, xnor_label.xnor(net.blobs["pair_labels_src"].data, net.blobs["pair_labels"].data))
    assert y.sum() == len(y) / 2  # source interleaved, target blocked: half similar, half not
    fa, fb = net.blobs["fc7_pair_l2"].data, net.blobs["fc7_pair_l2_src"].data
    np.testing.assert_allclose(np.linalg.norm(fa, axis=1), 1, rtol=1e-4)
    d = np.linalg.norm(fa.astype(np.float64) - fb, axis=1)
    m = get_profile("tiny").contrastive_margin
    expect = np.sum(y * d ** 2 + (1 - y) * np.maximum(m - d, 0) ** 2) / (2 * len(y))
    assert float(net.blobs["cts_loss"].data) == pytest.approx(expect, rel=1e-4)


# ---------------------------------------------------------------- options and bad input

def test_generator_options(tmp_path):
    p = generate_cli("--profile", "tiny", "--dataset", "viper", "--variant", "cross", "--split", "random3",
                     "--gpu", "--batch", "4", "--data-dir", "prepared", "--out", str(tmp_path))
    assert p.returncode == 0, p.stderr
    assert sorted(os.listdir(tmp_path / "solvers" / "tiny")) == ["viper_cross_solver.prototxt"]
    net = read_net(tmp_path / "prototxt/tiny/viper_cross_train.prototxt")
    a = json.loads(layer(net, "data_a").python_param.param_str)
    s = json.loads(layer(net, "data_a_src").python_param.param_str)
    assert a["source"] == "prepared/viper-tiny-random3/images.lmdb" and a["batch_size"] == 4
    assert s["triplets"] == "prepared/cuhk03-tiny-paper/train_triplets.npy" and s["seed"] != a["seed"]
    solver = (tmp_path / "solvers/tiny/viper_cross_solver.prototxt").read_text()
    assert "solver_mode: GPU" in solver
    assert 'snapshot_prefix: "runs/viper-cross-tiny-random3/snapshots/viper_cross"' in solver


def test_run_paths():
    r = Run.create("viper", "trp", "cpu")
    assert r.generated_net == "prototxt/cpu/viper_mtdnet_train.prototxt"
    assert generate.deploy_path(r.profile, r.variant.deploy) == "prototxt/cpu/feature.prototxt"
    assert r.project.rel(r.dir) == "runs/viper-mtdnet-cpu" and r.project.rel(r.result_dir) == "runs/viper-trp-cpu"
    assert Run.create("viper", "rnk", "cpu").variant.deploy == "rnk_feature"
    r = Run.create("ilids", "cross", "paper", split="random2")
    assert [r.project.rel(d.dir) for d in r.all_data] == ["data/ilids-paper-random2", "data/cuhk03-paper-paper"]
    assert r.variant.deploy == "pair_score"


@pytest.mark.parametrize("args,msg", [
    (["--profile", "huge"], "unknown profile 'huge'; valid: paper, cpu, scratch, tiny"),
    (["--dataset", "market1501"], "unknown dataset 'market1501'; valid: synthetic, viper, cuhk01, cuhk01half, "
                                  "cuhk03, cuhk03detected, ilids, prid2011"),
    (["--variant", "siamese"], "unknown variant 'siamese'; valid: mtdnet, cls, rnk, trp, aug, cross"),
    (["--split", "half"], "unknown split 'half'; valid: paper | val | random | random<k>"),
    (["--split", "random"], "needs one split (random<k>, e.g. random0), not 'random'"),  # a family of splits
    (["--dataset", "cuhk03", "--variant", "cross"], "variant 'cross' needs a target dataset other than cuhk03"),
    (["--batch", "0"], "batch must be >= 1"),
    (["--variant", "cross", "--batch", "1"], "at least 2 triplets"),
])
def test_bad_input_is_a_clear_error(tmp_path, args, msg):
    p = generate_cli(*args, "--out", str(tmp_path))
    assert p.returncode == 1
    assert p.stderr.startswith("error: ") and msg in p.stderr, p.stderr
    assert "Traceback" not in p.stderr
    assert not os.listdir(tmp_path)  # nothing half-written


def test_help():
    p = generate_cli("--help")
    assert p.returncode == 0 and "--profile" in p.stdout and "pair_score.prototxt" in p.stdout
