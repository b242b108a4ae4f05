"""Initial models: ImageNet conv1/conv2 into a fresh MTDnet model; a CUHK03 MTDnet into both copies
of the cross-domain net.

Every copy asserts shapes: numpy's `.flat =` (and hand-written copies like it)
silently repeat or truncate on a mismatch, so a wrong-profile model would
train from garbage without a word.
"""
import contextlib
import json
import os
import tempfile

import numpy as np
from google.protobuf import text_format
from google.protobuf.message import DecodeError

from core import MtdnetError
from core.fsutil import atomic_write_json
from core.profiles import Profile

IMAGENET_LAYERS = ("conv1", "conv2")
SRC = "_src"
DATA_MODULE = "layers.triplet_data"
DEFAULT_SEED = Profile.__dataclass_fields__["seed"].default


def _pb2():
    from caffe.proto import caffe_pb2
    return caffe_pb2


def _blob_array(b):
    if b.HasField("shape"):
        shape = tuple(b.shape.dim)
    else:  # V1-era models (e.g. bvlc_reference_caffenet.caffemodel): num, channels, height, width
        shape = (b.num, b.channels, b.height, b.width)
    data = np.asarray(b.data if len(b.data) else b.double_data, np.float32)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"blob of shape {shape} holds {data.size} values")
    return data.reshape(shape)


def read_caffemodel(path):
    """{layer name: [param arrays]} of a .caffemodel (current or V1 format); layers without params left out."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise MtdnetError(f"{path}: model file not found") from None
    except IsADirectoryError:
        raise MtdnetError(f"{path}: is a directory, not a .caffemodel") from None
    net = _pb2().NetParameter()
    try:
        net.ParseFromString(raw)
    except DecodeError as e:
        raise MtdnetError(f"{path}: not a Caffe model (binary NetParameter): {e}") from None
    out = {}
    for layer in list(net.layer) + list(net.layers):
        if len(layer.blobs):
            try:
                out[layer.name] = [_blob_array(b) for b in layer.blobs]
            except ValueError as e:
                raise MtdnetError(f"{path}: layer '{layer.name}': {e}") from None
    if not out:
        raise MtdnetError(f"{path}: no layer with weights: not a trained Caffe model")
    return out


def read_net(path):
    try:
        text = open(path).read()
    except FileNotFoundError:
        raise MtdnetError(f"{path}: net prototxt not found") from None
    net = _pb2().NetParameter()
    try:
        text_format.Merge(text, net)
    except text_format.ParseError as e:
        raise MtdnetError(f"{path}: not a valid Caffe net prototxt: {e}") from None
    return net


def with_input_layers(net, batch=1, where="net"):
    """The net with its TripletDataLayers replaced by Input layers of the same tops
    (batch x 3 x input_size x input_size), so it instantiates without data.
    Returns (NetParameter, the data layers' seed or None)."""
    out = _pb2().NetParameter()
    out.CopyFrom(net)
    seed = None
    for layer in out.layer:
        if layer.type == "Python" and layer.python_param.module == DATA_MODULE:
            p = json.loads(layer.python_param.param_str or "{}")
            if "input_size" not in p:
                raise MtdnetError(f"{where}: data layer '{layer.name}' has no input_size in its param_str; "
                                  "regenerate the net with `make prototxt`")
            seed = p.get("seed", seed) if seed is None else seed
            s = int(p["input_size"])
            layer.type = "Input"
            layer.ClearField("python_param")
            layer.input_param.ClearField("shape")
            for _ in layer.top:
                layer.input_param.shape.add().dim.extend([batch, 3, s, s])
    return out, seed


@contextlib.contextmanager
def instantiate(net_path, seed=None):
    """A caffe.Net (TRAIN phase, fillers seeded) of the prototxt at net_path, data layers as inputs."""
    import caffe
    net_param, data_seed = with_input_layers(read_net(net_path), where=net_path)
    seed = seed if seed is not None else (data_seed if data_seed is not None else DEFAULT_SEED)
    fd, tmp = tempfile.mkstemp(suffix=".prototxt")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text_format.MessageToString(net_param))
        caffe.set_mode_cpu()
        caffe.set_random_seed(seed)
        yield caffe.Net(tmp, caffe.TRAIN), seed
    finally:
        os.unlink(tmp)


def copy_params(net, blobs, mapping, model_path, hint=""):
    """net.params[target] = blobs[source] for each (target, source) in mapping, shapes asserted
    for all before anything is copied. Returns {target: [shapes]}."""
    missing = [s for t, s in mapping.items() if s not in blobs]
    if missing:
        more = f" (and {len(missing) - 1} more the net needs)" if len(missing) > 1 else ""
        raise MtdnetError(f"{model_path}: no layer '{missing[0]}'{more}; it has: {', '.join(blobs)}{hint}")
    for target, source in mapping.items():
        if target not in net.params:
            raise MtdnetError(f"the net has no layer '{target}' with weights")
        dst, src = net.params[target], blobs[source]
        if len(dst) != len(src):
            raise MtdnetError(f"{model_path}: layer '{source}' has {len(src)} param blobs, "
                              f"the net's '{target}' has {len(dst)}")
        for j, (d, s) in enumerate(zip(dst, src)):
            if not _fits(s.shape, d.data.shape):
                raise MtdnetError(f"{model_path}: layer '{source}' param {j} has shape {s.shape}, "
                                  f"the net's '{target}' needs {tuple(d.data.shape)}{hint}")
    done = {}
    for target, source in mapping.items():
        for d, s in zip(net.params[target], blobs[source]):
            d.data[...] = s.reshape(d.data.shape)
        done[target] = [list(d.data.shape) for d in net.params[target]]
    return done


def _fits(src, dst):
    """Equal shapes; or, as Caffe allows for V1 blobs, dst padded with leading 1s to 4-D (a bias (N,) as 1x1x1xN)."""
    src, dst = tuple(src), tuple(dst)
    return src == dst or (len(src) == 4 and len(dst) < 4 and src == (1,) * (4 - len(dst)) + dst)


def _save(net, out, record):
    out = os.path.abspath(out)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(out) + ".", suffix=".tmp", dir=os.path.dirname(out))
    os.close(fd)
    try:
        net.save(tmp)
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    atomic_write_json(out + ".json", record)


def init_from_imagenet(imagenet_model, net_path, out, seed=None, layers=IMAGENET_LAYERS):
    """A fresh model of net_path (fillers, seeded) with `layers` copied from an ImageNet
    CaffeNet / AlexNet caffemodel; writes out and out.json (what was copied, the seed)."""
    blobs = read_caffemodel(imagenet_model)
    with instantiate(net_path, seed) as (net, seed):
        copied = copy_params(net, blobs, {x: x for x in layers}, imagenet_model,
                             hint=" (ImageNet weights fit the paper profile's widths only)")
        record = dict(net=net_path, imagenet=imagenet_model, seed=seed, copied=copied)
        _save(net, out, record)
    return record


def init_cross_from_mtdnet(mtdnet_model, cross_net_path, out, seed=None):
    """Both copies of the cross-domain net from one MTDnet model (the paper: the CUHK03-trained one):
    each layer of the target copy from the model's layer of the same name, each `<name>_src`
    layer of the frozen source copy from `<name>`. Every layer with weights must be filled."""
    blobs = read_caffemodel(mtdnet_model)
    with instantiate(cross_net_path, seed) as (net, seed):
        mapping = {name: name[:-len(SRC)] if name.endswith(SRC) else name for name in net.params}
        if not any(name.endswith(SRC) for name in mapping):
            raise MtdnetError(f"{cross_net_path}: no '{SRC}' layers: not a cross-domain net")
        copied = copy_params(net, blobs, mapping, mtdnet_model,
                             hint=" (the cross net and the MTDnet model must come from the same profile)")
        record = dict(net=cross_net_path, mtdnet=mtdnet_model, seed=seed, copied=copied)
        _save(net, out, record)
    return record
