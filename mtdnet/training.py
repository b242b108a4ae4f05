"""`make train`: one run of the paper's training stages, driven through `caffe train`.

A run (spec.Run) lives in runs/<dataset>-<variant>-<profile>[-<split>][+overrides]/:
  solver.prototxt, train.prototxt   the exact files Caffe runs (plain
                                    `caffe train -solver <run>/solver.prototxt` works too)
  train.log                         Caffe's whole log (appended across resumes)
  snapshots/                        models and solver states
  run.json                          what was run: settings, overrides, seed, initialisation
  loss.png                          the loss curves
"""
import dataclasses
import json
import os
import time

from google.protobuf import text_format

from mtdnet import caffe_run
from mtdnet.plots import plot_loss_curve
from prototxt import generate
from prototxt import weights as W
from spec import MtdnetError
from spec.fsutil import atomic_write_json, atomic_write_text

# Layers only an MTDnet-family model has (an ImageNet CaffeNet has conv1..fc8 only).
MTDNET_MARKERS = ("conv3_pair", "feat", "conv3_rnk")


def model_kind(path):
    """'mtdnet' (a model of ours: fine-tune from it) or 'imagenet' (copy conv1/conv2)."""
    names = W.read_caffemodel(path)
    if any(m in names for m in MTDNET_MARKERS):
        return "mtdnet"
    if "conv1" in names and "conv2" in names:
        return "imagenet"
    raise MtdnetError(f"{path}: neither an MTDnet model nor an ImageNet CaffeNet/AlexNet "
                      f"(no conv1/conv2; layers: {sorted(names)[:8]}...)")


def prepare(run, iters=None, gpu=False):
    """Write the run's train net and solver (what `caffe train -solver <run>/solver.prototxt` runs);
    return the solver's (max_iter, random_seed)."""
    from caffe.proto import caffe_pb2
    if not run.variant.net:
        raise MtdnetError(f"{run.variant.title} has no training of its own: it ranks the "
                          f"{run.train_variant.title} model. Train VARIANT={run.train_variant.key}, then "
                          f"`make eval VARIANT={run.variant.key}`.")
    for d in run.all_data:
        if not d.exists():
            raise MtdnetError(f"{run.project.rel(d.dir)}: prepared data not found; run `{d.make_command()}` first")
    os.makedirs(run.snapshot_dir, exist_ok=True)
    atomic_write_text(run.train_net, generate.train_net_text(run))
    s = caffe_pb2.SolverParameter()
    text_format.Merge(generate.solver_text(run, gpu, iters, net=run.project.rel(run.train_net)), s)
    solver_rel = run.project.rel(run.solver)
    atomic_write_text(run.solver, f"# Run with: caffe train -solver {solver_rel}   (from the project root)\n"
                      + text_format.MessageToString(s))
    return s.max_iter, s.random_seed


def initial_weights(run, weights):
    """(caffemodel to pass to -weights or None, description of the initialisation)."""
    if weights is None:
        if run.variant.init == "two_copies":
            src = run.with_variant("mtdnet")
            src = dataclasses.replace(src, dataset=run.source_data.dataset, split=run.source_split)
            raise MtdnetError(f"{run.variant.title} starts from a {src.dataset.title} MTDnet model: pass "
                              f"WEIGHTS=<{src.dataset.title} model> (e.g. "
                              f"{run.project.rel(src.snapshot_prefix)}_iter_N.caffemodel)")
        return None, "scratch (fillers)"
    kind = model_kind(weights)
    out = run.init_model
    if kind == "imagenet":
        W.init_from_imagenet(weights, run.train_net, out)
        return out, f"ImageNet conv1/conv2 from {weights}"
    if run.variant.init == "two_copies":
        W.init_cross_from_mtdnet(weights, run.train_net, out)
        return out, f"both copies from the MTDnet model {weights}"
    return weights, f"fine-tuned from {weights}"


def train(run, iters=None, weights=None, gpu=False, progress=True):
    """Train a spec.Run (resuming from its newest snapshot); returns the run.json dict."""
    max_iter, seed = prepare(run, iters, gpu)
    project = run.project
    state = caffe_run.latest_snapshot(run.snapshot_prefix)
    info = json.load(open(run.info)) if os.path.exists(run.info) else {}
    if state:
        init = info.get("init", "unknown")
        print(f"resuming from {project.rel(state)} (initialisation: {init})")
        init_model = None
    else:
        init_model, init = initial_weights(run, weights)
        print(f"initialisation: {init}")
    solver_rel = project.rel(run.solver)
    print(f"run: {project.rel(run.dir)}  (same as: caffe train -solver {solver_rel})")
    info.update(dataset=run.dataset.name, variant=run.variant.key, profile=run.profile.name,
                overrides=dict(run.profile.overrides), split=run.split.name,
                source_split=run.source_split.name, seed=seed, max_iter=max_iter, init=init,
                solver=solver_rel, data=[project.rel(d.dir) for d in run.all_data], gpu=gpu)
    atomic_write_json(run.info, info)
    t0 = time.time()
    try:
        it = caffe_run.train(run.solver, run.log, max_iter, run.snapshot_prefix, weights=init_model,
                             progress=progress, cwd=project.root, caffe=project.caffe)
    finally:
        _plot_loss(run.log, run.loss_png, project.rel(run.dir))
    model = caffe_run.latest_snapshot(run.snapshot_prefix, "caffemodel")
    info.update(iterations=it, model=project.rel(model) if model else None,
                train_seconds=round(info.get("train_seconds", 0) + time.time() - t0, 1))
    atomic_write_json(run.info, info)
    print(f"done: iteration {it}, model {info['model']}, loss curve {project.rel(run.loss_png)}")
    return info


def _plot_loss(log, png, title):
    if not os.path.exists(log):
        return
    try:
        plot_loss_curve(log, png, title=f"{title}: training loss")
    except Exception as e:  # a picture must never hide the training result
        print(f"warning: could not draw {png}: {e}")
