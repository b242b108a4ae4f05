"""The `paper` profile against the authors' release, setting by setting.

Every assertion cites where the setting comes from: a file and line of the release
(github.com/cwhgn/MTDnet, commit 905038b: Nets/, BuildData/, ComputeAccuracy/) or a
section of the paper. The generated files under prototxt/paper/ and solvers/paper/
are what is checked, as a user would run them. Where the release contradicts
itself the test pins our documented decision (README, "Fidelity").
"""
import os

import numpy as np
import pytest
from caffe.proto import caffe_pb2
from google.protobuf import text_format

from core import REPO_ROOT, Run, datasets, get_profile
from data_prep import splitting
from data_prep.datasets import read_dataset
from data_prep.splitting import make_split, select_images
from data_prep.triplets import make_triplets
from tests import fixtures as F

P = get_profile("paper")


def net(name):
    n = caffe_pb2.NetParameter()
    with open(os.path.join(REPO_ROOT, "prototxt", "paper", name)) as f:
        text_format.Merge(f.read(), n)
    return n


def solver(name):
    s = caffe_pb2.SolverParameter()
    with open(os.path.join(REPO_ROOT, "solvers", "paper", name)) as f:
        text_format.Merge(f.read(), s)
    return s


def layers(n):
    return {x.name: x for x in n.layer}


def params(layer):
    p = layer.convolution_param if layer.type == "Convolution" else layer.inner_product_param
    return p


def check(layer, typ, out, std, bias, kernel=None, stride=1, pad=0, group=1):
    """type, outputs, kernel / stride / pad / group, Gaussian std, constant bias, lr 1/2, decay 1/0."""
    assert layer.type == typ, layer.name
    p = params(layer)
    assert p.num_output == out, layer.name
    if kernel is not None:
        assert (list(p.kernel_size), list(p.stride) or [1], list(p.pad) or [0], p.group) == \
            ([kernel], [stride], [pad], group), layer.name
    assert (p.weight_filler.type, p.weight_filler.std) == ("gaussian", pytest.approx(std)), layer.name
    assert (p.bias_filler.type, p.bias_filler.value) == ("constant", pytest.approx(bias)), layer.name
    assert [(x.lr_mult, x.decay_mult) for x in layer.param] == [(1, 1), (2, 0)], layer.name


def order(n, names):
    idx = [i for i, x in enumerate(n.layer) if x.name in names]
    return [n.layer[i].name for i in idx]


# ---------------------------------------------------------------- MTDnet

MTDNET = layers(net("viper_mtdnet_train.prototxt"))


def test_trunk_is_caffenets():
    L = MTDNET
    # Nets/MTDnet/train_val.prototxt:89-115: conv1 96 k11 s4, Gaussian 0.01, bias constant (0).
    check(L["conv1"], "Convolution", 96, 0.01, 0, kernel=11, stride=4)
    # :123-141: CaffeNet order, pool 3/2 MAX then LRN 5 / 1e-4 / 0.75.
    assert order(net("viper_mtdnet_train.prototxt"), {"conv1", "relu1", "pool1", "norm1", "conv2", "relu2",
                                                     "pool2", "norm2"}) == \
        ["conv1", "relu1", "pool1", "norm1", "conv2", "relu2", "pool2", "norm2"]
    for k in ("pool1", "pool2"):
        p = L[k].pooling_param
        assert (p.pool, p.kernel_size, p.stride) == (caffe_pb2.PoolingParameter.MAX, 3, 2)
    for k in ("norm1", "norm2"):
        p = L[k].lrn_param
        assert (p.local_size, p.alpha, p.beta) == (5, pytest.approx(1e-4), pytest.approx(0.75))
    # :145-169: conv2 256 k5 pad 2 group 2, Gaussian 0.01, bias 0.
    check(L["conv2"], "Convolution", 256, 0.01, 0, kernel=5, pad=2, group=2)
    # :242-254, 395-407: the positive and negative streams share the anchor's weights by name.
    for s in ("_p", "_n"):
        assert [x.name for x in L["conv1" + s].param] == ["conv1_w", "conv1_b"]
        assert [x.name for x in L["conv2" + s].param] == ["conv2_w", "conv2_b"]


def test_ranking_branch():
    L = MTDNET
    # :202-224: feat InnerProduct 512 on norm2, Gaussian 0.005, bias 0.1; shared by the streams (:355-377).
    check(L["feat"], "InnerProduct", 512, 0.005, 0.1)
    assert list(L["feat"].bottom) == ["norm2"] and [x.name for x in L["feat_n"].param] == ["feat_w", "feat_b"]
    # :572-584: triplet loss on the L2-normalised features, margin 1.0, loss weight 1.
    t = L["trp_loss"]
    assert t.python_param.layer == "TripletLossLayer" and list(t.loss_weight) == [1]
    assert '"margin": 1.0' in t.python_param.param_str and list(t.bottom) == ["feat", "feat_p", "feat_n"]


def test_pair_head_is_caffenets_upper_half():
    L = MTDNET
    # :588-618: (anchor, positive) and (anchor, negative) norm2 concatenated on channels, stacked.
    assert L["pairs"].python_param.layer == "PairRegroupLayer"
    # :654-675: conv3 384 k3 pad 1 over all 512 input channels (no group), Gaussian 0.01, bias 0.
    check(L["conv3_pair"], "Convolution", 384, 0.01, 0, kernel=3, pad=1)
    # :686-741: conv4 384, conv5 256, k3 pad 1 group 2.
    check(L["conv4_pair"], "Convolution", 384, 0.01, 0, kernel=3, pad=1, group=2)
    check(L["conv5_pair"], "Convolution", 256, 0.01, 0, kernel=3, pad=1, group=2)
    # :752-759: pool5 3/2.
    assert (L["pool5_pair"].pooling_param.kernel_size, L["pool5_pair"].pooling_param.stride) == (3, 2)
    # :763-837: fc6 / fc7 4096, Gaussian 0.005, bias 0, ReLU and dropout 0.5.
    check(L["fc6_pair"], "InnerProduct", 4096, 0.005, 0)
    check(L["fc7_pair"], "InnerProduct", 4096, 0.005, 0)
    for k in ("drop6_pair", "drop7_pair"):
        assert L[k].dropout_param.dropout_ratio == pytest.approx(0.5)
    # :841-874: fc8 2-way, Gaussian 0.01, bias 0; SoftmaxWithLoss, loss weight 1.
    check(L["fc8_pair"], "InnerProduct", 2, 0.01, 0)
    assert L["cls_loss"].type == "SoftmaxWithLoss" and list(L["cls_loss"].loss_weight) == [1]


def test_data_as_the_release_fed_it():
    # :3-49: three data layers of batch 128 with mirror: true, no mean, no scale;
    # BuildData/create_lmdb_triplet.sh:18: images resized to 227 x 227.
    p = MTDNET["data_a"].python_param.param_str
    for want in ('"batch_size": 128', '"input_size": 227', '"mirror": true'):
        assert want in p
    assert "input_scale" not in MTDNET and P.input_scale == 1 and "shift" not in p


def test_cls_is_mtdnet_without_the_triplet_loss():
    # Paper, Sec. "Experiments": MTDnet-cls = MTDnet with the ranking loss weight 0.
    L = layers(net("viper_cls_train.prototxt"))
    assert list(L["trp_loss"].loss_weight) == [0] and list(L["cls_loss"].loss_weight) == [1]


# ---------------------------------------------------------------- MTDnet-rnk

def test_rnk_is_the_releases_alexnet():
    n = net("viper_rnk_train.prototxt")
    L = layers(n)
    # Nets/MTDnet-rnk/train_val.prototxt:106-217: AlexNet order, LRN before pool.
    assert order(n, {"conv1", "relu1", "norm1", "pool1", "conv2", "relu2", "norm2", "pool2", "conv3"}) == \
        ["conv1", "relu1", "norm1", "pool1", "conv2", "relu2", "norm2", "pool2", "conv3"]
    # :121-130, 178-188: conv1 bias 0, conv2 bias 0.1.
    check(L["conv1"], "Convolution", 96, 0.01, 0, kernel=11, stride=4)
    check(L["conv2"], "Convolution", 256, 0.01, 0.1, kernel=5, pad=2, group=2)
    # :236-317: conv3 384 (bias 0), conv4 384 group 2 (0.1), conv5 256 group 2 (0.1).
    check(L["conv3"], "Convolution", 384, 0.01, 0, kernel=3, pad=1)
    check(L["conv4"], "Convolution", 384, 0.01, 0.1, kernel=3, pad=1, group=2)
    check(L["conv5"], "Convolution", 256, 0.01, 0.1, kernel=3, pad=1, group=2)
    # :354-403: fc6 / fc7 4096, Gaussian 0.005, bias 0.1, dropout 0.5 (:377, :419).
    check(L["fc6"], "InnerProduct", 4096, 0.005, 0.1)
    check(L["fc7"], "InnerProduct", 4096, 0.005, 0.1)
    assert L["drop6"].dropout_param.dropout_ratio == pytest.approx(0.5)
    # :423-445: the 512-d ranking output, Gaussian 0.005, bias 0.1. Named fc8_rnk: the release's
    # "fc8" cannot take CaffeNet's 1000-wide fc8 when initialised from it by name (README, Fidelity).
    check(L["fc8_rnk"], "InnerProduct", 512, 0.005, 0.1)
    # :450-: L2-normalised, then the triplet loss only.
    assert "SoftmaxWithLoss" not in {x.type for x in n.layer}
    assert list(L["trp_loss"].bottom) == ["fc8_rnk", "fc8_rnk_p", "fc8_rnk_n"]


def test_rnk_starts_from_the_whole_imagenet_model_below_fc8():
    # Nets/MTDnet-rnk/train_finetune_cuhk03.sh:4: --weights bvlc_reference_caffenet.caffemodel (by
    # name: conv1 .. fc7); MTDnet's: conv1 / conv2 only (Nets/MTDnet/train_finetune_cuhk03.sh:4,
    # Tools/ExtractFromImageNet.py).
    assert Run.create("viper", "rnk", P).train_variant.imagenet_layers == \
        ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7")
    assert Run.create("viper", "mtdnet", P).train_variant.imagenet_layers == ("conv1", "conv2")


# ---------------------------------------------------------------- MTDnet-cross

def test_cross_domain_net():
    L = layers(net("viper_cross_train.prototxt"))
    # Nets/MTDnet-cross/train_val.prototxt:1003-1015 ...: the source copy is frozen (lr_mult 0).
    src = [x for x in L.values() if x.name.endswith("_src") and x.param]
    assert src and all((p.lr_mult, p.decay_mult) == (0, 0) for x in src for p in x.param)
    # :836-866: the L2-normalised fc7 before ReLU and dropout; :1599-1606: contrastive loss, margin 1.
    assert list(L["fc7_pair_l2_sumsq"].bottom) == ["fc7_pair"]
    c = L["cts_loss"]
    assert c.type == "ContrastiveLoss" and c.contrastive_loss_param.margin == pytest.approx(1)
    assert list(c.loss_weight) == [1]


# ---------------------------------------------------------------- solvers

@pytest.mark.parametrize("dataset,variant,lr,iters", [
    # Nets/MTDnet/solver_<dataset>.prototxt:4 (base_lr), :8 (max_iter).
    ("viper", "mtdnet", 0.001, 20000), ("cuhk01", "mtdnet", 0.001, 20000), ("ilids", "mtdnet", 0.001, 20000),
    ("prid2011", "mtdnet", 0.0001, 20000), ("cuhk03", "mtdnet", 0.001, 200000),
    # The variants of MTDnet share its solvers (Nets/MTDnet-cross/train_finetune_others.sh).
    ("prid2011", "cls", 0.0001, 20000), ("viper", "aug", 0.001, 20000), ("prid2011", "cross", 0.0001, 20000),
    # Nets/MTDnet-rnk/solver_PRID.prototxt:4 lr 0.001; solver_VIPeR.prototxt:8 and solver_cuhk03.prototxt:8
    # 200000 iterations; solver_CUHK01 / iLIDS: 20000.
    ("prid2011", "rnk", 0.001, 20000), ("viper", "rnk", 0.001, 200000), ("cuhk03", "rnk", 0.001, 200000),
    ("cuhk01", "rnk", 0.001, 20000), ("ilids", "rnk", 0.001, 20000),
])
def test_solvers(dataset, variant, lr, iters):
    s = solver(f"{dataset}_{variant}_solver.prototxt")
    assert (s.base_lr, s.max_iter) == (pytest.approx(lr), iters)
    # :5, :9-11: fixed policy, momentum 0.9, weight decay 0.0005, a snapshot every 500 iterations.
    assert (s.lr_policy, s.momentum, s.weight_decay, s.snapshot) == \
        ("fixed", pytest.approx(0.9), pytest.approx(0.0005), 500)
    assert s.type == "SGD"


def test_from_scratch_profiles_keep_their_own_solvers():
    """The release's rnk exceptions belong to the paper profile; the CPU profiles' budgets stay."""
    assert solver("viper_rnk_solver.prototxt").max_iter == 200000
    assert Run.create("viper", "rnk", "scratch").solver_settings() == (0.003, 1600)


# ---------------------------------------------------------------- triplets

def images_of(ds, split="paper"):
    s = make_split(ds, split, P.seed, num_test=10)
    return s, select_images(ds, s)[1]


@pytest.fixture(scope="module")
def viper_like(tmp_path_factory):
    d = tmp_path_factory.mktemp("viper_like")
    F.write_viper(str(d), range(1, 41), h=8, w=4)
    return read_dataset("viper", str(d))


def test_ten_triplets_per_pair_and_direction(viper_like):
    # BuildData/BuildData_VIPeR.py:67 (and BuildData_CUHK01.py:69, BuildData_cuhk03.py:160,
    # BuildData_iLIDS.py:71): 10 per positive pair, anchors from each camera.
    s, images = images_of(viper_like, "random0")
    t, pairs = make_triplets(images, s["train"], P.triplets_per_pair, 1, True, "random")
    assert P.triplets_per_pair == 10 and len(t) == 2 * 10 * pairs
    cam = np.array([im["camera_id"] for im in images])
    assert (cam[t[:, 0]] == 0).sum() == (cam[t[:, 0]] == 1).sum() == 10 * pairs
    assert (cam[t[:, 2]] == cam[t[:, 1]]).all()          # the negative from the positive's camera


def test_prid2011_negatives_are_every_other_identity(viper_like):
    # BuildData/BuildData_PRID.py:54-71: each positive pair with each other training identity once.
    assert datasets.get_dataset("prid2011").spec.negatives == "every_other"
    s, images = images_of(viper_like, "random0")
    t, pairs = make_triplets(images, s["train"], P.triplets_per_pair, 1, True, "every_other")
    pid = np.array([im["person_id"] for im in images])
    n = len(s["train"])
    assert len(t) == 2 * pairs * (n - 1)
    for a in np.unique(t[:, 0])[:5]:
        rows = t[t[:, 0] == a]
        assert sorted(pid[rows[:, 2]]) == sorted(set(s["train"]) - {pid[a]})


def test_aug_mix_is_the_releases():
    # BuildData/BuildAugData_VIPeR.py:31: 50 triplets per target pair; :208 CUHK03's list cut to
    # the target's count, 1:1 (layers/triplet_data.py `balance`).
    assert P.aug_triplets_per_pair == 50
    p = layers(net("viper_aug_train.prototxt"))["data_a"].python_param.param_str
    assert '"balance": true' in p and "mix_triplets.npy" in p


# ---------------------------------------------------------------- splits and galleries

def test_split_sizes_and_recorded_test_identities(tmp_path):
    # Paper, Sec. "Datasets and protocols"; the release's Recorded*data*.npy (data_prep/splits/).
    F.write_cuhk01(str(tmp_path / "c1"), [1, 2])
    F.write_ilids(str(tmp_path / "il"), {1: 2, 2: 2})
    F.write_prid2011(str(tmp_path / "pr"), range(1, 201), range(1, 750))
    want = {"cuhk01": (871, 0, 100, "c1"), "ilids": (60, 0, 59, "il"), "prid2011": (100, 0, 100, "pr")}
    for name, (tr, va, te, root) in want.items():
        f = read_dataset(name, str(tmp_path / root)).facts
        assert (f.n_train, f.n_val, f.n_test, len(f.paper_test_ids)) == (tr, va, te, te), name
    prid = read_dataset("prid2011", str(tmp_path / "pr")).facts
    assert len(prid.distractor_ids) == 549           # cam_b persons 201..749 in every gallery


def test_cuhk03_paper_split_is_testsets1_and_the_recorded_validation_list(tmp_path):
    # BuildData/BuildData_cuhk03.py:110-112 (test = testsets{1}) and :298 (RecordedValdata_cuhk03.npy
    # as validation); 1160 / 100 / 100 identities of camera pairs 1-3.
    F.write_cuhk03(str(tmp_path / "cuhk-03.mat"), [843, 440, 77, 0, 0],
                   lambda pair, i, col: col in (1, 6), testsets=[[(1, 1), (2, 2), (3, 3)]], h=2, w=1,
                   detected=False)
    ds = read_dataset("cuhk03", str(tmp_path))
    s = make_split(ds, "paper", P.seed)
    assert s["test"] == [1001, 2002, 3003] and len(s["val"]) == 100 and s["substitute"] is None


def test_galleries():
    # ComputeAccuracy/ComputeAccuracy_cuhk03.py:110 and the others: the first camera-B image per
    # identity for the pair score; ExtractFeature2Mat_cuhk03.py:109-113: every camera-B image for
    # CUHK03's feature ranking (trp, rnk), and CUHK01's as below.
    images = [{"index": i, "person_id": p, "camera_id": c, "role": "test"}
              for i, (p, c) in enumerate([(1, 0), (1, 1), (1, 1), (2, 0), (2, 1)])]
    e = splitting.eval_sets({"test": [1, 2], "val": [], "distractors": [], "probe_camera": 0,
                             "gallery_camera": 1}, images)["test"]["identities"]
    assert [x["gallery"] for x in e] == [[1], [4]] and [x["gallery_all"] for x in e] == [[1, 2], [4]]
    # ExtractFeature2Mat_CUHK01.py:108-140 and GetAccuracyfromFeatures.py:22-24: CUHK01 (and
    # CUHK01half) features are ranked against both camera-B images of each test identity.
    assert {d: datasets.get_dataset(d).spec.feature_gallery for d in ("cuhk03", "cuhk03detected", "cuhk01",
                                                                      "cuhk01half")} == dict.fromkeys(
        ("cuhk03", "cuhk03detected", "cuhk01", "cuhk01half"), "all")
    assert {datasets.get_dataset(d).spec.feature_gallery for d in ("viper", "ilids", "prid2011")} == {"first"}
