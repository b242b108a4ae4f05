"""`make bench`: speed and memory of pair scoring, training, data preparation and CMC.

Every measurement runs in a child process of its own (`python -m mtdnet.bench
--child ...`), so Caffe starts fresh and each peak RSS
(getrusage(RUSAGE_SELF).ru_maxrss) is that measurement's alone. The parent
prints a table and writes the results as JSON (atomically). Benchmarks, not
tests: nothing here asserts a speed; tests/test_bench.py checks that the code
paths run and agree (`--quick`).

Parts:
  scoring  pairs/s of the fast and the naive pair scorer on the same P x G block,
           at each profile (randomly initialised deploy net, random images), their
           ratio, the largest |fast - naive| score and the FLOP model's ratio
  memory   peak RSS of the fast scorer on a large probe x gallery set (default
           1000 x 10000 at `cpu`), stopped after a bounded number of pair
           batches: the peak is reached in the first block (all blocks reuse the
           same cache arrays), scoring all 10 M pairs would take hours
  train    seconds per iteration of the generated train net as `caffe train`
           runs it (our TripletDataLayer and Python layers, timed from Caffe's
           log) vs `caffe time` of the same net with Caffe's own HDF5Data layer
           serving real batches instead (overhead = ratio - 1), and vs `caffe
           time` with Input layers (zero blobs: the same net computes faster on
           zeros); also the data layer's batch time alone
  prep     images/s of `make data` (default VIPeR at `cpu`, forced rebuild, temp dir;
           the fastest of 3 builds)
  datapath the TripletDataLayer's time on the solver's critical path per iteration at
           `paper` (default): building each batch in the solver's thread (prefetch 0)
           vs copying a batch that forked workers built ahead (prefetch W), while
           the solver is busy elsewhere for `compute_s` per iteration (a sleep: on a
           GPU the solver's CPU mostly waits for the device); also each worker's
           build time per batch, and that the batches are the same in every mode
  caffe    our Caffe build's CPU fast path against its stock code paths (the same build,
           MTDNET_CAFFE_FAST=0) and against the fast path with its im2col convolutions
           instead of oneDNN's (MTDNET_CAFFE_DNNL=0), in `rounds` interleaved child processes on the
           MTDnet train net of each profile (default scratch and paper; inputs instead of the
           data layer, the profile's batch): forward + backward seconds per iteration (the
           median of every round's iterations), per layer, GFLOP/s of the convolutions and
           inner products as a fraction of the GEMM peak measured in the same run (a
           2048^3 InnerProduct through Caffe's BLAS after each child, the median), peak RSS
  cmc      seconds (fastest of 3) of the vectorised CMC + mAP of an N x N score matrix (default
           10000; scores on a 1e-4 grid, so ties occur) and agreement with the
           test suite's loop implementation on the first probes
"""
import dataclasses
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

import caffe
from caffe.proto import caffe_pb2
from google.protobuf import text_format
from tqdm import tqdm

from core import REPO_ROOT, MtdnetError, Project, Run, get_dataset, get_profile
from core.fsutil import atomic_write_json
from data_prep import synthetic
from data_prep.build import prepare
from layers.triplet_data import Prefetcher, TripletBatcher, open_sources
from mtdnet import caffe_run, caffe_speed, cmc, scoring
from mtdnet.caffelog import caffe_time_ms, iteration_times
from mtdnet.cli import cli_main
from prototxt import generate, weights

PARTS = ("scoring", "memory", "train", "prep", "cmc", "datapath", "caffe")
# Results go under runs/ (not kept in git): a benchmark never rewrites a tracked file.
DEFAULT_OUT = os.path.join(REPO_ROOT, "runs", "bench", "results.json")
# The targets: (key, "min" or "max", value).
TARGETS = (("scoring_speedup_paper", "min", 4.5), ("train_overhead", "max", 0.10),
           ("cmc_10k_seconds", "max", 2.0),
           ("caffe_speedup_scratch", "min", 2.0), ("caffe_peak_fraction_scratch", "min", 0.5),
           ("caffe_memory_ratio_scratch", "max", 1.5),
           ("caffe_speedup_paper", "min", 2.0), ("caffe_peak_fraction_paper", "min", 0.5),
           ("caffe_memory_ratio_paper", "max", 1.5))


@dataclasses.dataclass
class Settings:
    parts: tuple = PARTS
    # scoring: profile -> (P, G), sized so that the naive scorer takes tens of
    # seconds on a 2-core CPU (paper: ~3 pairs/s, cpu: ~50 pairs/s)
    blocks: dict = dataclasses.field(default_factory=lambda: {"paper": (16, 16), "cpu": (32, 32)})
    memory_profile: str = "cpu"
    memory_probes: int = 1000
    memory_gallery: int = 10000
    memory_budget_mb: float = 256.0     # the fast scorer's cache budget in this measurement
    memory_pair_batches: int = 20       # pair batches scored before stopping
    train_profile: str = "cpu"
    train_iters: int = 10               # timed iterations per run
    train_warmup: int = 3               # caffe train iterations not timed
    train_rounds: int = 4               # alternations of caffe train / caffe time (real) / caffe time (zeros)
    prep_dataset: str = "viper"
    prep_profile: str = "cpu"
    prep_root: str = None
    cmc_size: int = 10000
    cmc_loop_probes: int = 300
    datapath_profile: str = "paper"
    datapath_iters: int = 12            # timed iterations per mode
    datapath_workers: tuple = (1, 2, 4)
    datapath_compute_s: float = 0.25    # the solver's time per iteration outside the data layer
    # caffe: profile -> (timed iterations per child, interleaved rounds); a paper iteration
    # takes ~15-20 s here, a scratch one ~0.5-1 s
    caffe_runs: dict = dataclasses.field(default_factory=lambda: {"scratch": (3, 5), "paper": (1, 2)})
    seed: int = 1701
    quick: bool = False


def quick_settings(**kw):
    """A few seconds, tiny profile: the code paths, not representative numbers."""
    s = dict(blocks={"tiny": (4, 5)}, memory_profile="tiny", memory_probes=30, memory_gallery=200,
             memory_budget_mb=0.25, memory_pair_batches=4, train_profile="tiny", train_iters=3,
             train_warmup=2, train_rounds=1, prep_dataset="synthetic", prep_profile="tiny", cmc_size=400,
             cmc_loop_probes=400, datapath_profile="tiny", datapath_iters=4, datapath_workers=(2,),
             datapath_compute_s=0.01, caffe_runs={"tiny": (2, 1)}, quick=True)
    s.update(kw)
    return Settings(**s)


# ---- helpers --------------------------------------------------------------------

def peak_rss_mb():
    """This process's peak resident set size (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _quiet(*a, **k):
    pass


def random_weights(net, seed, input_scale=1.0):
    """Redraw every weight at unit-variance scale, seeded.

    The fillers give near-constant pair scores (std ~1e-3), so a wrong pairing,
    pass or mirror would hardly show; with these the scores spread over (0, 1).
    conv1 sees the input after the profile's input_scale: undo it, so the first
    layer's outputs are not swamped by the biases.
    """
    rng = np.random.default_rng(seed)
    for name, blobs in net.params.items():
        for b in blobs:
            fan_in = int(np.prod(b.data.shape[1:])) if b.data.ndim > 1 else 1
            gain = 1 / input_scale if name.startswith("conv1") else 1.0
            b.data[...] = rng.normal(0, gain / np.sqrt(fan_in), b.data.shape) if b.data.ndim > 1 \
                else rng.normal(0, 0.1, b.data.shape)


def pair_net(profile, seed):
    """The generated pair-scoring deploy net of `profile`, with random_weights.

    Deep random nets saturate the softmax (every score ~0 or ~1, whatever the
    pair), which would make |fast - naive| meaninglessly small: the last layer
    is rescaled so that its logit difference has mean 0 and std 1 over random
    pairs, and the scores spread over (0, 1).
    """
    with tempfile.NamedTemporaryFile("w", suffix=".prototxt") as f:
        f.write(generate.deploy_text("pair_score", profile))
        f.flush()
        net = caffe.Net(f.name, caffe.TEST)
    prof = get_profile(profile)
    random_weights(net, seed, prof.input_scale)
    last = list(net.params)[-1]
    imgs = random_images(32, prof.input_size, seed + 1)
    scoring.set_batch(net, ("data_1", "data_2"), 16)
    net.blobs["data_1"].data[...], net.blobs["data_2"].data[...] = imgs[:16], imgs[16:]
    net.forward()
    logits = net.blobs[net.top_names[last][0]].data
    d = logits[:, 1] - logits[:, 0]
    w, b = (p.data for p in net.params[last])
    scale = 1.0 / max(float(d.std()), 1e-12)
    w *= scale
    b *= scale
    b[1] -= float(d.mean()) * scale
    return net


def random_images(n, size, seed):
    return np.random.default_rng(seed).integers(0, 256, (n, 3, size, size), dtype=np.uint8)


def pair_macs(net):
    """Multiply-adds per image / pair pass of the pair net's parts (the FLOP model).

    trunk: conv1..conv2 of one stream; conv3: conv3_pair (= both halves of one
    image, stacked); head: conv4_pair..fc8_pair; full: one whole-net pass.
    """
    names = list(net._layer_names)
    end, c3 = names.index(scoring.TRUNK_END[0]), names.index(scoring.CONV3)
    parts = dict(trunk=0, conv3=0, head=0, full=0)
    for name, params in net.params.items():
        i = names.index(name)
        macs = int(np.prod(net.blobs[net.top_names[name][0]].data.shape[1:])) * \
            int(np.prod(params[0].data.shape[1:]))
        parts["full"] += macs
        if i < end:
            parts["trunk"] += macs
        elif i == c3:
            parts["conv3"] += macs
        elif i > c3:
            parts["head"] += macs
    return parts


class _Bar:
    """A tqdm bar that stops the scorer (raises Enough) once `limit` pairs are done."""

    class Enough(Exception):
        pass

    def __init__(self, bar, limit=None):
        self.bar, self.limit, self.n = bar, limit, 0

    def update(self, k):
        self.n += k
        self.bar.update(k)
        if self.limit is not None and self.n >= self.limit:
            raise self.Enough


def _tqdm(total, desc, unit="pair"):
    return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, leave=False)


# ---- the parts (each runs in its own child process) -------------------------------

def measure_scoring(profile, probes, gallery, seed, fast_runs=5):
    """pairs/s of both scorers on the same probes x gallery block, interleaved.

    The naive scorer goes through the block in chunks of whole probe rows, a
    pair batch each where the gallery allows (probe-major: the very batches of
    one whole-block call); the fast scorer scores the whole block `fast_runs`
    times, spread between the chunks. Each side's fastest run counts: this
    shared VM switches between two speeds (see measure_train), and interleaving
    gives both sides the same chances. The naive chunks are shorter than a fast
    run, which if anything favours the naive side.
    """
    net = pair_net(profile, seed)
    size = get_profile(profile).input_size
    imgs = random_images(probes + gallery, size, seed)
    pro, gal = imgs[:probes], imgs[probes:]
    rows = max(1, scoring.SCORE_BATCH // gallery)
    chunks = [(i, min(probes, i + rows)) for i in range(0, probes, rows)]
    fast_at = set(np.linspace(0, len(chunks), fast_runs).round().astype(int).tolist())
    for fn in scoring.PAIR_SCORERS.values():
        fn(net, pro[:1], gal[:1])                 # warm-up: Caffe's first allocations
    naive = np.zeros((probes, gallery))
    fast_s, naive_rates = [], []
    with _tqdm(probes * gallery * (1 + len(fast_at)), f"{profile}: fast and naive scorer") as bar:
        for k in range(len(chunks) + 1):
            if k in fast_at:
                t0 = time.perf_counter()
                fast = scoring.pair_scores_fast(net, pro, gal, progress=bar)
                fast_s.append(time.perf_counter() - t0)
            if k < len(chunks):
                a, b = chunks[k]
                t0 = time.perf_counter()
                naive[a:b] = scoring.pair_scores_naive(net, pro[a:b], gal, progress=bar)
                naive_rates.append((b - a) * gallery / (time.perf_counter() - t0))
    out = dict(profile=profile, probes=probes, gallery=gallery, pairs=probes * gallery,
               batch=scoring.SCORE_BATCH, statistic="fastest run", fast_runs=len(fast_s),
               naive_chunks=len(chunks), naive_chunk_pairs=min(rows, probes) * gallery,
               fast_seconds=min(fast_s), fast_seconds_all=fast_s,
               fast_pairs_per_s=probes * gallery / min(fast_s), naive_pairs_per_s=max(naive_rates),
               naive_pairs_per_s_median=float(np.median(naive_rates)),
               fast_pairs_per_s_median=probes * gallery / float(np.median(fast_s)))
    out["naive_seconds"] = probes * gallery / out["naive_pairs_per_s"]
    out["speedup"] = out["fast_pairs_per_s"] / out["naive_pairs_per_s"]
    out["speedup_of_medians"] = out["fast_pairs_per_s_median"] / out["naive_pairs_per_s_median"]
    out["max_abs_diff"] = float(np.abs(fast - naive).max())
    out["score_mean"], out["score_std"] = float(naive.mean()), float(naive.std())
    m = pair_macs(net)
    n_img, n_pass = 2 * (probes + gallery), scoring.PAIR_PASSES * probes * gallery
    naive_macs = n_pass * m["full"]
    fast_macs = n_img * (m["trunk"] + m["conv3"]) + n_pass * m["head"]
    out.update(macs=m, flop_ratio_block=naive_macs / fast_macs, flop_ratio_limit=m["full"] / m["head"])
    return out


def measure_memory(profile, probes, gallery, budget_mb, pair_batches, seed):
    """Peak RSS of the fast scorer on probes x gallery random images, `budget_mb` of cache."""
    net = pair_net(profile, seed)
    halves = scoring.Conv3Halves(net)
    rss_net = peak_rss_mb()
    size = get_profile(profile).input_size
    imgs = random_images(probes + gallery, size, seed)
    rss_images = peak_rss_mb()
    budget = int(budget_mb * 2 ** 20)
    bp, bg = scoring.block_sizes(probes, gallery, halves.bytes_per_image, budget)
    limit = pair_batches * scoring.SCORE_BATCH
    t0 = time.perf_counter()
    with _tqdm(limit, f"{profile}: {probes} x {gallery} pairs, first {pair_batches} batches") as tq:
        bar = _Bar(tq, limit)
        try:
            scoring.pair_scores_fast(net, imgs[:probes], imgs[probes:], progress=bar, memory=budget)
        except _Bar.Enough:
            pass
    return dict(profile=profile, probes=probes, gallery=gallery, budget_bytes=budget,
                bytes_per_image=halves.bytes_per_image,
                cache_unbounded_bytes=(probes + gallery) * halves.bytes_per_image,
                cache_bytes=(bp + bg) * halves.bytes_per_image,
                block=[bp, bg], probe_blocks=-(-probes // bp), gallery_blocks=-(-gallery // bg),
                images_bytes=int(imgs.nbytes), pairs_scored=bar.n, seconds=time.perf_counter() - t0,
                rss_after_net_mb=rss_net, rss_after_images_mb=rss_images, peak_rss_mb=peak_rss_mb())


def _caffe_train_steps(net_path, tmp, name, iters, warmup, profile):
    """[seconds of each iteration after the warm-up] of `caffe train` on net_path, from Caffe's log."""
    solver = caffe_pb2.SolverParameter()
    text_format.Merge(generate.solver_text(Run.create("synthetic", "mtdnet", profile)), solver)
    solver.net = net_path
    solver.max_iter = warmup + iters + 1   # display lines at warmup .. warmup + iters
    solver.display, solver.average_loss = 1, 1
    solver.snapshot, solver.snapshot_after_train = 0, False
    solver.snapshot_prefix = os.path.join(tmp, name)
    solver_path = os.path.join(tmp, f"{name}_solver.prototxt")
    with open(solver_path, "w") as f:
        f.write(text_format.MessageToString(solver))
    log_path = os.path.join(tmp, f"{name}.log")
    os.environ["GLOG_minloglevel"] = "0"      # the timing is read from Caffe's INFO lines
    caffe_run.train(solver_path, log_path, solver.max_iter, solver.snapshot_prefix, snapshot=None,
                    cwd=REPO_ROOT)
    with open(log_path) as f:
        log = f.read()
    # The last line (max_iter) follows a forward pass only: not a whole iteration.
    t = {k: v for k, v in iteration_times(log).items() if k < solver.max_iter}
    if any(k not in t for k in range(warmup, warmup + iters + 1)):
        raise MtdnetError(f"{log_path}: caffe train's log lacks the timing of iterations "
                          f"{warmup}..{warmup + iters}")
    return list(np.diff([t[k] for k in range(warmup, warmup + iters + 1)]))


def _with_hdf5_data(net_param, list_file, batch):
    """The train net with its TripletDataLayer replaced by Caffe's own HDF5Data layer (same tops)."""
    out = caffe_pb2.NetParameter()
    out.CopyFrom(net_param)
    for layer in out.layer:
        if layer.type == "Python" and layer.python_param.module == weights.DATA_MODULE:
            layer.type = "HDF5Data"
            layer.ClearField("python_param")
            layer.hdf5_data_param.source = list_file
            layer.hdf5_data_param.batch_size = batch
    return out


def _caffe_time_steps(model, iters):
    p = subprocess.run([Project().caffe, "time", "-model", model, "-iterations", str(iters)],
                       cwd=REPO_ROOT, capture_output=True, text=True)
    if p.returncode != 0:
        raise MtdnetError(f"caffe time {model} failed (exit {p.returncode}):\n{(p.stdout + p.stderr)[-2000:]}")
    return [ms / 1000.0 for ms in caffe_time_ms(p.stdout + p.stderr)]


def measure_train(profile, iters, warmup, seed, rounds, hdf5_batches=2):
    """caffe train (our data layer) vs caffe time of the same generated net.

    Two `caffe time` baselines, pure Caffe on the same batch size: (a) the data
    layer replaced by Caffe's own HDF5Data layer serving real batches (made by
    our layer, `hdf5_batches` of them, loaded into memory once): the headline;
    (b) replaced by Input layers, whose blobs stay zero. The same net computes
    measurably faster on zeros (max pooling's comparisons become predictable
    branches), so (b) would count that as our overhead. `rounds` alternations
    of the three runs; the overhead is the median of the rounds' ratios (see below).
    """
    import h5py
    prof = get_profile(profile)
    steps = dict(train=[], time_real=[], time_zeros=[])
    with tempfile.TemporaryDirectory(prefix="mtdnet-bench-train-") as tmp:
        run = Run.create("synthetic", "mtdnet", profile, project=Project(data_dir=os.path.join(tmp, "data")))
        prepare(run.dataset, run.profile, run.split, project=run.project, root=os.path.join(tmp, "raw"),
                progress=False, log=_quiet, synthetic_params=dict(num_ids=40, num_test=10))
        net_path = os.path.join(tmp, "train.prototxt")
        with open(net_path, "w") as f:
            f.write(generate.train_net_text(run))
        train_param = weights.read_net(net_path)
        zeros_param, _ = weights.with_input_layers(train_param, batch=prof.batch_triplets, where=net_path)

        # Real batches for Caffe's own data layer, and our data layer's time alone.
        db, trip = open_sources(run.data.lmdb, run.data.triplets)
        batcher = TripletBatcher(db, trip, prof.batch_triplets, seed=seed)
        batches = [batcher.next_batch() for _ in range(hdf5_batches)]
        h5 = os.path.join(tmp, "batches.h5")
        with h5py.File(h5, "w") as f:
            for i, name in enumerate(("data_a", "data_p", "data_n")):
                f[name] = np.concatenate([b[i] for b in batches])
        del batches
        with open(os.path.join(tmp, "h5.txt"), "w") as f:
            f.write(h5 + "\n")
        real_param = _with_hdf5_data(train_param, os.path.join(tmp, "h5.txt"), prof.batch_triplets)
        models = {}
        for name, param in (("real", real_param), ("zeros", zeros_param)):
            models[name] = os.path.join(tmp, f"{name}.prototxt")
            with open(models[name], "w") as f:
                f.write(text_format.MessageToString(param))
        top = np.empty((prof.batch_triplets,) + tuple(db.shape), np.float32)
        batcher.next_batch_uint8()
        t0 = time.perf_counter()
        for _ in range(iters):
            for imgs in batcher.next_batch_uint8():
                top[...] = imgs                 # as the layer's forward copies into its tops
        data_s = (time.perf_counter() - t0) / iters

        per_round = []
        for _ in range(rounds):
            r = dict(train=_caffe_train_steps(net_path, tmp, "train", iters, warmup, profile),
                     time_real=_caffe_time_steps(models["real"], iters),
                     time_zeros=_caffe_time_steps(models["zeros"], iters))
            per_round.append({k: float(np.median(v)) for k, v in r.items()})
            for k, v in r.items():
                steps[k] += v

    # The headline is the median over interleaved rounds of each round's ratio of medians:
    # this shared VM drifts in speed by up to 1.6x between (and within) runs, so a ratio is
    # only meaningful between measurements taken close together; the fastest iterations are
    # reported beside it.
    def ratio(a, b):
        return float(np.median([x[a] / x[b] for x in per_round])) - 1
    best = {k: float(np.min(v)) for k, v in steps.items()}
    stats = {k: dict(min=float(np.min(v)), median=float(np.median(v)), mean=float(np.mean(v)), n=len(v))
             for k, v in steps.items()}
    return dict(profile=profile, net="mtdnet (synthetic data)", batch_triplets=prof.batch_triplets,
                iterations=iters, warmup=warmup, rounds=rounds, statistic="median of the rounds' ratios",
                train_s_per_iter=stats["train"]["median"], caffe_time_s_per_iter=stats["time_real"]["median"],
                caffe_time_zeros_s_per_iter=stats["time_zeros"]["median"],
                overhead=ratio("train", "time_real"),
                overhead_vs_zero_input=ratio("train", "time_zeros"),
                zero_input_speedup=ratio("time_real", "time_zeros"),
                overhead_of_fastest=best["train"] / best["time_real"] - 1,
                per_round=per_round, seconds_per_iter=stats, data_layer_s_per_batch=data_s,
                data_layer_share=data_s / stats["time_real"]["median"])


def measure_caffe(profile, iters, rounds, seed):
    """The fast path against the stock code on `profile`'s MTDnet train net (see the module doc)."""
    case = caffe_speed.NetCase("mtdnet", profile, get_profile(profile).batch_triplets)
    text = case.net_text()
    runs = {m: [] for m in caffe_speed.MODES}
    peaks = {m: [] for m in caffe_speed.MODES}
    bar = _tqdm(rounds * len(runs), f"caffe {profile}", unit="run")
    for r in range(rounds):
        # Alternate which mode goes first: the VM's speed drifts within a round too.
        for mode in (caffe_speed.MODES if r % 2 == 0 else caffe_speed.MODES[::-1]):
            runs[mode].append(caffe_speed.load(caffe_speed.run_child(
                mode, dict(kind="time", net_text=text, seed=seed, iters=iters, warmup=1))))
            peaks[mode].append(caffe_speed.load(caffe_speed.run_child(
                mode, dict(kind="gemm", size=2048, repeats=3)))["gflops"])
            bar.update(1)
    bar.close()
    first = runs["fast"][0]
    flops = {k: tuple(v) for k, v in first["flops"].items()}
    gflop = sum(f + b for f, b in flops.values()) / 1e9
    # The peak as the iterations are taken: the median of every round's measurement (this
    # VM's speed drifts, and the slow rounds count for the iterations too).
    peak = float(np.median([x for v in peaks.values() for x in v]))
    out = dict(profile=profile, batch_triplets=case.batch, iterations=iters, rounds=rounds,
               gflop_per_iter=gflop, gemm_peak_gflops=peak,
               gemm_peak_gflops_all={m: v for m, v in peaks.items()},
               threads={m: runs[m][0]["threads"] for m in runs}, modes={})
    for mode, rs in runs.items():
        its = [t for x in rs for t in x["iteration_s"]]
        fwd = np.median([x["forward_s"] for x in rs], axis=0)
        bwd = np.median([x["backward_s"] for x in rs], axis=0)
        med = float(np.median(its))
        out["modes"][mode] = dict(
            s_per_iter=med, s_per_iter_min=float(np.min(its)), n=len(its),
            per_round=[float(np.median(x["iteration_s"])) for x in rs],
            gflops=gflop / med, peak_fraction=gflop / med / peak,
            peak_rss_mb=max(x["peak_rss_mb"] for x in rs),
            layers=[dict(name=n, type=t, forward_s=float(f), backward_s=float(b))
                    for n, t, f, b in zip(first["layers"], first["types"], fwd, bwd)])
    st, fa = out["modes"]["stock"], out["modes"]["fast"]
    out["speedup"] = st["s_per_iter"] / fa["s_per_iter"]
    # The ratio within each round, then their median: robust to the VM's drift between rounds.
    out["speedup_median_of_rounds"] = float(np.median([a / b for a, b in zip(st["per_round"], fa["per_round"])]))
    out["memory_ratio"] = fa["peak_rss_mb"] / st["peak_rss_mb"]
    im = out["modes"]["im2col"]
    out["speedup_im2col"] = st["s_per_iter"] / im["s_per_iter"]
    by_type = {}
    for mode, m in out["modes"].items():
        for layer in m["layers"]:
            t = by_type.setdefault(layer["type"], {f"{k}_s": 0.0 for k in out["modes"]})
            t[f"{mode}_s"] += layer["forward_s"] + layer["backward_s"]
    out["by_type"] = by_type
    return out


def measure_prep(dataset, profile, root, repeats=3):
    """`make data` of one split, forced, into a temp dir; the fastest of `repeats` builds."""
    runs = []
    with tempfile.TemporaryDirectory(prefix="mtdnet-bench-prep-") as tmp:
        kw = dict(synthetic_params=dict(num_ids=100, num_test=20)) if dataset == "synthetic" else {}
        if dataset == "synthetic":     # generated once, outside the timing
            root = root or os.path.join(tmp, "raw")
            synthetic.ensure(root, progress=False, log=_quiet, **kw["synthetic_params"])
        for _ in range(repeats):
            t0 = time.perf_counter()
            ms = prepare(dataset, profile, "paper", project=Project(data_dir=os.path.join(tmp, "data")),
                         root=root, force=True, progress=False, log=_quiet, **kw)
            runs.append(time.perf_counter() - t0)
    n = int(ms[0]["counts"]["images"]["total"])
    return dict(dataset=dataset, profile=profile, images=n, seconds=min(runs), seconds_all=runs,
                images_per_s=n / min(runs), statistic="fastest build",
                manifest_images_per_s=ms[0].get("images_per_second"))


def measure_cmc(size, loop_probes, seed, repeats=3):
    """CMC + mAP of a size x size score matrix, the fastest of `repeats`; the loop's agreement."""
    # The slow reference the test suite checks against too.
    rng = np.random.default_rng(seed)
    scores = rng.random((size, size))
    np.round(scores, 4, out=scores)            # a 1e-4 grid: ties, so the tie rule is exercised too
    probe_ids = np.arange(size)
    gallery_ids = rng.permutation(size)
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        ev = cmc.evaluate(scores, probe_ids, gallery_ids, higher_is_better=True)
        runs.append(time.perf_counter() - t0)
    seconds = min(runs)
    k = min(loop_probes, size)
    t0 = time.perf_counter()
    ranks, aps = cmc.loop_rank_ap(scores[:k], probe_ids[:k], gallery_ids, True)
    loop_s = time.perf_counter() - t0
    agree = bool(np.array_equal(ranks, ev.ranks[:k]) and np.allclose(aps, ev.ap[:k], atol=1e-12, rtol=0))
    true = scores[np.arange(size), np.argsort(gallery_ids)]
    ties = float(np.mean(np.count_nonzero(scores == true[:, None], axis=1) > 1))
    return dict(size=size, seconds=seconds, seconds_all=runs, statistic="fastest run",
                rank1=float(ev.cmc[0]), mAP=ev.mAP, loop_probes=k,
                loop_seconds=loop_s, loop_seconds_all_estimate=loop_s * size / k, loop_agrees=agree,
                probes_with_tied_match=ties)


def measure_datapath(profile, iters, workers, compute_s, seed):
    """The data layer's critical-path seconds per iteration without and with prefetch workers."""
    prof = get_profile(profile)
    out = dict(profile=profile, batch_triplets=prof.batch_triplets, input_size=prof.input_size,
               iterations=iters, compute_s=compute_s, cores=os.cpu_count(), modes={})
    with tempfile.TemporaryDirectory(prefix="mtdnet-bench-datapath-") as tmp:
        run = Run.create("synthetic", "mtdnet", profile, project=Project(data_dir=os.path.join(tmp, "data")))
        prepare(run.dataset, run.profile, run.split, project=run.project, root=os.path.join(tmp, "raw"),
                progress=False, log=_quiet, synthetic_params=dict(num_ids=40, num_test=10))
        lmdb_path, trip_path = run.data.lmdb, run.data.triplets

        def make_batcher():
            return TripletBatcher(*open_sources(lmdb_path, trip_path), prof.batch_triplets, seed=seed,
                                  shift=prof.shift)
        shape = (prof.batch_triplets,) + tuple(make_batcher().db.shape)
        out["batch_bytes_float32"] = 3 * int(np.prod(shape)) * 4
        tops = [np.zeros(shape, np.float32) for _ in range(3)]
        sums = {}
        for w in (0,) + tuple(workers):
            if w:
                source = Prefetcher(make_batcher, shape, w)
                fetch = source.next_into
            else:
                batcher = make_batcher()

                def fetch(tops):
                    for i, arr in enumerate(batcher.next_batch_uint8()):
                        tops[i][...] = arr           # what forward does without prefetch
            fetch(tops)                              # warm-up (workers start, caches fill)
            crit, checksum = [], 0.0
            t_all = time.perf_counter()
            for _ in range(iters):
                t0 = time.perf_counter()
                fetch(tops)
                crit.append(time.perf_counter() - t0)
                checksum += float(tops[0][:, :, :8, :8].sum()) + float(tops[2][-1].sum())
                time.sleep(compute_s)
            wall = (time.perf_counter() - t_all) / iters
            if w:
                source.close()
            sums[w] = checksum
            out["modes"][f"prefetch_{w}"] = dict(
                workers=w, critical_s_per_iter=float(np.mean(crit)), critical_s_median=float(np.median(crit)),
                critical_s_max=float(np.max(crit)), wall_s_per_iter=wall,
                share_of_iteration=float(np.mean(crit)) / wall)
        out["same_batches_all_modes"] = len(set(sums.values())) == 1
    base = out["modes"]["prefetch_0"]["critical_s_per_iter"]
    out["build_s_per_batch"] = base
    best = min(out["modes"].values(), key=lambda m: m["critical_s_per_iter"])
    out["best_workers"] = best["workers"]
    out["critical_path_gain"] = base / best["critical_s_per_iter"]
    return out


MEASURES = dict(caffe=measure_caffe, scoring=measure_scoring, memory=measure_memory, train=measure_train, prep=measure_prep,
                cmc=measure_cmc, datapath=measure_datapath)


# ---- parent ------------------------------------------------------------------------

def run_child(part, kwargs):
    """One measurement in a fresh Python process; its result dict (with its peak RSS)."""
    p = subprocess.run([sys.executable, "-m", "mtdnet.bench", "--child", part, json.dumps(kwargs)],
                       cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    lines = p.stdout.strip().splitlines()
    if p.returncode != 0 or not lines:
        raise MtdnetError(f"bench part '{part}' failed (exit {p.returncode}); its error is above")
    return json.loads(lines[-1])


def _child(part, kwargs_json):
    out = MEASURES[part](**json.loads(kwargs_json))
    out["child_peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(out))


def machine():
    model = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass

    def git(*args):
        p = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True)
        return p.stdout.strip() if p.returncode == 0 else None
    status = git("status", "--porcelain", "--untracked-files=no")
    return dict(cores=os.cpu_count(), cpu=model, python=platform.python_version(), numpy=np.__version__,
                date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                git_commit=git("rev-parse", "HEAD"), git_dirty=bool(status) if status is not None else None,
                loadavg_start=[round(x, 2) for x in os.getloadavg()])


def _plan(s):
    """[(result key, part, kwargs)] of the settings' measurements."""
    plan = []
    if "scoring" in s.parts:
        for prof, (p, g) in s.blocks.items():
            plan.append((f"scoring.{prof}", "scoring", dict(profile=prof, probes=p, gallery=g, seed=s.seed)))
    if "memory" in s.parts:
        plan.append(("memory", "memory", dict(profile=s.memory_profile, probes=s.memory_probes,
                                              gallery=s.memory_gallery, budget_mb=s.memory_budget_mb,
                                              pair_batches=s.memory_pair_batches, seed=s.seed)))
    if "train" in s.parts:
        plan.append(("train", "train", dict(profile=s.train_profile, iters=s.train_iters,
                                            warmup=s.train_warmup, seed=s.seed, rounds=s.train_rounds)))
    if "prep" in s.parts:
        plan.append(("prep", "prep", dict(dataset=s.prep_dataset, profile=s.prep_profile, root=s.prep_root)))
    if "cmc" in s.parts:
        plan.append(("cmc", "cmc", dict(size=s.cmc_size, loop_probes=s.cmc_loop_probes, seed=s.seed)))
    if "caffe" in s.parts:
        for prof, (iters, rounds) in s.caffe_runs.items():
            plan.append((f"caffe.{prof}", "caffe", dict(profile=prof, iters=iters, rounds=rounds, seed=s.seed)))
    if "datapath" in s.parts:
        plan.append(("datapath", "datapath", dict(profile=s.datapath_profile, iters=s.datapath_iters,
                                                  workers=list(s.datapath_workers),
                                                  compute_s=s.datapath_compute_s, seed=s.seed)))
    return plan


def summary_keys(results):
    """The headline keys from the raw results."""
    out = {}
    sc = results.get("scoring", {})
    for prof, r in sc.items():
        out[f"scoring_speedup_{prof}"] = r["speedup"]
    if sc:
        out["scoring_max_abs_diff"] = max(r["max_abs_diff"] for r in sc.values())
    if "train" in results:
        out["train_overhead"] = results["train"]["overhead"]
    if "prep" in results:
        out["prep_images_per_s"] = results["prep"]["images_per_s"]
    if "cmc" in results:
        out[f"cmc_{results['cmc']['size'] // 1000}k_seconds" if results["cmc"]["size"] % 1000 == 0
            else f"cmc_{results['cmc']['size']}_seconds"] = results["cmc"]["seconds"]
    if "memory" in results:
        out["memory_peak_rss_mb"] = results["memory"]["child_peak_rss_mb"]
    for prof, r in results.get("caffe", {}).items():
        out[f"caffe_speedup_{prof}"] = r["speedup"]
        out[f"caffe_peak_fraction_{prof}"] = r["modes"]["fast"]["peak_fraction"]
        out[f"caffe_memory_ratio_{prof}"] = r["memory_ratio"]
    if "datapath" in results:
        r = results["datapath"]
        out["datapath_critical_s_no_prefetch"] = r["modes"]["prefetch_0"]["critical_s_per_iter"]
        out["datapath_critical_s_prefetch"] = r["modes"][f"prefetch_{r['best_workers']}"]["critical_s_per_iter"]
    return out


def parse_blocks(text, option="--blocks", form="<profile>=<P>x<G> (e.g. paper=16x16)"):
    """'paper=16x16,cpu=32x32' -> {'paper': (16, 16), 'cpu': (32, 32)} (also --caffe-runs)."""
    out = {}
    for item in filter(None, (x.strip() for x in text.split(","))):
        try:
            prof, size = item.split("=")
            p, g = (int(v) for v in size.lower().split("x"))
        except ValueError:
            raise MtdnetError(f"{option}: '{item}' is not {form}") from None
        get_profile(prof)
        if p < 1 or g < 1:
            raise MtdnetError(f"{option}: '{item}': both numbers must be >= 1")
        out[prof] = (p, g)
    if not out:
        raise MtdnetError(f"{option}: nothing given")
    return out


def positive(name, v):
    if v is not None and v <= 0:
        raise MtdnetError(f"{name} must be > 0, got {v}")
    return v


def settings_from_args(a):
    """Settings from tools/bench.py's parsed options (checked; a bad value is a clear error)."""
    kw = {}
    if a.parts:
        parts = tuple(p.strip() for p in a.parts.split(",") if p.strip())
        bad = [p for p in parts if p not in PARTS]
        if bad or not parts:
            raise MtdnetError(f"--parts: unknown part(s) {', '.join(bad) or '(none)'}; valid: {', '.join(PARTS)}")
        kw["parts"] = parts
    if a.blocks:
        kw["blocks"] = parse_blocks(a.blocks)
    if getattr(a, "caffe_runs", None):
        kw["caffe_runs"] = parse_blocks(a.caffe_runs, "--caffe-runs",
                                        "<profile>=<iterations>x<rounds> (e.g. scratch=3x5)")
    if a.memory_size:
        try:
            kw["memory_probes"], kw["memory_gallery"] = (int(v) for v in a.memory_size.lower().split("x"))
        except ValueError:
            raise MtdnetError(f"--memory-size: '{a.memory_size}' is not PxG (e.g. 1000x10000)") from None
        positive("--memory-size", min(kw["memory_probes"], kw["memory_gallery"]))
    for prof in ("memory_profile", "train_profile", "prep_profile"):
        if getattr(a, prof):
            kw[prof] = get_profile(getattr(a, prof)).name
    for name in ("memory_budget_mb", "memory_pair_batches", "train_iters", "train_rounds", "cmc_size",
                 "cmc_loop_probes"):
        if getattr(a, name) is not None:
            kw[name] = positive("--" + name.replace("_", "-"), getattr(a, name))
    if a.train_warmup is not None:
        if a.train_warmup < 0:
            raise MtdnetError(f"--train-warmup must be >= 0, got {a.train_warmup}")
        kw["train_warmup"] = a.train_warmup
    if a.prep_dataset:
        kw["prep_dataset"] = get_dataset(a.prep_dataset).name
    if a.prep_root:
        kw["prep_root"] = os.path.abspath(a.prep_root)
    if a.seed is not None:
        kw["seed"] = a.seed
    return quick_settings(**kw) if a.quick else Settings(**kw)


def run(settings, out=None, log=print):
    """Measure every part of `settings`; write `out` (JSON) if given; return the results."""
    info = machine()
    log(f"benchmarking {', '.join(settings.parts)} on {info['cores']} cores ({info['cpu']}), "
        f"load average {info['loadavg_start'][0]}")
    results = {}
    for key, part, kw in _plan(settings):
        log(f"- {key}: {', '.join(f'{k}={v}' for k, v in kw.items() if k != 'seed')}")
        r = run_child(part, kw)
        if "." in key:
            a, b = key.split(".")
            results.setdefault(a, {})[b] = r
        else:
            results[key] = r
    info["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    doc = dict(summary_keys(results), **results, machine=info, settings=dataclasses.asdict(settings),
               targets={k: f"{'>=' if kind == 'min' else '<='} {v}" for k, kind, v in TARGETS})
    doc["settings"]["blocks"] = {k: list(v) for k, v in settings.blocks.items()}
    doc["settings"]["caffe_runs"] = {k: list(v) for k, v in settings.caffe_runs.items()}
    doc["settings"]["parts"] = list(settings.parts)
    log(table(doc))
    if out:
        atomic_write_json(out, doc)
        log(f"wrote {out}")
    return doc


def _mark(key, value):
    for k, kind, target in TARGETS:
        if k == key:
            ok = value >= target if kind == "min" else value <= target
            return f"{'>=' if kind == 'min' else '<='} {target:g}: {'met' if ok else 'MISSED'}"
    return ""


def table(doc):
    """The results as a readable plain-text table."""
    rows = []

    def row(part, what, value, key=None, raw=None):
        rows.append((part, what, value, _mark(key, raw) if key else ""))
    for prof, r in doc.get("scoring", {}).items():
        row("scoring", f"{prof}: fast / naive, {r['probes']} x {r['gallery']} pairs", f"{r['speedup']:.2f}x",
            f"scoring_speedup_{prof}", r["speedup"])
        row("", f"{prof}: pairs/s fast, naive (fastest of {r['fast_runs']}, {r['naive_chunks']})",
            f"{r['fast_pairs_per_s']:.1f}, {r['naive_pairs_per_s']:.2f}")
        row("", f"{prof}: ratio of the medians", f"{r['speedup_of_medians']:.2f}x")
        row("", f"{prof}: FLOP ratio (this block, limit)", f"{r['flop_ratio_block']:.2f}x, "
            f"{r['flop_ratio_limit']:.2f}x")
        row("", f"{prof}: max |fast - naive| (score std {r['score_std']:.2f})", f"{r['max_abs_diff']:.1e}")
    if "memory" in doc:
        r = doc["memory"]
        row("memory", f"{r['profile']}: {r['probes']} x {r['gallery']}, cache budget "
            f"{r['budget_bytes'] / 2 ** 20:g} MiB: peak RSS", f"{r['child_peak_rss_mb']:.0f} MB")
        row("", f"  images {r['images_bytes'] / 1e6:.0f} MB, cache {r['cache_bytes'] / 1e6:.0f} MB "
            f"(all at once: {r['cache_unbounded_bytes'] / 1e6:.0f} MB)",
            f"blocks {r['block'][0]} x {r['block'][1]}")
    if "train" in doc:
        r = doc["train"]
        row("train", f"{r['profile']}: overhead of our data path", f"{100 * r['overhead']:+.1f}%",
            "train_overhead", r["overhead"])
        row("", f"  s/iter (medians of {r['seconds_per_iter']['train']['n']}): caffe train; caffe time, "
            "real batches", f"{r['train_s_per_iter']:.3f}, {r['caffe_time_s_per_iter']:.3f}")
        row("", "  vs caffe time on zero Input blobs (s/iter)",
            f"{100 * r['overhead_vs_zero_input']:+.1f}% ({r['caffe_time_zeros_s_per_iter']:.3f})")
        row("", f"  (median of {r['rounds']} interleaved rounds' ratios); of the fastest iterations",
            f"{100 * r['overhead_of_fastest']:+.1f}%")
        row("", "  data layer alone, s/batch (share of caffe time)",
            f"{r['data_layer_s_per_batch']:.4f} ({100 * r['data_layer_share']:.1f}%)")
    if "prep" in doc:
        r = doc["prep"]
        row("prep", f"{r['dataset']} at {r['profile']}: {r['images']} images", f"{r['images_per_s']:.0f} img/s")
    if "cmc" in doc:
        r = doc["cmc"]
        key = [k for k in doc if k.startswith("cmc_") and k.endswith("_seconds")]
        row("cmc", f"{r['size']} x {r['size']} scores, vectorised", f"{r['seconds']:.2f} s",
            key[0] if key else None, r["seconds"])
        row("", f"  loop on {r['loop_probes']} probes agrees", "yes" if r["loop_agrees"] else "NO")
    for prof, r in doc.get("caffe", {}).items():
        st, fa = r["modes"]["stock"], r["modes"]["fast"]
        row("caffe", f"{prof}: fast / stock s per iteration ({r['batch_triplets']} triplets, "
            f"{fa['n']} iterations each)", f"{r['speedup']:.2f}x", f"caffe_speedup_{prof}", r["speedup"])
        row("", "  s/iter stock, fast (medians); median of the rounds' ratios",
            f"{st['s_per_iter']:.3f}, {fa['s_per_iter']:.3f}; {r['speedup_median_of_rounds']:.2f}x")
        row("", f"  {r['gflop_per_iter']:.1f} GFLOP/iter: fraction of the GEMM peak "
            f"({r['gemm_peak_gflops']:.0f} GFLOP/s), fast", f"{fa['peak_fraction']:.2f}",
            f"caffe_peak_fraction_{prof}", fa["peak_fraction"])
        row("", "  fraction of the GEMM peak, stock", f"{st['peak_fraction']:.2f}")
        im = r["modes"]["im2col"]
        row("", "  fast path with im2col convolutions (no oneDNN): s/iter, speed-up, peak fraction",
            f"{im['s_per_iter']:.3f}, {r['speedup_im2col']:.2f}x, {im['peak_fraction']:.2f}")
        row("", f"  peak RSS fast / stock ({fa['peak_rss_mb']:.0f} / {st['peak_rss_mb']:.0f} MB)",
            f"{r['memory_ratio']:.2f}", f"caffe_memory_ratio_{prof}", r["memory_ratio"])
        row("", "  threads stock, fast (OPENBLAS_NUM_THREADS)", f"{r['threads']['stock']}, {r['threads']['fast']}")
        for t, v in sorted(r["by_type"].items(), key=lambda kv: -kv[1]["stock_s"]):
            if v["stock_s"] >= 0.01 * st["s_per_iter"]:
                row("", f"  {t}: ms stock -> im2col -> fast",
                    f"{1e3 * v['stock_s']:.1f} -> {1e3 * v['im2col_s']:.1f} -> {1e3 * v['fast_s']:.1f}")
    if "datapath" in doc:
        r = doc["datapath"]
        row("datapath", f"{r['profile']}: data layer on the critical path, s/iter (solver busy "
            f"{r['compute_s']:g} s/iter)", "")
        for m in r["modes"].values():
            row("", f"  prefetch {m['workers']}: mean (max), share of the iteration",
                f"{m['critical_s_per_iter']:.4f} ({m['critical_s_max']:.3f}), {100 * m['share_of_iteration']:.1f}%")
        row("", "  same batches in every mode", "yes" if r["same_batches_all_modes"] else "NO")
    m = doc["machine"]
    head = (f"MTDnet benchmarks: {m['cores']} cores, {m['cpu']}, {m['date']}, commit "
            f"{(m['git_commit'] or '?')[:10]}{' (dirty)' if m['git_dirty'] else ''}, "
            f"load average {m['loadavg_start'][0]} -> {m['loadavg_end'][0]}")
    widths = [max(len(r[i]) for r in rows + [("part", "measure", "value", "target")]) for i in range(4)]
    fmt = "  ".join(f"{{:{'>' if i == 2 else '<'}{w}}}" for i, w in enumerate(widths))
    lines = [head, fmt.format("part", "measure", "value", "target")] + [fmt.format(*r) for r in rows]
    return "\n".join(x.rstrip() for x in lines)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        cli_main(lambda: _child(sys.argv[2], sys.argv[3]))
    else:
        sys.exit("usage: python tools/bench.py (this module's --child mode is internal)")
