"""`make train`: one run of the paper's training stages, driven through `caffe train`.

A run lives in runs/<dataset>-<variant>-<profile>[-<split>]/:
  solver.prototxt, train.prototxt   the exact files Caffe runs (plain
                                    `caffe train -solver <run>/solver.prototxt` works too)
  train.log                         Caffe's whole log (appended across resumes)
  snapshots/                        models and solver states
  run.json                          what was run: settings, seed, initialisation
  loss.png                          the loss curves
"""
import json
import os
import time

from google.protobuf import text_format

from mtdnet import REPO_ROOT, MtdnetError
from mtdnet import caffe_run
from mtdnet.fsutil import atomic_write_json, atomic_write_text

# Layers only an MTDnet-family model has (an ImageNet CaffeNet has conv1..fc8 only).
MTDNET_MARKERS = ("conv3_pair", "feat", "conv3_rnk")


def model_kind(path):
    """'mtdnet' (a model of ours: fine-tune from it) or 'imagenet' (copy conv1/conv2)."""
    from prototxt.weights import read_caffemodel
    names = read_caffemodel(path)
    if any(m in names for m in MTDNET_MARKERS):
        return "mtdnet"
    if "conv1" in names and "conv2" in names:
        return "imagenet"
    raise MtdnetError(f"{path}: neither an MTDnet model nor an ImageNet CaffeNet/AlexNet "
                      f"(no conv1/conv2; layers: {sorted(names)[:8]}...)")


def prepare(dataset, variant, profile, split="paper", iters=None, gpu=False, root=REPO_ROOT,
            source_split="paper"):
    """Write the run's train net and solver; return the generator's file map plus run paths.

    `root` is the project directory holding data/ and runs/ (Caffe runs there);
    `source_split`: the CUHK03 split that aug and cross read.
    """
    from caffe.proto import caffe_pb2
    from prototxt import generate
    files = generate.files_for(dataset, variant, profile, split, source_split=source_split)
    if variant == "trp":
        raise MtdnetError("MTDnet-trp has no training of its own: it ranks the MTDnet model's triplet "
                          "features. Train VARIANT=mtdnet, then `make eval VARIANT=trp`.")
    run = os.path.join(root, files["run_dir"])
    for d in files["data"]:
        if not os.path.exists(os.path.join(root, d, "images.lmdb", "data.mdb")):
            name, _, need = os.path.basename(d).split("-", 2)
            raise MtdnetError(f"{d}: prepared data not found; run `make data DATASET={name} "
                              f"PROFILE={profile} SPLIT={need}` first")
    os.makedirs(os.path.join(run, "snapshots"), exist_ok=True)
    train_rel = f"{files['run_dir']}/train.prototxt"
    atomic_write_text(os.path.join(root, train_rel),
                      generate.train_net_text(dataset, variant, profile, split, source_split=source_split))
    s = caffe_pb2.SolverParameter()
    text_format.Merge(generate.solver_text(dataset, variant, profile, split, gpu, iters), s)
    s.net = train_rel
    solver_rel = f"{files['run_dir']}/solver.prototxt"
    atomic_write_text(os.path.join(root, solver_rel),
                      f"# Run with: caffe train -solver {solver_rel}   (from the project root)\n"
                      + text_format.MessageToString(s))
    files.update(root=root, run_abs=run, train_run=train_rel, solver_run=solver_rel, max_iter=s.max_iter,
                 seed=s.random_seed)
    return files


def initial_weights(files, variant, weights):
    """(caffemodel to pass to -weights or None, description of the initialisation)."""
    from prototxt import weights as W
    if weights is None:
        if variant == "cross":
            raise MtdnetError("MTDnet-cross starts from a CUHK03 MTDnet model: pass WEIGHTS=<cuhk03 model> "
                              "(e.g. runs/cuhk03-mtdnet-<profile>/snapshots/cuhk03_mtdnet_iter_N.caffemodel)")
        return None, "scratch (fillers)"
    kind = model_kind(weights)
    out = os.path.join(files["run_abs"], "init.caffemodel")
    train = os.path.join(files["root"], files["train_run"])
    if kind == "imagenet":
        W.init_from_imagenet(weights, train, out)
        return out, f"ImageNet conv1/conv2 from {weights}"
    if variant == "cross":
        W.init_cross_from_mtdnet(weights, train, out)
        return out, f"both copies from the MTDnet model {weights}"
    return weights, f"fine-tuned from {weights}"


def train(dataset, variant, profile, split="paper", iters=None, weights=None, gpu=False, progress=True,
          root=REPO_ROOT, source_split="paper"):
    files = prepare(dataset, variant, profile, split, iters, gpu, root, source_split)
    run = files["run_abs"]
    prefix = os.path.join(root, files["snapshot_prefix"])
    state = caffe_run.latest_snapshot(prefix)
    info_path = os.path.join(run, "run.json")
    info = json.load(open(info_path)) if os.path.exists(info_path) else {}
    if state:
        init = info.get("init", "unknown")
        print(f"resuming from {os.path.relpath(state, root)} (initialisation: {init})")
        init_model = None
    else:
        init_model, init = initial_weights(files, variant, weights)
        print(f"initialisation: {init}")
    print(f"run: {files['run_dir']}  (same as: caffe train -solver {files['solver_run']})")
    info.update(dataset=dataset, variant=variant, profile=profile, split=split, source_split=source_split,
                seed=files["seed"],
                max_iter=files["max_iter"], init=init, solver=files["solver_run"],
                data=files["data"], gpu=gpu)
    atomic_write_json(info_path, info)
    t0 = time.time()
    log = os.path.join(run, "train.log")
    try:
        it = caffe_run.train(os.path.join(root, files["solver_run"]), log, files["max_iter"], prefix,
                             weights=init_model, progress=progress, cwd=root)
    finally:
        _plot_loss(log, os.path.join(run, "loss.png"), files["run_dir"])
    model = caffe_run.latest_snapshot(prefix, "caffemodel")
    info.update(iterations=it, model=os.path.relpath(model, root) if model else None,
                train_seconds=round(info.get("train_seconds", 0) + time.time() - t0, 1))
    atomic_write_json(info_path, info)
    print(f"done: iteration {it}, model {info['model']}, loss curve {files['run_dir']}/loss.png")
    return info


def _plot_loss(log, png, title):
    if not os.path.exists(log):
        return
    try:
        from mtdnet.plots import plot_loss_curve
        plot_loss_curve(log, png, title=f"{title}: training loss")
    except Exception as e:  # a picture must never hide the training result
        print(f"warning: could not draw {png}: {e}")
