"""`make train`: one run of the paper's training stages, driven through `caffe train`.

A run (spec.Run) lives in runs/<dataset>-<variant>-<profile>[-<split>][+overrides]/:
  solver.prototxt, train.prototxt   the exact files Caffe runs (plain
                                    `caffe train -solver <run>/solver.prototxt` works too)
  train.log                         Caffe's whole log (appended across resumes)
  snapshots/                        models and solver states
  run.json                          what was run: settings, overrides, seed, initialisation
  loss.png                          the loss curves
  previous-<time>/                  an earlier run of the same name, set aside by RESTART=1
One `make train` of a run at a time (a lock beside it: runs/.<run>.lock).
"""
import dataclasses
import os
import shutil
import time

from google.protobuf import text_format

from core import DataSpec, MtdnetError, datasets, get_dataset
from core.fsutil import atomic_write_json, atomic_write_text, read_json
from core.locks import exclusive
from data_prep import build
from data_prep.datasets import raw_present
from mtdnet import caffe_run, models
from mtdnet.caffe_speed import add_compute
from mtdnet.gpu import require_gpu_build
from mtdnet.plots import plot_loss_curve
from prototxt import generate
from prototxt import weights as W

# Layers only an MTDnet-family model has (an ImageNet CaffeNet has conv1..fc8 only).
MTDNET_MARKERS = ("conv3_pair", "feat", "fc8_rnk")


def model_kind(path):
    """'mtdnet' (a model of ours: fine-tune from it) or 'imagenet' (copy conv1/conv2)."""
    names = W.read_caffemodel(path)
    if any(m in names for m in MTDNET_MARKERS):
        return "mtdnet"
    if "conv1" in names and "conv2" in names:
        return "imagenet"
    raise MtdnetError(f"{path}: neither an MTDnet model nor an ImageNet CaffeNet/AlexNet "
                      f"(no conv1/conv2; layers: {sorted(names)[:8]}...)")


def plan(run, iters=None, gpu=False):
    """The run's train net and solver, checked and written nowhere:
    (net text, solver text, max_iter, random_seed)."""
    from caffe.proto import caffe_pb2
    if not run.variant.net:
        raise MtdnetError(f"{run.variant.title} has no training of its own: it ranks the "
                          f"{run.train_variant.title} model. Train VARIANT={run.train_variant.key}, then "
                          f"`make eval VARIANT={run.variant.key}`.")
    if iters is not None:
        generate.check_iters(iters)
    if gpu:
        require_gpu_build()
    for d in run.all_data:
        if not d.exists():
            raise MtdnetError(f"{run.project.rel(d.dir)}: prepared data not found; run `{d.make_command()}` "
                              f"first{_other_sources(run) if d == run.source_data else ''}")
        why = build.outdated(d.dir)
        if why:
            raise MtdnetError(f"{run.project.rel(d.dir)}: {why}; run `{d.make_command()}` first")
    s = caffe_pb2.SolverParameter()
    text_format.Merge(generate.solver_text(run, gpu, iters, net=run.project.rel(run.train_net)), s)
    solver_rel = run.project.rel(run.solver)
    solver = (f"# Run with: caffe train -solver {solver_rel}   (from the project root)\n"
              + text_format.MessageToString(s))
    return generate.train_net_text(run), solver, s.max_iter, s.random_seed


def _other_sources(run):
    """A hint when the source dataset asked for has no raw data here but another one has
    (only CUHK03's detected images: SOURCE=cuhk03detected)."""
    src = run.source_data.dataset
    if raw_present(src, project=run.project):
        return ""
    here = [d for d in map(get_dataset, datasets.names()) if d.spec.source and d.name != src.name
            and raw_present(d, project=run.project)]
    if not here:
        return ""
    alt = DataSpec(here[0], run.profile, run.source_split, run.project)
    return (f"; but no raw {src.name} data is here, {' or '.join(d.name for d in here)} is: add "
            f"SOURCE={here[0].name} (its data: `{alt.make_command()}`)")


def _write(run, net, solver):
    os.makedirs(run.snapshot_dir, exist_ok=True)
    atomic_write_text(run.train_net, net)
    atomic_write_text(run.solver, solver)


def prepare(run, iters=None, gpu=False):
    """Write the run's train net and solver (what `caffe train -solver <run>/solver.prototxt` runs);
    return the solver's (max_iter, random_seed)."""
    net, solver, max_iter, seed = plan(run, iters, gpu)
    _write(run, net, solver)
    return max_iter, seed


def _learnable_layers(net_path):
    """{layer: [param shapes]} of the layers that own learnable parameters (a layer sharing all
    its parameters by name with an earlier one, like the triplet streams' conv1_p, is left out)."""
    proto = W.read_net(net_path)
    with W.instantiate(net_path) as (net, _):
        shapes = {name: [tuple(b.data.shape) for b in blobs] for name, blobs in net.params.items()}
    seen, owners = set(), {}
    for layer in proto.layer:
        if layer.name not in shapes:
            continue
        names = [layer.param[j].name if j < len(layer.param) else "" for j in range(len(shapes[layer.name]))]
        if any(not n or n not in seen for n in names):
            owners[layer.name] = shapes[layer.name]
        seen.update(n for n in names if n)
    return owners


def check_finetune_source(run, weights):
    """A model fine-tuned from must hold every learnable layer of the run's train net, with its
    shapes: Caffe copies layers by name and would leave the missing ones at their random
    fillers without a word (and abort on a shape mismatch)."""
    have = {name: [a.shape for a in arrays] for name, arrays in W.read_caffemodel(weights).items()}
    need = _learnable_layers(run.train_net)
    missing = [name for name in need if name not in have]
    if missing:
        raise MtdnetError(f"{weights}: has no layer(s) {', '.join(missing)}, which {run.variant.title} "
                          f"fine-tunes (they would start from random fillers); give a "
                          f"{run.variant.title} model of profile '{run.profile.name}' (or an ImageNet "
                          "CaffeNet for conv1/conv2 only)")
    for name, shapes in need.items():
        got = have[name]
        if len(got) != len(shapes) or any(tuple(g) != s and (len(g) != 4 or tuple(g) != (1,) * (4 - len(s)) + s)
                                          for g, s in zip(got, shapes)):
            raise MtdnetError(f"{weights}: layer '{name}' has shapes {[tuple(g) for g in got]}, "
                              f"{run.variant.title} of profile '{run.profile.name}' needs {shapes} "
                              "(a model of another profile?)")


# How a run's weights started (run.json `init_kind`; `init` says it in words).
INIT_KINDS = ("scratch", "imagenet", "finetune", "two_copies")


def _fillers(run):
    return None, "scratch (fillers)", "scratch"


def _needs_an_mtdnet_model(run):
    src = run.with_variant("mtdnet")
    src = dataclasses.replace(src, dataset=run.source_data.dataset, split=run.source_split)
    raise MtdnetError(f"{run.variant.title} starts from a {src.dataset.title} MTDnet model: pass "
                      f"WEIGHTS=<{src.dataset.title} model> (e.g. "
                      f"{run.project.rel(src.snapshot_prefix)}_iter_N.caffemodel)")


def _fine_tuned(run, weights, shown):
    check_finetune_source(run, weights)
    return weights, f"fine-tuned from {shown}", "finetune"


def _both_copies(run, weights, shown):
    W.init_cross_from_mtdnet(weights, run.train_net, run.init_model)
    return run.init_model, f"both copies from the MTDnet model {shown}", "two_copies"


# A variant's initialisation rule (core.variants.INIT_RULES): without WEIGHTS, and from a model
# of ours (an ImageNet model is the same for every rule: its layers copied by name).
WITHOUT_WEIGHTS = {"finetune": _fillers, "two_copies": _needs_an_mtdnet_model}
FROM_OUR_MODEL = {"finetune": _fine_tuned, "two_copies": _both_copies}


def initial_weights(run, weights):
    """(caffemodel to pass to -weights or None, description of the initialisation, INIT_KINDS)."""
    if weights is None:
        return WITHOUT_WEIGHTS[run.variant.init](run)
    shown = run.project.rel(weights)
    if model_kind(weights) == "imagenet":
        layers = run.train_variant.imagenet_layers
        W.init_from_imagenet(weights, run.train_net, run.init_model, layers=layers)
        return run.init_model, f"ImageNet {'/'.join(layers)} from {shown}", "imagenet"
    return FROM_OUR_MODEL[run.variant.init](run, weights, shown)


def _same_weights(info, weights, project):
    """Whether `weights` is the model the run was started from (run.json: project-relative
    inside the project, so a record reads the same on every machine)."""
    recorded = info.get("weights")
    if recorded:
        return os.path.realpath(project.abs(recorded)) == os.path.realpath(weights)
    return bool(info.get("init", "").endswith((" " + weights, " " + os.path.abspath(weights),
                                                " " + os.path.relpath(os.path.abspath(weights)))))


def set_aside(run):
    """Move everything of an earlier run of this name into <run>/previous-<time>/ (nothing is
    deleted); returns that folder, or None when there was nothing."""
    if not os.path.isdir(run.dir):
        return None
    items = [n for n in os.listdir(run.dir) if not n.startswith("previous-")]
    if not items:
        return None
    base = os.path.join(run.dir, "previous-" + time.strftime("%Y%m%d-%H%M%S"))
    dest, k = base, 1
    while os.path.exists(dest):
        k += 1
        dest = f"{base}-{k}"
    os.makedirs(dest)
    for n in items:
        os.replace(os.path.join(run.dir, n), os.path.join(dest, n))
    return dest


def _undo_set_aside(run, aside):
    """Put back what set_aside moved, dropping what this command wrote since (under the lock)."""
    for n in os.listdir(run.dir):
        p = os.path.join(run.dir, n)
        if p != aside and not n.startswith("previous-"):
            shutil.rmtree(p) if os.path.isdir(p) else os.unlink(p)
    for n in os.listdir(aside):
        os.replace(os.path.join(aside, n), os.path.join(run.dir, n))
    os.rmdir(aside)


def train(run, iters=None, weights=None, gpu=False, progress=True, restart=False):
    """Train a spec.Run, resuming from its newest good snapshot (RESTART: set the old run
    aside and start again); returns the run.json dict. One command per run at a time."""
    net, solver, max_iter, seed = plan(run, iters, gpu)   # every check before anything is written
    project = run.project
    rel_dir = project.rel(run.dir)
    if weights:
        W.read_caffemodel(weights)   # a clear error now for a missing or broken file
    with exclusive(run.dir, "make train", label=rel_dir) as lock:
        info = read_json(run.info, "run record") if os.path.exists(run.info) else {}
        state = None if restart else caffe_run.good_snapshot(run.snapshot_prefix, project.root)
        if not restart and not state and not os.path.exists(run.dir):
            # A run kept in models/resume/ by an earlier session continues from there.
            state, kept = models.restore_resume(run)
            if state:
                info = kept
                print(f"{rel_dir}: restored the kept snapshot pair {project.rel(models.resume_dir(run))} "
                      f"(iteration {caffe_run.snapshot_iter(state)})")
        aside = None
        if restart:
            aside = set_aside(run)
            if aside:
                print(f"restart: the earlier run is kept in {project.rel(aside)}")
            info = {}
        elif state:
            done = caffe_run.snapshot_iter(state)
            if weights and not _same_weights(info, weights, project):
                raise MtdnetError(
                    f"{rel_dir}: already trained to iteration {done} from {info.get('init', 'unknown')}; "
                    f"it would resume and ignore WEIGHTS={weights}. Add RESTART=1 (--restart) to start "
                    "again from WEIGHTS (the earlier run is kept in a previous-<time>/ folder), or leave "
                    "WEIGHTS out to resume.")
            if done >= max_iter:
                print(f"{rel_dir}: already at iteration {done} (>= {max_iter} asked): nothing to train. "
                      f"Model: {info.get('model')}. More iterations: ITERS=<n>; from the start: RESTART=1.")
                return info
        created = not os.path.exists(run.dir)
        try:
            _write(run, net, solver)
            if state:
                init_model, init = None, info.get("init", "unknown")
                print(f"resuming from {project.rel(state)} (initialisation: {init})")
            else:
                init_model, init, kind = initial_weights(run, weights)
                info["init_kind"] = kind
                print(f"initialisation: {init}")
        except BaseException:
            if created:   # made by this command a moment ago: leave no empty run behind
                shutil.rmtree(run.dir, ignore_errors=True)
            elif aside:   # a restart that cannot start: the earlier run goes back where it was
                _undo_set_aside(run, aside)
            raise
        solver_rel = project.rel(run.solver)
        print(f"run: {rel_dir}  (same as: caffe train -solver {solver_rel})")
        left = max_iter - (caffe_run.snapshot_iter(state) if state else 0)
        if not gpu:   # how long, before the wait starts
            print(f"{left} iterations to go: about {_duration(left * run.seconds_per_iter)} on a "
                  f"2-core CPU ({run.seconds_per_iter:g} s per iteration measured for {run.train_variant.title} "
                  f"of profile '{run.profile.name}'); Ctrl-C stops with a snapshot, the same command resumes")
        if not state:
            info["weights"] = project.rel(weights) if weights else None
        info.update(run.identity(), source_split=run.source_split.name, seed=seed, max_iter=max_iter, init=init,
                    solver=solver_rel, data=[project.rel(d.dir) for d in run.all_data], gpu=gpu,
                    source=run.source_data.dataset.name if run.source_data else None)
        add_compute(info)
        atomic_write_json(run.info, info)
        t0 = time.time()
        it = None
        try:
            it = caffe_run.train(run.solver, run.log, max_iter, run.snapshot_prefix, weights=init_model,
                                 snapshot=state, progress=progress, cwd=project.root, caffe=project.caffe, lock=lock)
        finally:
            # Recorded however training ended (done, Ctrl-C, kill, an error): the time adds up
            # over resumed parts, the iterations are the newest snapshot's.
            model = caffe_run.latest_snapshot(run.snapshot_prefix, "caffemodel")
            info.update(iterations=it if it is not None else caffe_run.snapshot_iter(model) if model else 0,
                        model=project.rel(model) if model else None,
                        train_seconds=round(info.get("train_seconds", 0) + time.time() - t0, 1))
            try:
                atomic_write_json(run.info, info)
            except MtdnetError as e:   # e.g. the disk is full: the training error says more
                print(f"warning: {e}")
            _plot_loss(run.log, run.loss_png, rel_dir)
    print(f"done: iteration {it}, model {info['model']}, loss curve {project.rel(run.loss_png)}")
    return info


def _duration(seconds):
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} hours"


def _plot_loss(log, png, title):
    if not os.path.exists(log):
        return
    try:
        plot_loss_curve(log, png, title=f"{title}: training loss")
    except Exception as e:  # a picture must never hide the training result
        print(f"warning: could not draw {png}: {e}")
