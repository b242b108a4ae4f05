"""`make table1`: the paper's training stages in order, for the datasets present, then the report.

  1. the source dataset (CUHK03): MTDnet trained (from ImageNet conv1/conv2 with WEIGHTS=, else
     from scratch), its snapshot chosen on CUHK03's validation identities; CUHK03's own rows
     (MTDnet, -trp, -cls, -rnk)
  2. every other Table 1 dataset present: MTDnet, -cls, -rnk fine-tuned from CUHK03's model of
     the same variant, -aug and -cross from CUHK03's MTDnet (runs tagged @<source>), plus
     MTDnet from scratch on the dataset alone, the baseline that shows what pre-training brings
  3. make report

Every step runs in this process through the library (data_prep.build.prepare,
mtdnet.training.train, mtdnet.evaluate, mtdnet.report) and is shown as the `make` command
a user could type to do the same; a step whose output is complete is skipped, so a re-run
continues where the last one stopped: a run short of the profile's iterations is resumed, a
score older than its run's newest snapshot is made again, and a fine-tune whose source model
is no longer the source's chosen one restarts (RESTART=1: the earlier run is kept aside). The
source's models published in the repository (models/<run>/, mtdnet.models) count as
complete: the later stages start from them without the hours of training. DRY_RUN=1 prints
the plan with each command and its expected time on this machine; SPLITS= adds each
target's MTDnet on random splits and their mean.
"""
import dataclasses
import functools
import os
import shlex
import sys
import time

from core import PAPER, MtdnetError, Project, Run, Split, datasets, get_profile, variants
from core.fsutil import read_json
from data_prep.build import prepare
from data_prep.datasets import default_root, raw_present
from mtdnet import caffe_run, models, training
from mtdnet import evaluate as E
from mtdnet.report import build_report, hours_minutes

# Probes x gallery images of each dataset's paper protocol (for the time estimates only).
EVAL_PAIRS = {"cuhk03": 500 * 100, "cuhk01": 200 * 100, "viper": 316 * 316, "ilids": 60 * 59,
              "prid2011": 100 * 649}
# The fast pair scorer's seconds per probe-gallery pair (8 passes) per iteration-second of the
# profile: measured on VIPeR at `scratch` (316 x 316 pairs in ~10 min at ~1.1 s per iteration).
PAIR_SECONDS_PER_ITER_SECOND = 600 / (316 * 316) / 1.1
FEATURE_EVAL_SECONDS = 30
# The variant whose source model the cross-domain variants start from (and whose numbers head
# each dataset's plan).
PRINCIPAL = "mtdnet"


@dataclasses.dataclass
class Step:
    what: str
    args: list                     # the make arguments that do the same; a callable is resolved when shown
    seconds: float                 # expected on this machine
    done: object = None            # () -> True when the step's output is complete (skipped)
    redo: object = None            # () -> why its earlier output must be made anew (RESTART=1), or None
    act: object = None             # (restart) -> None: the step, run through the library

    def command(self, resolve=True):
        """The equivalent make command (shown in the plan and the log)."""
        words = ["make"] + [(a() if resolve else a.__doc__) if callable(a) else a for a in self.args]
        return words + (["RESTART=1"] if resolve and self.redo and self.redo() else [])

    def run(self):
        self.act(bool(self.redo and self.redo()))


def source_dataset_present():
    """The source dataset to train on: the first registered source dataset whose raw data is
    here (CUHK03's labeled images, the protocol's, before its detected ones); None when none is."""
    return next((d for d in map(datasets.get_dataset, datasets.names()) if d.spec.source and raw_present(d)), None)


def targets_present():
    """Table 1's other datasets whose raw data is here, and those that are not."""
    present, absent = [], []
    for key in datasets.table1_datasets():
        d = datasets.get_dataset(key)
        if d.spec.source:
            continue
        (present if raw_present(d) else absent).append(d)
    return present, absent


def _trained(run, iterations, publishable=False, redo=None):
    # Done at the plan's iterations: a run stopped early, or trained with a smaller ITERS,
    # is resumed from its newest snapshot by the same `make train`.
    def done():
        if publishable and models.published(run):
            return True     # the repository's copy (models/<run>/) stands for it
        return _iterations_done(run) >= iterations and not (redo and redo())
    return done


def _digest(path):
    st = os.stat(path)
    return _digest_of(os.path.realpath(path), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _digest_of(path, size, mtime_ns):   # once per file version: paper-profile models are large
    return models.sha256(path)


def _source_changed(run, base):
    """Why fine-tune `run` is outdated: it started from a model that is no longer `base`'s
    chosen one (the source trained on, another snapshot chosen); None when it is current,
    not started, or either model cannot be compared."""
    def why():
        if not os.path.exists(run.info):
            return None
        started = read_json(run.info, "run record").get("weights")
        started = started and run.project.abs(started)
        try:
            now = _chosen_path(base)
        except MtdnetError:
            return None     # the source has no model yet: its own step comes first
        if not started or not os.path.isfile(started) or _digest(started) == _digest(now):
            return None
        return (f"fine-tuned from {run.project.rel(started)}, {base.name}'s chosen model is now "
                f"{run.project.rel(now)}: it restarts (the earlier run is kept in previous-<time>/)")
    return why


def _evaluated(run, trained, publishable_as=None):
    # An evaluation before its training is done would be made again: it is not done.
    def done():
        if publishable_as is not None and models.published(publishable_as):
            return True
        if not trained() or not os.path.exists(run.result("paper")):
            return False
        latest = caffe_run.latest_snapshot(run.snapshot_prefix, "caffemodel")
        body = read_json(run.result("paper"), "result")
        if body.get("selected") is not None:
            # Chosen among the snapshots there were: a run trained on since is chosen again.
            choice = read_json(run.selection, "snapshot choice") if os.path.exists(run.selection) else {}
            return latest is None or caffe_run.snapshot_iter(latest) in {c["iteration"] for c in
                                                                        choice.get("curve", [])}
        return bool(latest) and body.get("iterations") == caffe_run.snapshot_iter(latest)
    return done


def _iterations_done(run):
    info = read_json(run.info, "run record") if os.path.exists(run.info) else {}
    return info.get("iterations") or 0


def _label(run):
    """' (tag, split)' of a run's steps: what sets it apart from the paper split's from-scratch run."""
    bits = ([run.tag] if run.tag else []) + ([] if run.split.is_paper else [run.split.name])
    return f" ({', '.join(bits)})" if bits else ""


def _common(run):
    return [f"DATASET={run.dataset.name}", f"PROFILE={run.profile.name}", *run.make_options()]


def _chosen_path(run):
    if os.path.exists(run.selection):
        return run.project.abs(read_json(run.selection, "snapshot choice")["model"])
    latest = caffe_run.latest_snapshot(run.snapshot_prefix, "caffemodel") or models.published(run)
    if not latest:
        raise MtdnetError(f"{run.snapshot_prefix}_iter_*.caffemodel: the {run.dataset.title} model the "
                          f"next stages start from is missing; its training step did not finish")
    return latest


def chosen_model(run):
    """WEIGHTS for the fine-tuning stages: the source run's snapshot chosen on validation
    (resolved when the step runs)."""
    def resolve():
        return _chosen_path(run)
    resolve.__doc__ = f"<{run.name}'s model chosen on validation>"
    return resolve


def _weights_arg(weights):
    """WEIGHTS=... as shown: a path, or a resolver shown by its description until it runs."""
    if not callable(weights):
        return f"WEIGHTS={weights}"

    def shown():
        return "WEIGHTS=" + weights()
    shown.__doc__ = "WEIGHTS=" + weights.__doc__
    return shown


def plan(profile, gpu=False, weights=None, project=None, splits=()):
    """(steps, notes): the stages for the datasets present, in order. splits: random<k>
    splits on which each target's MTDnet is also trained (fine-tuned and from scratch) and
    evaluated, their mean reported beside the paper split's number."""
    prof = get_profile(profile)
    splits = [Split.parse(x) for x in splits]
    bad = [str(x) for x in splits if x.kind != "random" or x.index is None]
    if bad:
        raise MtdnetError(f"SPLITS takes random<k> names (e.g. random0,random1,random2), got {', '.join(bad)}")
    project = project or Project()
    iter_s = prof.seconds_per_iter
    bars = sys.stderr.isatty()
    gpu_arg = ["GPU=1"] if gpu else []
    steps, notes = [], []
    src = source_dataset_present()
    present, absent = targets_present()
    for d in absent:
        notes.append(f"{d.title}: no raw data at {default_root(d)}: its Table 1 column stays empty")
    if src is None:
        notes.append(f"{datasets.source_dataset().title}: no raw data at {default_root(datasets.source_dataset())}: "
                     f"no pre-training; the other datasets train from scratch only")

    def train_eval(run, weights, select, redo=None):
        # The source's models may be published in the repository (models/): they are not retrained.
        publishable = select
        lr, its = run.solver_settings()
        trained = _trained(run, its, publishable, redo)
        init_args = [_weights_arg(weights)] if weights else []
        source = [f"SOURCE={run.source_dataset.name}"] if run.train_variant.source and run.source_dataset else []

        def train(restart, run=run):
            training.train(run, weights=weights() if callable(weights) else weights, gpu=gpu, restart=restart)
        steps.append(Step(f"{run.dataset.title}: train {run.train_variant.title}{_label(run)}",
                          ["train", *_common(run), f"VARIANT={run.train_variant.key}", *init_args, *source, *gpu_arg],
                          (its if redo and redo() else max(its - _iterations_done(run), 0)) * run.seconds_per_iter,
                          trained, redo, train))
        for v in variants.scored_with(run.variant.key):
            r = run.with_variant(v.key)
            secs = FEATURE_EVAL_SECONDS if v.score == "feature" else \
                EVAL_PAIRS.get(r.dataset.key, 316 * 316) * PAIR_SECONDS_PER_ITER_SECOND * iter_s
            # SELECT scores every snapshot on the validation identities, then the chosen one on test.
            evals = min(its // prof.snapshot, E.SELECT_CANDIDATES) + 1 if select else 1
            ev = E.Evaluation(gpu=gpu)

            def evaluate(restart, r=r, ev=ev):
                if select:
                    E.select_snapshot(r, ev, progress=bars)
                else:
                    E.evaluate(r, ev, progress=bars)
            steps.append(Step(f"{r.dataset.title}: evaluate {v.title}{_label(run)}",
                              ["eval", *_common(r), f"VARIANT={v.key}"] + (["SELECT=1"] if select else [])
                              + gpu_arg, secs * evals, _evaluated(r, trained, run if publishable else None),
                              act=evaluate))

    def data_step(d, seconds, split=PAPER):
        steps.append(Step(f"{d.title}: prepare the data" + ("" if split.is_paper else f" ({split})"),
                          ["data", f"DATASET={d.name}", f"PROFILE={prof.name}"]
                          + ([] if split.is_paper else [f"SPLIT={split}"]),
                          seconds, None, act=lambda restart: prepare(d, prof, split, project=project,
                                                                     progress=bars)))

    # The stages come from the variant registry: MTDnet (the principal variant) on the source,
    # then fine-tuned on each target and from scratch there (the headline numbers first); the
    # variants reading the source (aug, cross) fine-tuned from the source's MTDnet; every other
    # trained variant (cls, rnk, one registered later) trained on the source and fine-tuned from
    # its own source model.
    principal = variants.get_variant(PRINCIPAL)
    cross_domain = [v for v in variants.trained_variants() if v.source]
    single = [v for v in variants.trained_variants() if not v.source and v.key != principal.key]
    source_runs = {}
    if src is not None:
        data_step(src, 60)
        source_runs = {v.key: Run.create(src, v, prof, project=project) for v in [principal] + single}
    fine_tuned = {}
    for d in present:
        fine_tuned[d.name] = {v.key: Run.create(d, v, prof, project=project, tag=src.name, source_dataset=src)
                              for v in variants.trained_variants()} if src is not None else {}

    def fine_tune(run):
        # Each variant from the source's model of its own kind; aug and cross from MTDnet's.
        base = source_runs.get(run.variant.key, source_runs[principal.key])
        train_eval(run, chosen_model(base), select=False, redo=_source_changed(run, base))

    if src is not None:
        train_eval(source_runs[principal.key], weights, select=True)
    for d in present:
        data_step(d, 30)
        if src is not None:
            fine_tune(fine_tuned[d.name][principal.key])
        train_eval(Run.create(d, principal, prof, project=project), None, select=False)
    for d in present if src is not None else []:
        for v in (v.key for v in cross_domain):
            fine_tune(fine_tuned[d.name][v])
    if src is not None:
        for v in single:
            train_eval(source_runs[v.key], weights, select=True)
    for d in present if src is not None else []:
        for v in single:
            fine_tune(fine_tuned[d.name][v.key])
    # Numbers that generalise: the principal variant on random splits, each evaluated, then
    # the mean over them (the report's "mean of N random splits" rows).
    scored = variants.scored_with(principal.key)
    for d in present if splits else []:
        kinds = ([fine_tuned[d.name][principal.key]] if src is not None else []) + \
            [Run.create(d, principal, prof, project=project)]
        for split in splits:
            data_step(d, 30, split)
            for base in kinds:
                r = base.with_split(split)
                if r.tag:
                    fine_tune(r)
                else:
                    train_eval(r, None, select=False)
        for base in kinds:
            for v in scored:
                r = base.with_variant(v.key)
                names = ",".join(x.name for x in splits)
                steps.append(Step(f"{d.title}: {v.title} mean over {names}{_label(r)}",
                                  ["eval", *_common(r), f"VARIANT={v.key}", f"SPLITS={names}"], 5, None,
                                  act=lambda restart, r=r: E.evaluate_splits(r, splits, E.Evaluation(gpu=gpu),
                                                                             combine_only=True)))

    def report(restart):
        _, written = build_report(project.runs_dir)
        print("wrote " + ", ".join(project.rel(p) for p in written))
    steps.append(Step("Table 1: the report", ["report"], 10, None, act=report))
    return steps, notes


def describe(steps, notes):
    lines = [f"note: {n}" for n in notes]
    total = 0
    for k, s in enumerate(steps, 1):
        state = "done" if s.done and s.done() else f"~{hours_minutes(s.seconds)}"
        if state != "done":
            total += s.seconds
            why = s.redo and s.redo()
            state += f" ({why})" if why else ""
        lines.append(f"{k:2d}. {s.what}: {state}\n    {' '.join(shlex.quote(w) for w in s.command(resolve=False))}")
    lines.append(f"expected time of what is left on this machine: ~{hours_minutes(total)}")
    return "\n".join(lines)


def run_plan(steps, notes, log=print):
    """Run every step not yet done, in order, in this process; a failing step stops the plan."""
    for n in notes:
        log(f"note: {n}")
    for k, s in enumerate(steps, 1):
        if s.done and s.done():
            log(f"[{k}/{len(steps)}] {s.what}: done, skipped")
            continue
        words = s.command()
        log(f"[{k}/{len(steps)}] {s.what} (~{hours_minutes(s.seconds)}): {' '.join(shlex.quote(w) for w in words)}")
        t0 = time.time()
        try:
            s.run()
        except MtdnetError as e:
            raise MtdnetError(f"step {k} ({s.what}) failed: {e}\nFix it and run `make table1` again: finished "
                              "steps are kept and skipped") from None
        log(f"[{k}/{len(steps)}] {s.what}: {hours_minutes(time.time() - t0)}")
