"""`make eval`: single-shot CMC of a trained model on the prepared test images.

One evaluation = a spec.Run (dataset, variant, profile, split) and a protocol:
  data    the run's prepared data (data/<dataset>-<profile>-<split>/, what `make data` wrote)
  model   MODEL, else the newest snapshot of the run (trp ranks the mtdnet run's model by
          its triplet features)
  scores  pair-score variants: the 8-pass mean P(same) (higher is better);
          feature variants (trp / rnk): mirror-averaged squared Euclidean distance (lower is better)
  output  the variant's result folder (runs/<dataset>-<variant>-<profile>[-<split>][+overrides]/):
          cmc-<protocol>.json and a copy as cmc.json, cmc-<protocol>.png,
          ranked-<protocol>.png (5 probes and their top 10), scores-<protocol>.npz
          (the probe x gallery matrix: rows, cols = image indices, scores)

Protocols (mtdnet.trials): `paper` = the fixed gallery recorded in split.json
(one trial); `random` = `trials` draws of one gallery image per identity
(seeded), mean and spread. Several random<k> splits are combined by
`evaluate_splits` into runs/<dataset>-<variant>-<profile>-random-mean/.
"""
import dataclasses
import glob
import io
import os
import shutil
import tempfile
import time

import numpy as np

from core import MtdnetError, Split, variants
from core.fsutil import atomic_write_bytes, atomic_write_json, read_json
from core.locks import exclusive, running
from core.profiles import check_seed
from core.runs import DATA_FILES, MEAN as MEAN_SPLIT
from core.variants import SCORE_KINDS, get_variant
from data_prep.imagedb import ImageDB
from data_prep.prepared import load_prepared
from mtdnet import caffe_run, cmc, plots, scoring, trials
from mtdnet.caffe_speed import compute_record
from prototxt import generate

DEFAULT_TRIALS = 10
MAX_RANDOM_SPLITS = 100      # random<k> runs looked for when none are named
SELECT_CANDIDATES = 6        # snapshots scored on the validation identities by SELECT=1
GALLERY_RULES = {"first": "each identity's first camera-B image (the authors' fixed gallery)",
                 "all": "every camera-B image of each identity (the release's CUHK03 and CUHK01 feature "
                        "ranking)",
                 "cross_camera": "the protocol's gallery; each query ranked against it without its own "
                                 "identity's images from its own camera"}
# Beyond this many probe x gallery pairs the pair score (8 passes of the pair net each) is
# refused: CUHK03's 767/700 split has 7.5M.
PAIR_SCORE_LIMIT = 1_000_000
RANKED_PROBES = 5
RANKED_TOP = 10


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """How a run is evaluated (everything but the run itself)."""
    protocol: str = "paper"
    trials: int = DEFAULT_TRIALS       # random protocol: gallery draws
    seed: int = None                   # random protocol: seed of the draws (default: the profile's)
    model: str = None                  # a .caffemodel (default: the run's newest snapshot)
    scorer: str = "fast"               # pair scorer (scoring.PAIR_SCORERS)
    gpu: bool = False                  # score on the GPU (a CUDA build)
    on: str = "test"                   # the identities ranked: the split's "test" or "val" ones
    pictures: bool = True              # draw the CMC and ranked-gallery pictures

    def __post_init__(self):
        trials.check_protocol(self.protocol)
        if self.on not in ("test", "val"):
            raise MtdnetError(f"unknown identity set '{self.on}' to evaluate on; valid: test, val")
        if isinstance(self.trials, bool) or not isinstance(self.trials, int) or self.trials < 1:
            raise MtdnetError(f"TRIALS must be a positive integer, got {self.trials!r}")
        if self.scorer not in scoring.PAIR_SCORERS:
            raise MtdnetError(f"unknown scorer '{self.scorer}'; valid: {', '.join(scoring.PAIR_SCORERS)}")


def find_model(run, model=None):
    """(model path, run.json dict or {}) for the evaluation; clear errors when there is none."""
    info = read_json(run.info, "run description") if os.path.exists(run.info) else {}
    if model:
        if not os.path.isfile(model):
            raise MtdnetError(f"{model}: model not found")
        check_trained_as(run, model)
        return os.path.abspath(model), info
    found = caffe_run.latest_snapshot(run.snapshot_prefix, "caffemodel")
    if not found and info.get("model"):
        p = run.project.abs(info["model"])
        if os.path.isfile(p):
            found = p
    if not found:
        raise MtdnetError(
            f"{run.snapshot_prefix}_iter_*.caffemodel: no model to evaluate; train first "
            f"({run.commands()[0]}) or pass MODEL=<caffemodel>")
    return os.path.abspath(found), info


def training_record_of(model):
    """(path, run.json dict) of the training that wrote `model`: runs/<run>/snapshots/<m> or a
    published models/<run>/<m>; (None, {}) when there is none beside it."""
    here = os.path.dirname(os.path.abspath(model))
    for d in (here, os.path.dirname(here) if os.path.basename(here) == "snapshots" else None):
        path = d and os.path.join(d, "run.json")
        if path and os.path.isfile(path):
            return path, read_json(path, "run description")
    return None, {}


def check_trained_as(run, model, say=print):
    """MODEL= must be a model of the variant asked for (MTDnet's for MTDnet-trp): a cls model
    scored as trp ranks an untrained feature layer, an MTDnet model scored as cls is MTDnet's
    number under cls's name. Checked against the run.json beside the model."""
    record, info = training_record_of(model)
    trained = info.get("variant")
    want = run.variant.train_key
    if not trained:
        say(f"note: {model}: no run record beside it (run.json); cannot check that it is a "
            f"{get_variant(want).title} model, scored as {run.variant.title}")
        return
    if trained != want:
        fits = [v.key for v in variants.REGISTRY.values() if v.train_key == trained]
        raise MtdnetError(f"{model}: a {get_variant(trained).title} model ({record} says variant "
                          f"'{trained}'); VARIANT={run.variant.key} scores a {get_variant(want).title} "
                          f"model. Score this one with VARIANT={' or VARIANT='.join(fits)}")


def deploy_net(run, workdir):
    """(path, what to record): the committed deploy prototxt if it is current, else the
    generator's text written to workdir now."""
    kind = run.variant.deploy
    rel = generate.deploy_path(run.profile, kind)
    path = run.project.abs(rel)
    text = generate.deploy_text(kind, run.profile)
    if os.path.isfile(path):
        with open(path) as f:
            if f.read() == text:
                return path, rel
    tmp = os.path.join(workdir, f"{kind}.prototxt")
    with open(tmp, "w") as f:
        f.write(text)
    return tmp, f"{rel} (generated at evaluation)"


def make_trials(prepared, protocol, n_trials=DEFAULT_TRIALS, seed=0, on="test", gallery="first"):
    """The trials of `protocol` for a prepared split (split.json + images.json), ranking its
    `on` identities (test, or val for choosing settings and snapshots). gallery: the paper
    protocol's gallery per identity, "first" (its fixed camera-B image) or "all" (every
    camera-B image: the release's CUHK03 feature ranking)."""
    split, images = prepared.split, prepared.images
    if on != "test" and not split.get(on):
        raise MtdnetError(f"{prepared.dir}: the split has no {on} identities to evaluate on "
                          f"(a split with them: SPLIT=val, or CUHK03's paper split)")
    pid = {im["index"]: im["person_id"] for im in images}
    test = (split.get("eval") or {}).get(on)
    if test and test.get("cross_camera"):   # a protocol fixed image by image (CUHK03 767/700)
        if protocol != "paper":
            raise MtdnetError(f"split '{split.get('split')}' has its own fixed queries and gallery: "
                              "evaluate it with PROTOCOL=paper")
        cams = {im["index"]: im["camera_id"] for im in images}
        return [trials.cross_camera_trial([(i, pid[i]) for i in test["query"]],
                                          [(i, pid[i]) for i in test["gallery"]], cams)]
    if protocol == "paper" and test:
        # The fixed gallery exactly as data_prep recorded it.
        try:
            probes = [(i, pid[i]) for e in test["identities"] for i in e["probe"]]
            key = "gallery_all" if gallery == "all" else "gallery"
            gallery = [(i, pid[i]) for e in test["identities"] for i in e[key]]
            distractors = [(i, pid[i]) for i in test.get("distractors", [])]
        except KeyError as e:
            raise MtdnetError(f"{prepared.dir}/split.json: eval lists image {e}, which images.json "
                              f"does not have; re-run `make data`") from None
        return [trials.paper_trial(probes, gallery, distractors)]
    return trials.trials_from_records(
        images, protocol, n_trials=n_trials, seed=seed,
        probe_camera=split.get("probe_camera", 0), gallery_camera=split.get("gallery_camera", 1),
        distractor_ids=split.get("distractors", ()) if on == "test" else (),
        pool=not split.get("cameras_known", True), role=on)


class _Images:
    """Lazy per-position images for the ranked-gallery picture: the original file when it
    is on disk (its real aspect ratio), else the prepared LMDB image (BGR -> RGB)."""

    def __init__(self, indices, records, root, arrays):
        self.indices, self.records, self.root, self.arrays = indices, records, root, arrays

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, k):
        rec = self.records.get(int(self.indices[k]))
        if rec and self.root and rec.get("path"):
            p = os.path.join(self.root, rec["path"])
            if os.path.isfile(p):
                return p
        return np.ascontiguousarray(self.arrays[k].transpose(1, 2, 0)[..., ::-1])


def _npz_bytes(**arrays):
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def evaluate(run, ev=Evaluation(), progress=True, log=print, selected=None):
    """Score, evaluate and write one evaluation of a spec.Run; returns the cmc.json dict.
    `selected`: how the model was chosen (select_snapshot), recorded with the result.
    One evaluation of a result folder at a time; it may run while the model trains."""
    out = run.result_dir
    with exclusive(out + ".eval", "make eval", label=run.project.rel(out)):
        for stale in glob.glob(os.path.join(out, ".eval.partial-*")):   # left by a killed evaluation
            shutil.rmtree(stale, ignore_errors=True)
        return _evaluate(run, ev, progress, log, selected)


def _evaluate(run, ev, progress, log, selected):
    prof, project = run.profile, run.project
    prepared = load_prepared(run.data)
    seed = prof.seed if ev.seed is None else check_seed(ev.seed, "--seed")
    rule = run.dataset.spec.feature_gallery if run.variant.score == "feature" else "first"
    the_trials = make_trials(prepared, ev.protocol, ev.trials, seed, ev.on, rule)
    model, info = find_model(run, ev.model)
    trainer = running(run.dir)
    if trainer and not ev.model:
        log(f"note: {project.rel(run.dir)} is training now (pid {trainer}): this scores its newest snapshot, "
            f"iteration {caffe_run.snapshot_iter(model)}, not the finished model")
    rows, cols = trials.score_layout(the_trials)
    if the_trials[0].probe_cams is not None:
        rule = "cross_camera"
    if run.variant.score == "pair" and rows.size * cols.size > PAIR_SCORE_LIMIT:
        raise MtdnetError(f"{project.rel(prepared.dir)}: {rows.size} queries x {cols.size} gallery images = "
                          f"{rows.size * cols.size / 1e6:.1f}M pairs, each through the pair net 8 times: days "
                          f"on a CPU. Rank this split with triplet features: VARIANT=trp (the same MTDnet "
                          f"model) or rnk")
    out = run.result_dir
    kind = run.variant.score
    scoring.use_device(ev.gpu)
    # The model is checked against the net before anything slow happens.
    with tempfile.TemporaryDirectory(prefix="mtdnet-eval-") as tmp:
        deploy_path, deploy = deploy_net(run, tmp)
        net = scoring.load_net(deploy_path, model)
    log(f"evaluating {project.rel(model)} on the {ev.on} identities of {project.rel(prepared.dir)}: "
        f"{ev.protocol} protocol, "
        f"{len(the_trials)} trial(s), {rows.size} probe x {cols.size} gallery images, "
        f"score: {SCORE_KINDS[kind]}")

    db = ImageDB(prepared.lmdb)
    try:
        want = (3, prof.input_size, prof.input_size)
        if tuple(db.shape) != want:
            raise MtdnetError(f"{prepared.lmdb}: images are {tuple(db.shape)}, profile '{prof.name}' "
                              f"needs {want}; re-run `{run.data.make_command()}`")
        probes, gallery = db.images(rows), db.images(cols)
    finally:
        db.close()

    t0 = time.time()
    scores, higher = scoring.score_matrix(kind, net, probes, gallery, scorer=ev.scorer, progress=progress)
    seconds = time.time() - t0
    bad = ~np.isfinite(scores)
    if bad.any():
        raise MtdnetError(f"{model}: the model gives {int(bad.sum())} non-finite (NaN/inf) "
                          f"score(s) of {scores.size}; it is broken (a NaN loss during training?)")

    body = trials.evaluate_protocol(scores, rows, cols, the_trials, protocol=ev.protocol,
                                    higher_is_better=higher,
                                    seed=seed if ev.protocol == "random" else None)
    body["trial_seed"] = body.pop("seed")
    iters = caffe_run.snapshot_iter(model)
    if iters < 0:
        # run.json names its model relative to the project holding runs/.
        iters = info.get("iterations") if info.get("model") and \
            os.path.abspath(project.abs(info["model"])) == model else None
    body.update(
        run.identity(), on=ev.on,
        split_rule=prepared.split.get("rule"), substitute=prepared.split.get("substitute"),
        gallery_rule=(GALLERY_RULES[rule] if ev.protocol == "paper" else "one random camera-B image "
                      "per identity and trial"),
        model=project.rel(model), iterations=iters, seed=info.get("seed", prof.seed),
        init=info.get("init", "unknown (no run.json)"), init_kind=info.get("init_kind"), run=run.result_name,
        data=project.rel(prepared.dir), deploy=deploy, score_kind=kind, scoring=SCORE_KINDS[kind],
        scorer=ev.scorer if kind == "pair" else "features",
        scored=[int(rows.size), int(cols.size)], score_seconds=round(seconds, 1),
        evaluated=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        compute=compute_record(), train_compute=info.get("compute"))
    if selected is not None:
        body["selected"] = selected

    # Every file is written in a staging folder first and moved into place only when all of
    # them are (pictures, scores, then the numbers): a full disk replaces nothing.
    os.makedirs(out, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".eval.partial-", dir=out) as stage:
        staged = {}

        def place(final):
            staged[final] = os.path.join(stage, os.path.basename(final))
            return staged[final]
        try:
            if ev.pictures:
                pictures(body, run, ev, prepared, the_trials[0],
                         Scored(scores, rows, cols, probes, gallery, higher), place)
            atomic_write_bytes(place(run.result(ev.protocol, "scores", "npz", ev.on)),
                               _npz_bytes(scores=scores, rows=rows, cols=cols))
            atomic_write_json(place(run.result(ev.protocol, on=ev.on)), body)
            if ev.on == "test":
                atomic_write_json(place(run.latest_result()), body)
        except MtdnetError as e:   # name the file the user knows, not its staging copy
            msg = str(e)
            for final, path in staged.items():
                msg = msg.replace(path, final)
            raise MtdnetError(msg) from None
        for final, path in staged.items():
            os.replace(path, final)
    log(summary(body, project.rel(run.result(ev.protocol, on=ev.on))))
    return body


def candidates(snaps, n=SELECT_CANDIDATES):
    """At most n snapshots, evenly spaced over the run, the last one always among them."""
    if len(snaps) <= n:
        return list(snaps)
    idx = sorted({round(k * (len(snaps) - 1) / (n - 1)) for k in range(n)})
    return [snaps[i] for i in idx]


def select_snapshot(run, ev=Evaluation(), progress=True, log=print):
    """Evaluate the run's snapshots (SELECT_CANDIDATES of them, evenly spaced) on the split's
    validation identities, pick the best (rank-1, then mAP, then the later iteration), evaluate
    it on the test identities.

    Writes select-val.json (each snapshot's validation numbers and the choice) and
    select-val.png; returns the test result, which records the choice under "selected"."""
    split_json = os.path.join(run.data.dir, DATA_FILES.split)
    if os.path.isfile(split_json) and not read_json(split_json, DATA_FILES.split).get("val"):
        raise MtdnetError(f"{run.project.rel(run.data.dir)}: split '{run.split}' has no validation identities "
                          "to choose a snapshot on; leave SELECT out (the newest snapshot is scored), or use "
                          "a split with them (SPLIT=val, CUHK03's paper split)")
    snaps = candidates(caffe_run.snapshots(run.snapshot_prefix, "caffemodel"))
    if not snaps:
        raise MtdnetError(f"{run.snapshot_prefix}_iter_*.caffemodel: no snapshots to choose from; "
                          f"train first ({run.commands()[0]})")
    curve = []
    for k, snap in enumerate(snaps, 1):
        log(f"snapshot {k}/{len(snaps)}: {run.project.rel(snap)}")
        r = evaluate(run, dataclasses.replace(ev, on="val", model=snap, pictures=False), progress, log)
        curve.append({"iteration": caffe_run.snapshot_iter(snap), "model": run.project.rel(snap),
                      "rank1": r["rank1"], "rank5": r["rank5"], "mAP": r["mAP"]})
    best = max(curve, key=lambda c: (c["rank1"], c["mAP"], c["iteration"]))
    choice = {"by": "validation rank-1 (then mAP, then the later iteration)", "protocol": ev.protocol,
              "iteration": best["iteration"], "model": best["model"], "val_rank1": best["rank1"],
              "val_mAP": best["mAP"], "curve": curve, "variant": run.variant.key}
    atomic_write_json(run.selection, choice)
    plots.plot_selection(curve, best["iteration"], run.selection_png,
                         title=f"{run.result_name}: validation rank-1 per snapshot")
    log(f"chosen on validation: iteration {best['iteration']} (val rank-1 {best['rank1']:.2f}%)")
    return evaluate(run, dataclasses.replace(ev, on="test", model=run.project.abs(best["model"])), progress, log,
                    selected={k: v for k, v in choice.items() if k != "curve"})


@dataclasses.dataclass(frozen=True)
class Scored:
    """One scoring of a layout: the rows x cols score matrix, the images scored (arrays) and
    whether a higher score is the better match."""
    scores: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    probes: np.ndarray
    gallery: np.ndarray
    higher: bool


def pictures(body, run, ev, prepared, trial, scored, place=lambda p: p):
    """cmc-<protocol>.png and ranked-<protocol>.png (the first trial's ranked gallery);
    place(final path) -> where to write it."""
    protocol = body["protocol"]
    title = (f"{body['dataset']} {body['variant']} ({body['profile']} profile, {body['split']} split, "
             f"{protocol} protocol" + (f", {ev.on} identities)" if ev.on != "test" else ")"))
    plots.plot_cmc([(body["run"], body)], place(run.result(protocol, "cmc", "png", ev.on)), title=title)
    s = trials.trial_scores(scored.scores, scored.rows, scored.cols, trial)
    r = np.searchsorted(scored.rows, trial.probe)
    c = np.searchsorted(scored.cols, trial.gallery)
    records = {im["index"]: im for im in prepared.images}
    root = (prepared.manifest.get("inputs") or {}).get("root")
    if root and not os.path.isdir(root):
        root = None
    rows_ = plots.ranked_gallery_rows(
        s, trial.probe_ids, trial.gallery_ids,
        _Images(trial.probe, records, root, scored.probes[r]), _Images(trial.gallery, records, root,
                                                                        scored.gallery[c]),
        higher_is_better=scored.higher, n_rows=RANKED_PROBES, top=RANKED_TOP)
    # The picture is narrow (probe + top 10): a short title.
    plots.plot_ranked_gallery(rows_, place(run.result(protocol, "ranked", "png", ev.on)),
                              title=f"{body['run']}, {protocol}")


def summary(r, path=None):
    std = f" \u00b1 {r['rank1_std']:.2f}" if r.get("trials", 1) > 1 or r.get("splits") else ""
    where = f" -> {path}" if path else ""
    return (f"{r.get('run', '')}: {r['protocol']} protocol, {r['trials']} trial(s): rank-1 {r['rank1']:.2f}%"
            f"{std}, rank-5 {r['rank5']:.2f}%, rank-10 {r['rank10']:.2f}%, rank-20 {r['rank20']:.2f}%, "
            f"mAP {r['mAP']:.2f}% (gallery {r['gallery_size']}){where}")


# ---- several splits ---------------------------------------------------------------

def random_splits_present(run):
    """The random<k> splits of `run` (any split) whose training run exists, sorted by k."""
    return [s for s in Split("random").expand(MAX_RANDOM_SPLITS) if os.path.isdir(run.with_split(s).dir)]


def evaluate_splits(run, splits, ev=Evaluation(), combine_only=False, progress=True, log=print):
    """Evaluate `run` on each split (each with its own run's model) and write their mean to
    runs/<dataset>-<variant>-<profile>-random-mean/cmc-<protocol>.json (+ cmc.json, PNG)."""
    if ev.model:
        raise MtdnetError("--model names one model; several splits use each split's own run")
    splits = [Split.parse(s) for s in splits]
    if not splits:
        raise MtdnetError(f"{run.project.runs_dir}: no {run.with_split(Split('random', 0)).name[:-1]}<k> runs "
                          f"to combine; train them with `make train SPLIT=random<k>` (or name --splits)")
    for s in splits:
        if s.kind != "random" or s.index is None:
            raise MtdnetError(f"--splits takes random<k> names, got '{s}'")
    runs = [run.with_split(s) for s in splits]
    results = []
    for r in runs:
        if combine_only:
            results.append(read_json(r.result(ev.protocol), f"result of split {r.split} (evaluate it first)"))
        else:
            results.append(evaluate(r, ev, progress, log))
    names = [s.name for s in splits]
    body = cmc.combine_splits(results, names=names)

    def same(key):
        vals = [r.get(key) for r in results]
        return vals[0] if all(v == vals[0] for v in vals) else vals
    name = run.mean_result_name
    protocol = ev.protocol
    body.update(run.identity(), split=MEAN_SPLIT,
                split_names=names, run=name, model=[r.get("model") for r in results],
                iterations=same("iterations"), seed=same("seed"), init=same("init"),
                score_kind=same("score_kind"), scoring=same("scoring"), scorer=same("scorer"),
                gallery_size=same("gallery_size"), trial_seed=same("trial_seed"),
                evaluated=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    atomic_write_json(run.result(protocol, mean=True), body)
    atomic_write_json(run.latest_result(mean=True), body)
    plots.plot_cmc([(name, body)] + [(r["run"], r) for r in results],
                   run.result(protocol, "cmc", "png", mean=True),
                   title=f"{run.dataset.name} {run.variant.key} ({run.profile.name}): mean of {len(splits)} "
                         f"random splits, {protocol} protocol")
    # The first split's ranked gallery stands for the set.
    first = runs[0].result(protocol, "ranked", "png")
    if os.path.isfile(first):
        with open(first, "rb") as f:
            atomic_write_bytes(run.result(protocol, "ranked", "png", mean=True), f.read())
    log(summary(body, run.project.rel(run.result(protocol, mean=True))))
    return body
