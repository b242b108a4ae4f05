"""The nets of MTDnet and its variants, built with caffe.NetSpec.

Naming (what makes weights move between nets by layer name):
  - The three triplet streams share one trunk. The anchor stream's layers are
    conv1, relu1, pool1, norm1, conv2, relu2, pool2, norm2 (CaffeNet's names,
    so `caffe train -weights bvlc_reference_caffenet.caffemodel` copies conv1
    and conv2); the positive and negative streams add `_p` / `_n` and share
    the anchor's parameters through `param { name: "conv1_w" }`.
  - Ranking branch: feat, feat_p, feat_n (shared), then the Python triplet loss.
  - Classification head on the regrouped pairs: conv3_pair .. fc8_pair. The
    `_pair` suffix is needed: CaffeNet's conv3 (384x256x3x3) and fc8 (1000)
    have other shapes, and Caffe aborts when `-weights` finds a layer of the
    same name with another shape; it also keeps conv3..fc7 on their fillers,
    as the authors initialised them.
  - MTDnet-rnk: CaffeNet's names up to fc7 (conv3 .. fc7, so an ImageNet model
    fills them by name, as the release initialised it), then fc8_rnk: the
    release's 512-wide "fc8" cannot take CaffeNet's 1000-wide fc8, and Caffe
    aborts on that shape mismatch.
  - MTDnet-cross: the target copy has exactly MTDnet's names; the frozen
    source copy appends `_src` (conv1_src, conv1_p_src, ..., fc7_pair_src).
Deploy nets reuse these names, so `net.copy_from(train snapshot)` fills them.

Architecture constants (LRN, pooling, dropout, bias fillers) are CaffeNet's and
the same for every profile; widths, input size, margins and batch come from the
profile; weight filler stds are the authors' at the paper profile and scaled
with the fan-in elsewhere (weight_std).
"""
import dataclasses
import json

import caffe
from caffe import layers as L, params as P

from core import MtdnetError, get_profile
from layers.triplet_loss import NORM_EPS

STREAMS = ("", "_p", "_n")            # anchor, positive, negative
DATA_TOPS = ("data_a", "data_p", "data_n")
SRC = "_src"                          # the frozen source copy of MTDnet-cross

LRN = dict(local_size=5, alpha=1e-4, beta=0.75)
POOL = dict(pool=P.Pooling.MAX, kernel_size=3, stride=2)
DROPOUT = 0.5
# Gaussian weight fillers of the authors' net (Nets/MTDnet/train_val.prototxt: conv 0.01, fc6 / fc7
# 0.005, fc8 0.01, feat 0.005); MTDnet-rnk's 512-d fc8: 0.005 (Nets/MTDnet-rnk/train_val.prototxt:441).
STD = dict(conv1=0.01, conv2=0.01, conv3=0.01, conv4=0.01, conv5=0.01, fc6=0.005, fc7=0.005, fc8=0.01,
           feat=0.005)
STD_RNK = dict(STD, fc8=0.005)
# Bias fillers (Profile.biases), per head: "pair" = MTDnet's trunk, ranking feature and pair head,
# "rnk" = MTDnet-rnk's AlexNet.
BIASES = {
    # The release: MTDnet's constants are 0 (no value given) except feat's 0.1 (Nets/MTDnet/
    # train_val.prototxt:112, 224, 782, 821); MTDnet-rnk's are AlexNet's, 0.1 on conv2, conv4, conv5
    # and fc6-fc8 (Nets/MTDnet-rnk/train_val.prototxt:188, 281, 317, 361, 403, 445).
    "release": {"pair": dict(conv1=0, conv2=0, conv3=0, conv4=0, conv5=0, fc6=0, fc7=0, fc8=0, feat=0.1),
                "rnk": dict(conv1=0, conv2=0.1, conv3=0, conv4=0.1, conv5=0.1, fc6=0.1, fc7=0.1, fc8=0.1)},
    # CaffeNet's (1 where a ReLU follows in its reference net, else 0); feat: the release's.
    "caffenet": {t: dict(conv1=0, conv2=1, conv3=0, conv4=1, conv5=1, fc6=1, fc7=1, fc8=0, feat=0.1)
                 for t in ("pair", "rnk")},
    "zero": {t: dict(conv1=0, conv2=0, conv3=0, conv4=0, conv5=0, fc6=0, fc7=0, fc8=0, feat=0)
             for t in ("pair", "rnk")},
}


def _check(profile):
    """Reject a profile whose widths or input size break the layer geometry."""
    for k in ("conv1", "conv2", "conv3", "conv4", "conv5"):
        if getattr(profile, k) % 2:
            raise MtdnetError(f"profile '{profile.name}': {k} width {getattr(profile, k)} must be even "
                              "(conv2, conv4 and conv5 use group 2)")
    g = geometry(profile)
    if min(g.values()) < 1:
        raise MtdnetError(f"profile '{profile.name}': input {profile.input_size} is too small: {g}")
    return g


def _conv_out(size, kernel, stride=1, pad=0):
    return (size + 2 * pad - kernel) // stride + 1


def _pool_out(size):
    # Caffe's pooling rounds up.
    return -(-(size - POOL["kernel_size"]) // POOL["stride"]) + 1


def geometry(profile):
    """Spatial sizes: conv1, pool1 (= conv2), norm2 (= conv3..conv5), pool5."""
    c1 = _conv_out(profile.input_size, 11, 4)
    p1 = _pool_out(c1)
    p2 = _pool_out(p1)
    return dict(conv1=c1, pool1=p1, norm2=p2, pool5=_pool_out(p2))


def fan_in(profile, key, tag="pair"):
    """Inputs per output unit of layer `key` (conv3 of the pair head sees both images' channels)."""
    g = geometry(profile)
    return dict(conv1=3 * 11 * 11, conv2=profile.conv1 // 2 * 25,
                conv3=(2 if tag == "pair" else 1) * profile.conv2 * 9,
                conv4=profile.conv3 // 2 * 9, conv5=profile.conv4 // 2 * 9,
                fc6=profile.conv5 * g["pool5"] ** 2, fc7=profile.fc6, fc8=profile.fc7,
                feat=profile.conv2 * g["norm2"] ** 2)[key]


def weight_std(profile, key, tag="pair"):
    """The authors' std at the paper profile. Narrower profiles have smaller fan-ins, and with
    the same std their activations would shrink layer after layer until the bias fillers
    swamp them; the std is scaled by sqrt(paper fan-in / fan-in) so every layer starts with
    the paper net's output variance."""
    ratio = fan_in(get_profile("paper"), key, tag) / fan_in(profile, key, tag)
    return float(f"{(STD_RNK if tag == 'rnk' else STD)[key] * ratio ** 0.5:.4g}")


def weight_filler(profile, key, tag="pair"):
    if key == "fc8" and tag == "pair" and profile.fc8_std:
        return dict(type="gaussian", std=profile.fc8_std)
    if profile.weight_filler == "msra":
        return dict(type="msra")
    if profile.weight_filler != "gaussian":
        raise MtdnetError(f"profile '{profile.name}': unknown weight_filler '{profile.weight_filler}' "
                          "(gaussian or msra)")
    return dict(type="gaussian", std=weight_std(profile, key, tag))


def bias_filler(profile, key, tag="pair"):
    """The constant of Profile.biases for layer `key` of head `tag` (BIASES)."""
    try:
        return dict(type="constant", value=BIASES[profile.biases][tag][key])
    except KeyError:
        raise MtdnetError(f"profile '{profile.name}': unknown biases '{profile.biases}'; "
                          f"valid: {', '.join(BIASES)}") from None


def _params(name, frozen):
    """Weights lr 1 / decay 1, bias lr 2 / decay 0; all 0 in a frozen copy. Named for sharing."""
    if frozen:
        return [dict(name=name + "_w", lr_mult=0, decay_mult=0), dict(name=name + "_b", lr_mult=0, decay_mult=0)]
    return [dict(name=name + "_w", lr_mult=1, decay_mult=1), dict(name=name + "_b", lr_mult=2, decay_mult=0)]


def _conv(bottom, base, profile, key, kernel, frozen, stride=1, pad=0, group=1, tag="pair"):
    kw = dict(num_output=getattr(profile, key), kernel_size=kernel,
              weight_filler=weight_filler(profile, key, tag),
              bias_filler=bias_filler(profile, key, tag))
    if stride != 1:
        kw["stride"] = stride
    if pad:
        kw["pad"] = pad
    if group != 1:
        kw["group"] = group
    return L.Convolution(bottom, param=_params(base, frozen), **kw)


def _fc(bottom, base, profile, key, frozen, width=None, tag="pair"):
    return L.InnerProduct(bottom, param=_params(base, frozen), num_output=width or getattr(profile, key),
                          weight_filler=weight_filler(profile, key, tag),
                          bias_filler=bias_filler(profile, key, tag))


def _python(bottoms, module, layer, params, **kw):
    return L.Python(*bottoms, python_param=dict(module=module, layer=layer,
                                                param_str=json.dumps(params, sort_keys=True)), **kw)


def trunk(n, bottom, profile, *, s="", d="", frozen=False, tag="pair"):
    """conv1 .. norm2 / pool2 of one stream; s = stream suffix, d = copy suffix (the frozen
    source copy's "_src"), frozen: lr 0. Returns its top.

    MTDnet's trunk has CaffeNet's order (pool, then LRN: Nets/MTDnet/train_val.prototxt:123-141);
    MTDnet-rnk's (tag "rnk") AlexNet's (LRN, then pool: Nets/MTDnet-rnk/train_val.prototxt:141-159).
    """
    def put(name, f):
        setattr(n, name + s + d, f)
        return f

    def pool_and_norm(x, k):
        if tag == "rnk":
            return put(f"pool{k}", L.Pooling(put(f"norm{k}", L.LRN(x, **LRN)), **POOL))
        return put(f"norm{k}", L.LRN(put(f"pool{k}", L.Pooling(x, **POOL)), **LRN))
    if profile.input_scale != 1:
        bottom = put("input_scale", L.Power(bottom, scale=profile.input_scale))
    x = put("conv1", _conv(bottom, "conv1" + d, profile, "conv1", 11, frozen, stride=4, tag=tag))
    put("relu1", L.ReLU(x, in_place=True))
    x = put("conv2", _conv(pool_and_norm(x, 1), "conv2" + d, profile, "conv2", 5, frozen, pad=2, group=2,
                           tag=tag))
    put("relu2", L.ReLU(x, in_place=True))
    return pool_and_norm(x, 2)


def upper(n, bottom, profile, *, tag, s="", d="", frozen=False, out=2, stop_at_fc7=False):
    """conv3 .. fc8 of CaffeNet: layer names <name>_pair<s><d> (the pair head), or for
    MTDnet-rnk CaffeNet's own names and fc8_rnk.

    relu7 is not in place, so fc7 keeps its value before ReLU and dropout (the
    cross-domain loss reads it). Returns (fc7, fc8 or None).
    """
    def layer(base):
        return base if tag == "rnk" and base != "fc8" else f"{base}_{tag}"

    def name(base):
        return f"{layer(base)}{s}{d}"

    def put(base, f):
        setattr(n, name(base), f)
        return f

    def param(base):
        return f"{layer(base)}{d}"      # the streams share the anchor's parameters

    x = put("conv3", _conv(bottom, param("conv3"), profile, "conv3", 3, frozen, pad=1, tag=tag))
    put("relu3", L.ReLU(x, in_place=True))
    x = put("conv4", _conv(x, param("conv4"), profile, "conv4", 3, frozen, pad=1, group=2, tag=tag))
    put("relu4", L.ReLU(x, in_place=True))
    x = put("conv5", _conv(x, param("conv5"), profile, "conv5", 3, frozen, pad=1, group=2, tag=tag))
    put("relu5", L.ReLU(x, in_place=True))
    x = put("pool5", L.Pooling(x, **POOL))
    x = put("fc6", _fc(x, param("fc6"), profile, "fc6", frozen, tag=tag))
    put("relu6", L.ReLU(x, in_place=True))
    put("drop6", L.Dropout(x, dropout_ratio=DROPOUT, in_place=True))
    fc7 = put("fc7", _fc(x, param("fc7"), profile, "fc7", frozen, tag=tag))
    if stop_at_fc7:
        return fc7, None
    x = put("relu7", L.ReLU(fc7))
    put("drop7", L.Dropout(x, dropout_ratio=DROPOUT, in_place=True))
    return fc7, put("fc8", _fc(x, param("fc8"), profile, "fc8", frozen, width=out, tag=tag))


def l2_normalize(n, bottom, out):
    """out = bottom / |bottom| per row, from plain BVLC layers (Reduction, Power, Scale)."""
    setattr(n, out + "_sumsq", L.Reduction(bottom, operation=P.Reduction.SUMSQ, axis=1))
    setattr(n, out + "_invnorm", L.Power(getattr(n, out + "_sumsq"), power=-0.5, shift=NORM_EPS))
    setattr(n, out, L.Scale(bottom, getattr(n, out + "_invnorm"), axis=0))
    return getattr(n, out)


def data_layer(n, sources, triplets, batch, profile, seed, d=""):
    """The TripletDataLayer; `sources`/`triplets` are paths or lists of paths (lists: a mix in
    which every source contributes the same number of triplets)."""
    params = dict(source=sources, triplets=triplets, batch_size=batch, input_size=profile.input_size,
                  mirror=True, shuffle=True, seed=seed)
    if isinstance(sources, list):
        params["balance"] = True
    if profile.shift:
        params["shift"] = profile.shift
    if profile.prefetch_workers:
        params["prefetch"] = profile.prefetch_workers
    tops = L.Python(ntop=3, python_param=dict(
        module="layers.triplet_data", layer="TripletDataLayer", param_str=json.dumps(params, sort_keys=True)))
    for name, t in zip(DATA_TOPS, tops):
        setattr(n, name + d, t)
    return tops


def _triplet_loss(n, feats, profile, weight, name="trp_loss"):
    setattr(n, name, _python(feats, "layers.triplet_loss", "TripletLossLayer",
                             dict(margin=profile.margin), loss_weight=weight))


def pair_regroup(n, norms, profile, batch, order, d=""):
    """(pairs, labels): the triplets' (N, C, H, W) trunk outputs as 2N pairs of 2C channels and
    their labels (1: anchor-positive, 0: anchor-negative) in `order` (layers/pair_regroup.py).

    profile.pair_regroup "python": the PairRegroupLayer (host memory, numpy). "caffe": the same
    rows from plain Caffe layers (Concat, Reshape, DummyData), which stay on the GPU in GPU
    mode; the anchor feeds both pairs, and Caffe's automatic Split sums its two gradients.
    """
    if profile.pair_regroup == "python":
        return _python(norms, "layers.pair_regroup", "PairRegroupLayer", dict(order=order), ntop=2)
    a, p, neg = norms

    def put(name, top):
        setattr(n, name + d, top)
        return top
    pos = put("pairs_pos", L.Concat(a, p, axis=1))            # (N, 2C, H, W)
    negs = put("pairs_neg", L.Concat(a, neg, axis=1))
    const = dict(type="constant")
    lshape = [batch] if order == "blocked" else [batch, 1]
    ones = put("pair_ones", L.DummyData(shape=[dict(dim=lshape)], data_filler=[dict(const, value=1.0)]))
    zeros = put("pair_zeros", L.DummyData(shape=[dict(dim=lshape)], data_filler=[dict(const, value=0.0)]))
    if order == "blocked":                                    # positive rows 0..N-1, negative N..2N-1
        return L.Concat(pos, negs, axis=0), L.Concat(ones, zeros, axis=0)
    # interleaved: pair i's positive at row 2i, its negative at 2i+1: (N, 2, 2C, H, W) -> (2N, 2C, H, W)
    pos1 = put("pairs_pos_1", L.Reshape(pos, reshape_param=dict(axis=1, num_axes=0, shape=dict(dim=[1]))))
    neg1 = put("pairs_neg_1", L.Reshape(negs, reshape_param=dict(axis=1, num_axes=0, shape=dict(dim=[1]))))
    both = put("pairs_both", L.Concat(pos1, neg1, axis=1))
    lboth = put("pair_labels_both", L.Concat(ones, zeros, axis=1))   # (N, 2)
    return (L.Reshape(both, reshape_param=dict(axis=0, num_axes=2, shape=dict(dim=[-1]))),
            L.Reshape(lboth, reshape_param=dict(shape=dict(dim=[-1]))))


def mtdnet_body(n, data, profile, trp_weight, d="", frozen=False, order="blocked", losses=True, batch=None):
    """Three trunk streams, the ranking branch and the pair head. Returns (fc7_pair, pair labels).

    losses=False (the frozen source copy of MTDnet-cross): no ranking branch,
    and the head stops at fc7_pair, the only output the cross-domain loss uses.
    """
    norms = [trunk(n, x, profile, s=s, d=d, frozen=frozen) for x, s in zip(data, STREAMS)]
    if losses:
        feats = []
        for x, s in zip(norms, STREAMS):
            setattr(n, "feat" + s + d, _fc(x, "feat" + d, profile, "feat", frozen))
            feats.append(getattr(n, "feat" + s + d))
        _triplet_loss(n, feats, profile, trp_weight)
    pairs, labels = pair_regroup(n, norms, profile, batch, order, d)
    setattr(n, "pairs" + d, pairs)
    setattr(n, "pair_labels" + d, labels)
    fc7, fc8 = upper(n, pairs, profile, tag="pair", d=d, frozen=frozen, stop_at_fc7=not losses)
    if losses:
        # Labels come from a layer with a backward: say they take no gradient.
        n.cls_loss = L.SoftmaxWithLoss(fc8, labels, loss_weight=1, propagate_down=[True, False])
        n.accuracy = L.Accuracy(fc8, labels, propagate_down=[False, False])
    return fc7, labels


# Train-net builders, named by the variant registry (core/variants.py):
# f(profile, batch, seed, target, source) -> NetSpec; target / source are
# (images.lmdb, train_triplets.npy) path pairs (a mixed variant's target holds
# lists: the target's files and the source's), source is None unless the variant
# reads the source dataset as a separate stream.

def mtdnet_net(profile, batch, seed, target, source=None, trp_weight=1):
    """MTDnet (and MTDnet-aug, on mixed data): triplet loss + pair classifier."""
    n = caffe.NetSpec()
    mtdnet_body(n, data_layer(n, target[0], target[1], batch, profile, seed), profile, trp_weight=trp_weight,
                batch=batch)
    return n


def cls_net(profile, batch, seed, target, source=None):
    """MTDnet-cls: MTDnet with the triplet loss weight 0."""
    return mtdnet_net(profile, batch, seed, target, trp_weight=0)


def rnk_net(profile, batch, seed, target, source=None):
    """MTDnet-rnk: three AlexNet streams (shared weights) and the triplet loss only."""
    n = caffe.NetSpec()
    feats = []
    for x, s in zip(data_layer(n, target[0], target[1], batch, profile, seed), STREAMS):
        pool2 = trunk(n, x, profile, s=s, tag="rnk")
        feats.append(upper(n, pool2, profile, tag="rnk", s=s, out=profile.feat)[1])
    _triplet_loss(n, feats, profile, 1)
    return n


def cross_net(profile, batch, seed, target, source=None):
    """MTDnet-cross: the target MTDnet, a frozen source copy and the contrastive loss between
    their L2-normalised fc7_pair, labelled by the XNOR of the pairs' labels."""
    n = caffe.NetSpec()
    fc7, labels = mtdnet_body(n, data_layer(n, target[0], target[1], batch, profile, seed), profile,
                              trp_weight=1, batch=batch)
    # Another seed, so the two data layers do not mirror in lockstep.
    src = data_layer(n, source[0], source[1], batch, profile, seed + 1, d=SRC)
    # Source pairs interleaved, target pairs blocked: the XNOR label is then
    # 1 for half the rows and 0 for the others (blocked twice would give all 1).
    fc7_src, labels_src = mtdnet_body(n, src, profile, None, d=SRC, frozen=True, order="interleaved",
                                      losses=False, batch=batch)
    a = l2_normalize(n, fc7, "fc7_pair_l2")
    b = l2_normalize(n, fc7_src, "fc7_pair_l2" + SRC)
    n.cts_labels = _python([labels_src, labels], "layers.xnor_label", "XnorLabelLayer", {},
                           propagate_down=[False, False])
    n.cts_loss = L.ContrastiveLoss(a, b, n.cts_labels, margin=profile.contrastive_margin, loss_weight=1,
                                   propagate_down=[True, False, False])
    return n


def train_net(variant, profile, batch, target, source=None, seed=None):
    """The NetSpec of `variant`'s train net (a spec.Variant), through its builder in TRAIN_NETS."""
    _check(profile)
    if batch < variant.min_batch:
        raise MtdnetError(f"variant '{variant.key}' needs at least {variant.min_batch} triplets per batch, "
                          f"got {batch}")
    try:
        build = TRAIN_NETS[variant.net]
    except KeyError:
        raise MtdnetError(f"variant '{variant.key}': no train-net builder '{variant.net}'; valid: "
                          f"{', '.join(TRAIN_NETS)} (register one with register_train_net)") from None
    return build(profile, batch, profile.seed if seed is None else seed, target, source)


def register_train_net(key, build):
    """A train-net builder f(profile, batch, seed, target, source=None) -> NetSpec that a
    Variant names by `net=key`."""
    TRAIN_NETS[key] = build


def _inputs(n, names, profile, batch=1):
    for name in names:
        setattr(n, name, L.Input(shape=dict(dim=[batch, 3, profile.input_size, profile.input_size])))
    return [getattr(n, x) for x in names]


def pair_score_net(profile):
    """Deploy: data_1, data_2 -> shared trunk -> concat -> conv3_pair..fc8_pair -> prob (P(same) = prob[:, 1])."""
    _check(profile)
    n = caffe.NetSpec()
    x1, x2 = _inputs(n, ("data_1", "data_2"), profile)
    norms = [trunk(n, x, profile, s=s) for x, s in zip((x1, x2), STREAMS)]
    n.pairs = L.Concat(*norms, axis=1)
    _, fc8 = upper(n, n.pairs, profile, tag="pair")
    n.prob = L.Softmax(fc8)
    return n


def feature_net(profile):
    """Deploy for MTDnet-trp: data -> trunk -> feat -> `feature` (L2-normalised)."""
    _check(profile)
    n = caffe.NetSpec()
    (x,) = _inputs(n, ("data",), profile)
    n.feat = _fc(trunk(n, x, profile), "feat", profile, "feat", False)
    l2_normalize(n, n.feat, "feature")
    return n


def rnk_feature_net(profile):
    """Deploy for MTDnet-rnk: data -> AlexNet stream -> fc8_rnk -> `feature` (L2-normalised)."""
    _check(profile)
    n = caffe.NetSpec()
    (x,) = _inputs(n, ("data",), profile)
    _, fc8 = upper(n, trunk(n, x, profile, tag="rnk"), profile, tag="rnk", out=profile.feat)
    l2_normalize(n, fc8, "feature")
    return n



# The one table of builders a Variant names (core/variants.py: `net=`, `deploy=`).
# Train nets: f(profile, batch, seed, target, source=None) -> NetSpec; target / source are
# DataSpecs (the source for aug and cross).
TRAIN_NETS = {"mtdnet": mtdnet_net, "cls": cls_net, "rnk": rnk_net, "cross": cross_net}


@dataclasses.dataclass(frozen=True)
class DeployNet:
    build: object            # f(profile) -> NetSpec
    what: str                # its inputs and outputs, for the file's header


DEPLOY_NETS = {
    "pair_score": DeployNet(pair_score_net, "pair scoring: data_1, data_2 -> prob[:, 1] = P(same person)"),
    "feature": DeployNet(feature_net, "MTDnet-trp ranking feature: data -> feature (L2-normalised feat)"),
    "rnk_feature": DeployNet(rnk_feature_net, "MTDnet-rnk ranking feature: data -> feature (L2-normalised fc8_rnk)"),
}
