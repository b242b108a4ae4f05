"""Our Caffe build's CPU fast path against its stock code paths, in one build.

The build (scripts/patch_caffe.sh, section F) keeps Caffe's stock layer code and
adds a faster CPU path for Convolution, max Pooling, cross-channel LRN and ReLU;
MTDNET_CAFFE_FAST=0 in a process's environment runs the stock code. Everything
here runs each side in a child process of its own (the switch is read once per
process) on the same net, weights, inputs and Caffe RNG seed:

- capture(): every blob's data and diff and every parameter's diff after one
  forward + backward of a train net (the equality checks in tests/ and the
  golden values recorded from the unpatched build);
- time_net(): per-layer and whole forward + backward seconds, peak memory;
- gemm_peak(): the single-precision GEMM rate of the BLAS Caffe links, through a
  Caffe InnerProduct layer (the yardstick of "fraction of peak").

Blob values are compared relative to each blob's largest magnitude (compare()).

Why the tests check forward and backward apart: a batched GEMM sums in another order
than Caffe's per-image GEMMs, so a convolution's outputs differ in the last bits, and
where two inputs of a max-pooling window are tied within that rounding the two builds
may pick different winners; the gradient then flows to a different element (both are
the max's gradient). So forward outputs are compared from a forward of each build, and
gradients from a stock forward followed by each build's backward (same winners).
"""
import ctypes
import dataclasses
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import zlib

import numpy as np
from caffe.proto import caffe_pb2
from google.protobuf import text_format

from core import REPO_ROOT, Project, Run
from core.errors import MtdnetError
from core.variants import trained_variants
from prototxt import generate, weights

FAST_ENV = "MTDNET_CAFFE_FAST"
DNNL_ENV = "MTDNET_CAFFE_DNNL"
# stock: Caffe's own code; fast: the fast path (oneDNN's convolutions); im2col: the fast
# path with its own chunked im2col + GEMM convolutions (doubles, and shapes oneDNN refuses).
MODES = ("stock", "im2col", "fast")
MODE_ENV = {"stock": {FAST_ENV: "0"}, "im2col": {FAST_ENV: "1", DNNL_ENV: "0"},
            "fast": {FAST_ENV: "1", DNNL_ENV: "1"}}
# Samples kept per array in a golden file, and the tolerance of every comparison:
# |a - b| <= TOLERANCE * max|b| per blob (float rounding moves the last bits only).
GOLDEN_SAMPLES = 64
TOLERANCE = 1e-5
GOLDEN_SEED = 1701       # weights, inputs and Caffe's RNG of every captured net by default


@dataclasses.dataclass(frozen=True)
class NetCase:
    """One variant's train net at one profile, with inputs instead of the data layers."""
    variant: str
    profile: str
    batch: int                 # triplets
    dataset: str = "viper"     # any dataset gives the same net shape; viper has every variant

    @property
    def name(self):
        return f"{self.profile}_{self.variant}_b{self.batch}"

    def net_text(self):
        run = Run.create(self.dataset, self.variant, self.profile)
        param = text_format.Parse(generate.train_net_text(run, batch=self.batch), caffe_pb2.NetParameter())
        param, _ = weights.with_input_layers(param, batch=self.batch, where=self.name)
        return text_format.MessageToString(param)


def cases(profiles=("scratch", "paper"), batch=2):
    """Every trained variant's train net at each profile (the equality checks' scope)."""
    return [NetCase(v.key, p, max(batch, v.min_batch)) for p in profiles for v in trained_variants()]


# ---- in the child process ------------------------------------------------------------------

def _net(net_text, seed):
    import caffe
    caffe.set_mode_cpu()
    caffe.set_random_seed(seed)
    fd, path = tempfile.mkstemp(suffix=".prototxt")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(net_text)
        net = caffe.Net(path, caffe.TRAIN)
    finally:
        os.unlink(path)
    rng = np.random.RandomState(seed)
    done = set()
    for lname, blobs in net.params.items():
        for i, b in enumerate(blobs):
            key = b.data.__array_interface__["data"][0]      # the blob's memory address
            if key in done:          # a blob shared by name: filled once
                continue
            done.add(key)
            fan_in = max(1, int(np.prod(b.data.shape[1:]))) if b.data.ndim > 1 else 1
            scale = np.sqrt(2.0 / fan_in) if i == 0 else 0.1
            b.data[...] = rng.standard_normal(b.data.shape) * scale
    for name in net.inputs:
        net.blobs[name].data[...] = rng.uniform(0, 255, net.blobs[name].data.shape)
    return net


def _libcaffe():
    """The loaded pycaffe through ctypes (dlsym finds libcaffe's and OpenBLAS's symbols)."""
    import caffe._caffe
    return ctypes.CDLL(caffe._caffe.__file__)


def _set_fast(on):
    _libcaffe().mtdnet_caffe_set_fast(1 if on else 0)


def _forward_backward(net, seed, forward=None, backward=None):
    """One forward + backward; forward / backward = "stock" or "fast" switch the code path
    for that half (None: as the process's MTDNET_CAFFE_FAST says)."""
    import caffe
    caffe.set_random_seed(seed)      # Dropout draws the same masks on both sides
    for blobs in net.params.values():
        for b in blobs:
            b.diff[...] = 0
    if forward:
        _set_fast(forward == "fast")
    net.forward()
    if backward:
        _set_fast(backward == "fast")
    net.backward()


def _capture(net_text, seed, forward=None, backward=None):
    net = _net(net_text, seed)
    _forward_backward(net, seed, forward, backward)
    out = {}
    for name, b in net.blobs.items():
        out[f"blob/{name}/data"] = b.data.copy()
        out[f"blob/{name}/diff"] = b.diff.copy()
    for lname, blobs in net.params.items():
        for i, b in enumerate(blobs):
            out[f"param/{lname}/{i}/diff"] = b.diff.copy()
    return out


def _flops(net, net_text):
    """Forward and backward multiply-add FLOPs of each Convolution / InnerProduct layer."""
    param = text_format.Parse(net_text, caffe_pb2.NetParameter())
    learns = {l.name: (any(p.lr_mult != 0 for p in l.param) or not l.param) for l in param.layer}
    need = {}
    out = {}
    for i, layer in enumerate(net.layers):
        name = net._layer_names[i]
        bottoms = [net._blob_names[j] for j in net._bottom_ids(i)]
        tops = [net._blob_names[j] for j in net._top_ids(i)]
        has_params = len(layer.blobs) > 0
        bottom_needs = any(need.get(b, False) for b in bottoms)
        for t in tops:
            need[t] = bottom_needs or (has_params and learns.get(name, True))
        if layer.type not in ("Convolution", "InnerProduct"):
            continue
        w = layer.blobs[0].data.shape
        per_output = int(np.prod(w[1:]))
        fwd = 2.0 * sum(net.blobs[t].data.size for t in tops) * per_output
        bwd = (fwd if learns.get(name, True) else 0.0) + (fwd if bottom_needs else 0.0)
        out[name] = (fwd, bwd)
    return out


def _time(net_text, seed, iters, warmup):
    net = _net(net_text, seed)
    n = len(net.layers)
    names = list(net._layer_names)
    types = [l.type for l in net.layers]
    fwd = np.zeros((iters, n))
    bwd = np.zeros((iters, n))
    whole = []
    for it in range(warmup + iters):
        t0 = time.perf_counter()
        _forward_backward(net, seed)
        t1 = time.perf_counter()
        if it >= warmup:
            whole.append(t1 - t0)
    for it in range(iters):           # per layer, after the whole iterations
        for i in range(n):
            t0 = time.perf_counter()
            net._forward(i, i)
            fwd[it, i] = time.perf_counter() - t0
        for i in reversed(range(n)):
            t0 = time.perf_counter()
            net._backward(i, i)
            bwd[it, i] = time.perf_counter() - t0
    flops = _flops(net, net_text)
    return dict(layers=names, types=types, forward_s=np.median(fwd, 0).tolist(),
                backward_s=np.median(bwd, 0).tolist(), iteration_s=whole,
                flops={k: list(v) for k, v in flops.items()},
                peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0)


def _gemm_peak(size, repeats):
    import caffe
    text = (f'layer {{ name: "x" type: "Input" top: "x" input_param {{ shape {{ dim: {size} dim: {size} }} }} }}\n'
            f'layer {{ name: "ip" type: "InnerProduct" bottom: "x" top: "y" '
            f'inner_product_param {{ num_output: {size} bias_term: false }} }}\n')
    net = _net(text, 0)
    net.forward()
    best = min(_timed(net.forward) for _ in range(repeats))
    return dict(size=size, seconds=best, gflops=2.0 * size ** 3 / best / 1e9)


def _timed(f):
    t0 = time.perf_counter()
    f()
    return time.perf_counter() - t0


def child_main(argv):
    """python -m mtdnet.caffe_speed JOB.json OUT: one job in this (child) process."""
    with open(argv[0]) as f:
        job = json.load(f)
    out = argv[1]
    if job["kind"] == "capture":
        arrays = _capture(job["net_text"], job["seed"], job.get("forward"), job.get("backward"))
        np.savez(out + ".tmp.npz", **arrays)
        os.replace(out + ".tmp.npz", out)
        return 0
    if job["kind"] == "info":
        result = {}
        if job.get("net_text"):       # how many convolutions oneDNN ran in one iteration
            lib = _libcaffe()
            lib.mtdnet_caffe_dnnl_calls.restype = ctypes.c_long
            before = lib.mtdnet_caffe_dnnl_calls()
            _forward_backward(_net(job["net_text"], job["seed"]), job["seed"])
            result["onednn_calls"] = lib.mtdnet_caffe_dnnl_calls() - before
    elif job["kind"] == "time":
        result = _time(job["net_text"], job["seed"], job["iters"], job["warmup"])
    elif job["kind"] == "gemm":
        result = _gemm_peak(job["size"], job["repeats"])
    else:
        raise MtdnetError(f"{argv[0]}: unknown job kind {job['kind']!r}")
    result.update(caffe_threads())
    with open(out + ".tmp", "w") as f:
        json.dump(result, f)
    os.replace(out + ".tmp", out)
    return 0


def caffe_threads():
    """{"fast": this process runs the fast path, "threads": on how many threads} of the Caffe
    pycaffe loaded (a build without the fast path: its OpenBLAS thread count)."""
    lib = _libcaffe()
    try:
        fast = bool(lib.mtdnet_caffe_fast())
        conv = "onednn" if fast and lib.mtdnet_caffe_dnnl() else "im2col" if fast else "stock"
        return dict(fast=fast, threads=int(lib.mtdnet_caffe_threads()), conv=conv)
    except AttributeError:
        return dict(fast=False, threads=int(lib.openblas_get_num_threads()), conv="stock")


def compute_record():
    """What changes float summation order, for run.json and cmc.json: the Caffe code path,
    its thread count and the machine's CPU count (a rerun with other values may move a
    rank-1 by a point). A `caffe` child process inherits this process's environment, so
    this process's answer is the child's."""
    return dict(caffe_threads(), cpus=os.cpu_count())


def add_compute(info):
    """info["compute"]: the distinct compute_record()s of every part of a (resumed) run."""
    parts = list(info.get("compute") or [])
    now = compute_record()
    if now not in parts:
        parts.append(now)
    info["compute"] = parts
    return info


# ---- in the parent ---------------------------------------------------------------------------

def run_child(mode, job, env=None, timeout=None):
    """Run one job in a child process with the stock or fast code paths; its output's path."""
    if mode not in MODES:
        raise MtdnetError(f"mode must be one of {MODES}, got {mode!r}")
    tmp = tempfile.mkdtemp(prefix="mtdnet-caffe-speed-")
    job_path = os.path.join(tmp, "job.json")
    out = os.path.join(tmp, "out.npz" if job["kind"] == "capture" else "out.json")
    with open(job_path, "w") as f:
        json.dump(job, f)
    child_env = dict(os.environ if env is None else env)
    child_env.update(MODE_ENV[mode])
    child_env.setdefault("GLOG_minloglevel", "2")
    p = subprocess.run([sys.executable, "-m", "mtdnet.caffe_speed", job_path, out], env=child_env,
                       cwd=Project().root, capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0 or not os.path.exists(out):
        raise MtdnetError(f"the {mode} child ({job['kind']}) failed (exit {p.returncode}):\n"
                          f"{(p.stdout + p.stderr)[-3000:]}")
    return out


def load(out):
    """A child's output (arrays for a capture, a dict otherwise), its folder removed."""
    try:
        if out.endswith(".npz"):
            with np.load(out) as z:
                return {k: z[k] for k in z.files}
        with open(out) as f:
            return json.load(f)
    finally:
        shutil.rmtree(os.path.dirname(out), ignore_errors=True)


def _text(net):
    """A net's prototxt text: the text itself, or a NetCase's generated one."""
    return net if isinstance(net, str) else net.net_text()


def capture(net, mode, seed=GOLDEN_SEED, env=None, forward=None, backward=None):
    """Every array of one forward + backward of net (a NetCase or a net's text) in a child
    started in `mode`; forward / backward override the code path of that half."""
    job = dict(kind="capture", net_text=_text(net), seed=seed, forward=forward, backward=backward)
    return load(run_child(mode, job, env=env))


def child_info(mode, env=None, net=None, seed=GOLDEN_SEED):
    """caffe_threads() of a child process in this mode; with a net (NetCase or text), also
    "onednn_calls": the convolution calls oneDNN ran in one forward + backward of it."""
    text = None if net is None else _text(net)
    return load(run_child(mode, dict(kind="info", net_text=text, seed=seed), env=env))


def compare(got, want, tolerance=TOLERANCE):
    """[(array name, max |got - want| / max |want|)] of the arrays beyond tolerance, worst first.

    want holds whole arrays, or golden samples (name/val, name/max: see golden_samples)."""
    bad = []
    for key, ref in want.items():
        if key.endswith("/max"):
            continue
        sampled = key.endswith("/val")
        name = key[:-len("/val")] if sampled else key
        g = got.get(name)
        if g is None:
            bad.append((name, float("inf")))
            continue
        g = g.ravel()
        if sampled:
            g = g[sample_indices(name, g.size, ref.size)] if g.size else g
            scale = float(want[name + "/max"])
        else:
            ref = ref.ravel()
            scale = float(np.abs(ref).max(initial=0.0))
        if g.shape != ref.shape:
            bad.append((name, float("inf")))
            continue
        err = float(np.abs(g.astype(np.float64) - ref).max(initial=0.0))
        rel = err / scale if scale > 0 else err
        if rel > tolerance:
            bad.append((name, rel))
    return sorted(bad, key=lambda x: -x[1])


def sample_indices(name, size, k=GOLDEN_SAMPLES):
    """The k positions (or fewer, for a smaller array) sampled from the array called name."""
    k = min(k, size)
    return np.random.RandomState(zlib.crc32(name.encode()) & 0x7FFFFFFF).choice(size, k, replace=False)


def golden_samples(arrays):
    """A small golden record: each array's largest magnitude and its values at sample_indices()."""
    out = {}
    for name in sorted(arrays):
        a = arrays[name].ravel()
        out[name + "/val"] = a[sample_indices(name, a.size)].astype(np.float32)
        out[name + "/max"] = np.float32(np.abs(a).max(initial=0.0))
    return out


GOLDEN_PATH = os.path.join(REPO_ROOT, "tests", "data", "caffe_stock_golden.npz")


def record_golden(out=GOLDEN_PATH, log=print):
    """Golden samples of every case's blobs from the Caffe this venv runs (the unpatched build).

    Refuses a build with the fast path: the golden values must come from stock Caffe."""
    import caffe
    lib = os.path.dirname(os.path.dirname(os.path.abspath(caffe.__file__)))
    if os.path.exists(os.path.join(lib, "..", "include", "caffe", "util", "mtdnet_cpu.hpp")):
        raise MtdnetError(f"{lib}: this Caffe has the CPU fast path; record the golden values with the "
                          "unpatched build (scripts/setup.sh with STOCK=1 prints its path)")
    arrays = {}
    meta = dict(seed=GOLDEN_SEED, tolerance=TOLERANCE, samples=GOLDEN_SAMPLES, caffe=lib, cases=[])
    for case in cases():
        t0 = time.perf_counter()
        got = capture(case, "stock", seed=GOLDEN_SEED)
        samples = golden_samples(got)
        names = sorted(k[:-len("/val")] for k in samples if k.endswith("/val"))
        arrays[f"{case.name}|names"] = np.array(json.dumps(names))
        arrays[f"{case.name}|count"] = np.array([samples[n + "/val"].size for n in names], np.int64)
        arrays[f"{case.name}|val"] = np.concatenate([samples[n + "/val"] for n in names])
        arrays[f"{case.name}|max"] = np.array([samples[n + "/max"] for n in names], np.float32)
        meta["cases"].append(dataclasses.asdict(case))
        log(f"{case.name}: {len(got)} arrays in {time.perf_counter() - t0:.1f} s")
    arrays["meta"] = np.array(json.dumps(meta))
    os.makedirs(os.path.dirname(out), exist_ok=True)
    tmp = out + ".tmp.npz"
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, out)
    log(f"wrote {out} ({os.path.getsize(out) / 1024:.0f} KiB)")
    return out


def read_golden(path=GOLDEN_PATH):
    """(meta, {case name: {array key: value}}) of a golden file."""
    if not os.path.exists(path):
        raise MtdnetError(f"{path}: no golden file (python tools/record_caffe_golden.py with the stock build)")
    with np.load(path) as z:
        meta = json.loads(str(z["meta"]))
        per_case = {}
        for c in meta["cases"]:
            name = NetCase(**c).name
            names = json.loads(str(z[f"{name}|names"]))
            vals = np.split(z[f"{name}|val"], np.cumsum(z[f"{name}|count"])[:-1])
            d = per_case[name] = {}
            for n, v, m in zip(names, vals, z[f"{name}|max"]):
                d[n + "/val"], d[n + "/max"] = v, m
    return meta, per_case


if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1:]))
