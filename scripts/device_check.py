"""The GPU check: one run on the GPU machine, one JSON.

Run through scripts/device_run.sh (which sets up the packed Caffe, Python and
libraries; see scripts/device_pack.sh). Parts, each timed and recorded even when
another fails:
  device_query   `caffe device_query -gpu 0` (and nvidia-smi's name/driver/memory)
  agreement      GPU vs CPU forward and backward of each tiny train net (mtdnet, cls,
                 rnk, cross, aug; mtdnet with pair_regroup=caffe too): every loss and
                 parameter gradient, max relative difference (dropout off, same weights,
                 same batches); our Python layers run inside these nets
  train          `caffe train` of the paper MTDnet on synthetic data: s/iter, it/s,
                 peak GPU memory; prefetch 4 (200 iterations), prefetch 0 and
                 pair_regroup=caffe (100 each)
  caffe_time     `caffe time -gpu 0` of the paper mtdnet (Python and Caffe regroup) and
                 rnk train nets with Input layers instead of the data layer; each train
                 run's overhead over it (data layer + Python layers)
  scratch        `caffe train` of the scratch profile's MTDnet, cls and rnk nets and of
                 MTDnet with 4 workers and Caffe regrouping (--scratch-iters each), and
                 `caffe time` of its MTDnet (both regroupings, the ten slowest layers): what
                 the CPU's Table 1 stages (CUHK03: 30000 iterations) would take on this GPU
  scoring        pair scores and triplet features of a tiny deploy net scored on the GPU
                 vs the CPU (mtdnet/scoring.py)
--cpu (the rehearsal on a machine without a GPU): everything in CPU mode, 2 paper
iterations instead of 200/100, so the pack and the script are proven before the one
GPU call. Targets: train within 15% of caffe time; GPU vs CPU within 1e-4.
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
import traceback

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
os.environ.setdefault("GLOG_minloglevel", "1")

import caffe  # noqa: E402
from google.protobuf import text_format  # noqa: E402

from core import get_profile, get_variant  # noqa: E402
from core.errors import MtdnetError  # noqa: E402
from data_prep.imagedb import write_image_lmdb  # noqa: E402
from mtdnet.caffelog import caffe_time_layers, caffe_time_ms, iteration_times  # noqa: E402
from prototxt import nets  # noqa: E402
from prototxt import weights as W  # noqa: E402

CAFFE = os.environ.get("MTDNET_CAFFE_BIN") or "caffe"
TOL = 1e-4


def sh(args, timeout, env=None):
    t0 = time.time()
    env = dict(os.environ, **(env or {}))
    # The caffe tool's embedded Python imports our layers from the repository.
    env["PYTHONPATH"] = os.pathsep.join(x for x in (REPO, env.get("PYTHONPATH")) if x)
    try:
        p = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env)
        return p.returncode, p.stdout + p.stderr, time.time() - t0
    except subprocess.TimeoutExpired as e:     # keep what it printed: the iterations done count
        text = "".join(x.decode(errors="replace") if isinstance(x, bytes) else (x or "")
                       for x in (e.stdout, e.stderr))
        return "timeout", text, time.time() - t0


def random_data(d, n_images, size, n_trip, seed):
    os.makedirs(d, exist_ok=True)
    rng = np.random.RandomState(seed)
    imgs = rng.randint(0, 256, size=(n_images, 3, size, size)).astype(np.uint8)
    write_image_lmdb(os.path.join(d, "images.lmdb"), ((im, i // 4) for i, im in enumerate(imgs)))
    trip = rng.randint(0, n_images, size=(n_trip, 3))
    np.save(os.path.join(d, "t.npy"), trip)
    return os.path.join(d, "images.lmdb"), os.path.join(d, "t.npy")


class GpuMemory:
    """Peak used GPU memory (MiB) from nvidia-smi, polled while a run lasts."""

    def __init__(self):
        self.peak, self.stop = None, threading.Event()

    def __enter__(self):
        def poll():
            while not self.stop.is_set():
                try:
                    out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                                         capture_output=True, text=True, timeout=10).stdout
                    v = float(out.split()[0])
                    self.peak = v if self.peak is None else max(self.peak, v)
                except Exception:
                    pass
                self.stop.wait(0.5)
        self.t = threading.Thread(target=poll, daemon=True)
        self.t.start()
        return self

    def __exit__(self, *a):
        self.stop.set()
        self.t.join(5)


# ---------------------------------------------------------------- parts

def part_device_query(a):
    rc, log, secs = sh([CAFFE, "device_query", "-gpu", "0"], 120)
    out = dict(rc=rc, seconds=secs, last_lines=log.strip().splitlines()[-16:])
    rc2, smi, _ = sh(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"], 30) \
        if not a.cpu else (None, "", 0)
    out["nvidia_smi"] = smi.strip() if rc2 == 0 else None
    return out


def he_weights(net, seed):
    """He-scaled random weights, zero biases: activations neither vanish nor saturate."""
    rng = np.random.RandomState(seed)
    for blobs in net.params.values():
        w = blobs[0].data
        w[...] = rng.randn(*w.shape).astype(np.float32) * np.sqrt(2.0 / max(1, int(np.prod(w.shape[1:]))))
        for b in blobs[1:]:
            b.data[...] = 0


def _set_mode(gpu):
    if gpu:
        caffe.set_device(0)
        caffe.set_mode_gpu()
    else:
        caffe.set_mode_cpu()


def _no_dropout(text):
    net = caffe.proto.caffe_pb2.NetParameter()
    text_format.Merge(text, net)
    for layer in net.layer:
        if layer.type == "Dropout":
            layer.dropout_param.dropout_ratio = 0.0
    return text_format.MessageToString(net)


def _run_net(path, gpu, params=None):
    _set_mode(gpu)
    net = caffe.Net(path, caffe.TRAIN)
    if params is None:
        he_weights(net, 0)
    else:
        for name, blobs in net.params.items():
            for b, v in zip(blobs, params[name]):
                b.data[...] = v
    t0 = time.time()
    net.forward()
    net.backward()
    secs = time.time() - t0
    outs = {k: net.blobs[k].data.copy() for k in net.outputs}
    grads = {f"{k}[{i}]": b.diff.copy() for k, blobs in net.params.items() for i, b in enumerate(blobs)}
    data = {k: [b.data.copy() for b in blobs] for k, blobs in net.params.items()}
    del net
    return outs, grads, data, secs


def _rel(x, y):
    scale = max(float(np.max(np.abs(x))), float(np.max(np.abs(y))), 1e-12)
    return float(np.max(np.abs(x.astype(np.float64) - y))) / scale


def part_agreement(a, tmp):
    prof = get_profile("tiny")
    tgt = random_data(os.path.join(tmp, "tiny_t"), 32, prof.input_size, 64, 1)
    src = random_data(os.path.join(tmp, "tiny_s"), 32, prof.input_size, 64, 2)
    cases = [("mtdnet", prof), ("cls", prof), ("rnk", prof), ("cross", prof),
             ("mtdnet", get_profile("tiny", ["pair_regroup=caffe"]))]
    aug_target = ([tgt[0], src[0]], [tgt[1], src[1]])
    out = {}
    for key, p in cases + [("aug", prof)]:
        name = key + ("+caffe_regroup" if p.pair_regroup == "caffe" else "")
        try:
            target = aug_target if key == "aug" else tgt
            text = str(nets.train_net(get_variant(key), p, 8, target, source=src).to_proto())
            path = os.path.join(tmp, f"agree_{name}.prototxt")
            with open(path, "w") as f:
                f.write(_no_dropout(text))
            c_out, c_grad, params, c_s = _run_net(path, gpu=False)
            g_out, g_grad, _, g_s = _run_net(path, gpu=not a.cpu, params=params)
            rel = {k: _rel(c_out[k], g_out[k]) for k in c_out}
            rel.update({k: _rel(c_grad[k], g_grad[k]) for k in c_grad if np.any(c_grad[k]) or np.any(g_grad[k])})
            worst = max(rel, key=rel.get)
            out[name] = dict(max_rel_diff=rel[worst], worst=worst, compared=len(rel),
                             outputs={k: float(np.ravel(v)[0]) for k, v in c_out.items()},
                             cpu_s=c_s, gpu_s=g_s, ok=rel[worst] <= TOL)
        except Exception:
            out[name] = dict(error=traceback.format_exc()[-3000:])
    out["all_ok"] = all(v.get("ok") for v in out.values() if isinstance(v, dict))
    return out


PAPER = "paper"    # --profile: the train / caffe_time parts' profile (tiny: a quick rehearsal)


def _paper_nets(tmp, overrides=(), profile=None):
    prof = get_profile(profile or PAPER, list(overrides))
    d = os.path.join(tmp, f"{prof.name}_data")
    if not os.path.exists(os.path.join(d, "t.npy")):
        random_data(d, 512, prof.input_size, 4000, 3)
    return prof, (os.path.join(d, "images.lmdb"), os.path.join(d, "t.npy"))


def _train(a, tmp, name, iters, overrides, profile=None, variant="mtdnet"):
    prof, data = _paper_nets(tmp, overrides, profile)
    net_path = os.path.join(tmp, f"train_{name}.prototxt")
    with open(net_path, "w") as f:
        f.write(str(nets.train_net(get_variant(variant), prof, prof.batch_triplets, data).to_proto()))
    solver = os.path.join(tmp, f"solver_{name}.prototxt")
    with open(solver, "w") as f:
        f.write(f'net: "{net_path}"\nbase_lr: 0.0001\nlr_policy: "fixed"\nmomentum: 0.9\nweight_decay: 0.0005\n'
                f'max_iter: {iters}\ndisplay: 1\nrandom_seed: 1701\nsnapshot_after_train: false\n'
                f'solver_mode: {"CPU" if a.cpu else "GPU"}\n')
    with GpuMemory() as mem:
        rc, log, secs = sh([CAFFE, "train", "-solver", solver] + ([] if a.cpu else ["-gpu", "0"]),
                           a.train_timeout, env=dict(GLOG_minloglevel="0", GLOG_logtostderr="1"))
    times = iteration_times(log)
    warm = min(10, iters // 5)
    its = sorted(k for k in times if k >= warm)
    s_per_iter = (times[its[-1]] - times[its[0]]) / (its[-1] - its[0]) if len(its) >= 2 else None
    return dict(rc=rc, iterations=iters, wall_s=secs, s_per_iter=s_per_iter,
                it_per_s=1 / s_per_iter if s_per_iter else None, peak_gpu_mem_mib=mem.peak,
                profile=prof.name, variant=variant, overrides=list(overrides),
                log_tail=log.strip().splitlines()[-6:] if rc else None)


def part_train(a, tmp):
    n_main, n_other = (2, 2) if a.cpu else (200, 100)
    return {"prefetch4": _train(a, tmp, "prefetch4", n_main, ["prefetch_workers=4"]),
            "prefetch0": _train(a, tmp, "prefetch0", n_other, ["prefetch_workers=0"]),
            "prefetch4_caffe_regroup": _train(a, tmp, "caffe_regroup", n_other,
                                              ["prefetch_workers=4", "pair_regroup=caffe"])}


def _caffe_time(a, tmp, name, variant, overrides, profile=None):
    prof, data = _paper_nets(tmp, overrides, profile)
    param = caffe.proto.caffe_pb2.NetParameter()
    text_format.Merge(str(nets.train_net(get_variant(variant), prof, prof.batch_triplets, data).to_proto()), param)
    inp, _ = W.with_input_layers(param, batch=prof.batch_triplets, where=name)
    path = os.path.join(tmp, f"time_{name}.prototxt")
    with open(path, "w") as f:
        f.write(text_format.MessageToString(inp))
    iters = 2 if a.cpu else 20
    rc, log, secs = sh([CAFFE, "time", "-model", path, "-iterations", str(iters)] + ([] if a.cpu else ["-gpu", "0"]),
                       a.train_timeout, env=dict(GLOG_minloglevel="0", GLOG_logtostderr="1"))
    try:
        ms = caffe_time_ms(log)
    except MtdnetError:    # recorded as None with the log's tail
        ms = []
    per_layer = caffe_time_layers(log)     # where the time goes
    top = dict(sorted(per_layer.items(), key=lambda kv: -kv[1])[:10])
    # The mean, as the train runs' s/iter is a mean over their iterations.
    return dict(rc=rc, iterations=iters, wall_s=secs, s_per_iter=(float(np.mean(ms)) / 1000 if ms else None),
                s_per_iter_min=(min(ms) / 1000 if ms else None),
                top_layers_ms=top, layers_total_ms=sum(per_layer.values()),
                log_tail=log.strip().splitlines()[-6:] if rc else None)


def part_caffe_time(a, tmp):
    return {"mtdnet": _caffe_time(a, tmp, "mtdnet", "mtdnet", []),
            "mtdnet_caffe_regroup": _caffe_time(a, tmp, "mtdnet_caffe_regroup", "mtdnet", ["pair_regroup=caffe"]),
            "rnk": _caffe_time(a, tmp, "rnk", "rnk", [])}


SCRATCH = "scratch"   # the profile the Table 1 runs train on the CPU (CUHK03: 30000 iterations)


def part_scratch(a, tmp):
    """What the CPU's Table 1 stages would take on this GPU: `caffe train` of the scratch
    MTDnet, cls and rnk nets (default prefetch) and `caffe time` of scratch MTDnet."""
    n = 2 if a.cpu else a.scratch_iters
    out = {v: _train(a, tmp, f"scratch_{v}", n, [], profile=SCRATCH, variant=v) for v in a.scratch_variants.split(",")}
    out["mtdnet_prefetch4_caffe_regroup"] = _train(a, tmp, "scratch_mtdnet_caffe_regroup", n,
                                                   ["prefetch_workers=4", "pair_regroup=caffe"], profile=SCRATCH)
    out["caffe_time_mtdnet"] = _caffe_time(a, tmp, "scratch_mtdnet", "mtdnet", [], profile=SCRATCH)
    out["caffe_time_mtdnet_caffe_regroup"] = _caffe_time(a, tmp, "scratch_mtdnet_caffe_regroup", "mtdnet",
                                                         ["pair_regroup=caffe"], profile=SCRATCH)
    return out


def part_scoring(a, tmp):
    from mtdnet import scoring
    prof = get_profile("tiny")
    out = {}
    rng = np.random.RandomState(5)
    probes = rng.randint(0, 256, size=(6, 3, prof.input_size, prof.input_size)).astype(np.uint8)
    gallery = rng.randint(0, 256, size=(7, 3, prof.input_size, prof.input_size)).astype(np.uint8)
    for kind, builder in (("pair", nets.pair_score_net), ("feature", nets.feature_net)):
        deploy = os.path.join(tmp, f"{kind}_deploy.prototxt")
        with open(deploy, "w") as f:
            f.write(str(builder(prof).to_proto()))
        caffe.set_mode_cpu()
        net = caffe.Net(deploy, caffe.TEST)
        he_weights(net, 1)
        model = os.path.join(tmp, f"{kind}.caffemodel")
        net.save(model)
        del net
        got, secs = [], []
        for gpu in (False, not a.cpu):          # the rehearsal scores twice on the CPU
            scoring.use_device(gpu)
            net = scoring.load_net(deploy, model)
            t0 = time.time()
            got.append(scoring.score_matrix(kind, net, probes, gallery, progress=False)[0])
            secs.append(time.time() - t0)
            del net
        scoring.use_device(False)
        rel = _rel(got[0], got[1])
        spread = float(np.std(got[0])) or 1e-12
        rel_spread = float(np.max(np.abs(got[0] - got[1]))) / spread
        out[kind] = dict(max_rel_diff=rel, max_diff_over_score_std=rel_spread, ok=rel <= TOL and rel_spread <= 1e-3,
                         cpu_s=secs[0], gpu_s=secs[1], score_std=spread)
    return out


PARTS = dict(device_query=part_device_query, agreement=part_agreement, scoring=part_scoring,
             caffe_time=part_caffe_time, train=part_train, scratch=part_scratch)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--cpu", action="store_true", help="rehearsal: CPU mode, 2 paper iterations")
    ap.add_argument("--parts", default=",".join(PARTS))
    ap.add_argument("--train-timeout", type=int, default=150,
                    help="seconds per caffe run; a run cut short keeps the iterations it logged")
    ap.add_argument("--profile", default="paper", help="profile of the train and caffe_time parts")
    ap.add_argument("--scratch-iters", type=int, default=300, help="iterations of each scratch-profile train run")
    ap.add_argument("--scratch-variants", default="mtdnet,cls,rnk", help="the scratch part's variants")
    a = ap.parse_args()
    global PAPER
    PAPER = a.profile
    doc = dict(mode="cpu-rehearsal" if a.cpu else "gpu", started=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               python=sys.version.split()[0], numpy=np.__version__, caffe_bin=CAFFE, nvlib=os.environ.get("NVLIB"),
               host=platform.node(), tolerance=TOL, profile=a.profile)
    t_all = time.time()

    def save():
        doc["seconds"] = time.time() - t_all
        tmpf = a.out + ".tmp"
        with open(tmpf, "w") as f:
            json.dump(doc, f, indent=1, default=float)
        os.replace(tmpf, a.out)
    with tempfile.TemporaryDirectory(prefix="mtdnet-devcheck-") as tmp:
        for name in a.parts.split(","):
            t0 = time.time()
            print(f"device_check: {name} ...", flush=True)
            try:
                doc[name] = PARTS[name](a) if name == "device_query" else PARTS[name](a, tmp)
            except Exception:
                doc[name] = dict(error=traceback.format_exc()[-3000:])
            doc[name]["part_seconds"] = time.time() - t0
            print(f"device_check: {name} done in {time.time() - t0:.1f} s", flush=True)
            save()
    tr, ct = doc.get("train", {}), doc.get("caffe_time", {})
    summary = {}
    try:
        summary["paper_mtdnet_it_per_s"] = tr["prefetch4"]["it_per_s"]
        summary["cuhk03_200k_iterations_hours"] = 200000 * tr["prefetch4"]["s_per_iter"] / 3600
        summary["train_overhead_vs_caffe_time"] = tr["prefetch4"]["s_per_iter"] / ct["mtdnet"]["s_per_iter"] - 1
        summary["train_overhead_prefetch0"] = tr["prefetch0"]["s_per_iter"] / ct["mtdnet"]["s_per_iter"] - 1
        summary["prefetch_gain"] = tr["prefetch0"]["s_per_iter"] / tr["prefetch4"]["s_per_iter"]
        summary["caffe_regroup_overhead"] = (tr["prefetch4_caffe_regroup"]["s_per_iter"]
                                             / ct["mtdnet_caffe_regroup"]["s_per_iter"] - 1)
    except Exception as e:
        summary["incomplete"] = repr(e)
    sc = doc.get("scratch", {})
    for k, v in sc.items():    # its train runs (caffe time has no data path)
        if isinstance(v, dict) and v.get("s_per_iter") and not k.startswith("caffe_time"):
            summary[f"scratch_{k}_30000_iterations_minutes"] = 30000 * v["s_per_iter"] / 60
    summary["gpu_cpu_agree"] = bool(doc.get("agreement", {}).get("all_ok")) and \
        all(v.get("ok") for v in doc.get("scoring", {}).values() if isinstance(v, dict) and "ok" in v)
    doc["summary"] = summary
    save()
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
