"""`make eval`: single-shot CMC of a trained model on the prepared test images.

One evaluation = (dataset, variant, profile, split, protocol):
  data    <data dir>/<dataset>-<profile>-<split>/ (what `make data` wrote)
  model   MODEL, else the newest snapshot of runs/<dataset>-<train variant>-<profile>[-<split>]/
          (trp ranks the mtdnet run's model by its triplet features)
  scores  cls-type variants: the 8-pass mean P(same) (higher is better);
          trp / rnk: mirror-averaged squared Euclidean distance (lower is better)
  output  runs/<dataset>-<variant>-<profile>[-<split>]/ (trp: its own <dataset>-trp-... dir):
          cmc-<protocol>.json and a copy as cmc.json, cmc-<protocol>.png,
          ranked-<protocol>.png (5 probes and their top 10), scores-<protocol>.npz
          (the probe x gallery matrix: rows, cols = image indices, scores)

Protocols (mtdnet.protocols): `paper` = the fixed gallery recorded in
split.json (one trial); `random` = `trials` draws of one gallery image per
identity (seeded), mean and spread. Several random<k> splits are combined by
`evaluate_splits` into runs/<dataset>-<variant>-<profile>-random-mean/.
"""
import io
import os
import re
import shutil
import tempfile
import time

import numpy as np

from mtdnet import REPO_ROOT, MtdnetError
from mtdnet import caffe_run, protocols, scoring
from mtdnet.fsutil import atomic_write_bytes, atomic_write_json, read_json
from mtdnet.profiles import check_dataset, check_variant, get_profile

DEFAULT_TRIALS = 10
RANKED_PROBES = 5
RANKED_TOP = 10
MEAN_SUFFIX = "random-mean"
PAIR_VARIANTS = ("mtdnet", "cls", "aug", "cross")


def default_dirs(data_dir=None, runs_dir=None):
    return (os.path.abspath(data_dir or os.path.join(REPO_ROOT, "data")),
            os.path.abspath(runs_dir or os.path.join(REPO_ROOT, "runs")))


def score_kind(variant):
    return "pair" if check_variant(variant) in PAIR_VARIANTS else "feature"


def result_name(dataset, variant, profile, split="paper"):
    """The folder the results go to: the run's, except trp gets its own."""
    name = f"{dataset}-{variant}-{profile}"
    return name if split == "paper" else f"{name}-{split}"


def _rel(path):
    """Project-relative when inside the project (what run.json and cmc.json record)."""
    p = os.path.abspath(path)
    return os.path.relpath(p, REPO_ROOT) if p.startswith(REPO_ROOT + os.sep) else p


def find_model(dataset, variant, profile, split, runs_dir, model=None):
    """(model path, run.json dict or {}) for the evaluation; clear errors when there is none."""
    from prototxt import generate
    files = generate.files_for(dataset, variant, profile, split)
    run = os.path.join(runs_dir, generate.run_name(dataset, variant, profile, split))
    info_path = os.path.join(run, "run.json")
    info = read_json(info_path, "run description") if os.path.exists(info_path) else {}
    if model:
        if not os.path.isfile(model):
            raise MtdnetError(f"{model}: model not found")
        return os.path.abspath(model), info
    prefix = os.path.join(run, "snapshots", os.path.basename(files["snapshot_prefix"]))
    found = caffe_run.latest_snapshot(prefix, "caffemodel")
    if not found and info.get("model"):
        for base in (REPO_ROOT, os.path.dirname(runs_dir)):
            p = os.path.join(base, info["model"])
            if os.path.isfile(p):
                found = p
                break
    if not found:
        tv = generate.train_variant(variant)
        raise MtdnetError(
            f"{prefix}_iter_*.caffemodel: no model to evaluate; train first (make train DATASET={dataset} "
            f"VARIANT={tv} PROFILE={profile}" + (f" SPLIT={split}" if split != "paper" else "")
            + ") or pass MODEL=<caffemodel>")
    return os.path.abspath(found), info


def deploy_net(variant, profile, workdir):
    """(path, what to record): the generated deploy prototxt if `make prototxt` wrote it
    and it is current, else the generator's text written to workdir now."""
    from prototxt import generate
    kind = generate.SCORE_NET[variant]
    path = os.path.join(REPO_ROOT, "prototxt", profile, f"{kind}.prototxt")
    text = generate.deploy_text(kind, profile)
    if os.path.isfile(path):
        with open(path) as f:
            if f.read() == text:
                return path, _rel(path)
    tmp = os.path.join(workdir, f"{kind}.prototxt")
    with open(tmp, "w") as f:
        f.write(text)
    return tmp, f"{_rel(path)} (generated at evaluation: the file was missing or out of date)"


def make_trials(prepared, protocol, n_trials=DEFAULT_TRIALS, seed=0):
    """The trials of `protocol` for a prepared split (split.json + images.json)."""
    protocols.check_protocol(protocol)
    split, images = prepared.split, prepared.images
    pid = {im["index"]: im["person_id"] for im in images}
    test = (split.get("eval") or {}).get("test")
    if protocol == "paper" and test:
        # The fixed gallery exactly as data_prep recorded it.
        try:
            probes = [(i, pid[i]) for e in test["identities"] for i in e["probe"]]
            gallery = [(i, pid[i]) for e in test["identities"] for i in e["gallery"]]
            distractors = [(i, pid[i]) for i in test.get("distractors", [])]
        except KeyError as e:
            raise MtdnetError(f"{prepared.dir}/split.json: eval lists image {e}, which images.json "
                              f"does not have; re-run `make data`") from None
        return [protocols.paper_trial(probes, gallery, distractors)]
    return protocols.trials_from_records(
        images, protocol, n_trials=n_trials, seed=seed,
        probe_camera=split.get("probe_camera", 0), gallery_camera=split.get("gallery_camera", 1),
        distractor_ids=split.get("distractors", ()), pool=not split.get("cameras_known", True))


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


def evaluate(dataset, variant, profile, split="paper", protocol="paper", trials=DEFAULT_TRIALS,
             model=None, data_dir=None, runs_dir=None, scorer="fast", seed=None, progress=True,
             log=print):
    """Score, evaluate and write one evaluation; returns the cmc.json dict."""
    from data_prep import load_prepared
    from prototxt import generate
    check_dataset(dataset)
    check_variant(variant)
    prof = get_profile(profile)
    protocols.check_protocol(protocol)
    generate.check_split(split)
    generate.files_for(dataset, variant, profile, split)       # variant/dataset combination
    if not isinstance(trials, int) or trials < 1:
        raise MtdnetError(f"TRIALS must be a positive integer, got {trials!r}")
    if scorer not in scoring.PAIR_SCORERS:
        raise MtdnetError(f"unknown scorer '{scorer}'; valid: {', '.join(scoring.PAIR_SCORERS)}")
    data_dir, runs_dir = default_dirs(data_dir, runs_dir)
    prepared = load_prepared(generate.data_dir(dataset, profile, split, data_dir))
    model, info = find_model(dataset, variant, profile, split, runs_dir, model)
    seed = prof.seed if seed is None else int(seed)
    the_trials = make_trials(prepared, protocol, trials, seed)
    rows, cols = protocols.score_layout(the_trials)
    out = os.path.join(runs_dir, result_name(dataset, variant, profile, split))
    kind = score_kind(variant)
    # The model is checked against the net before anything slow happens.
    with tempfile.TemporaryDirectory(prefix="mtdnet-eval-") as tmp:
        deploy_path, deploy = deploy_net(variant, profile, tmp)
        net = scoring.load_net(deploy_path, model)
    log(f"evaluating {_rel(model)} on {_rel(prepared.dir)}: {protocol} protocol, "
        f"{len(the_trials)} trial(s), {rows.size} probe x {cols.size} gallery images, "
        f"score: {scoring.SCORE_KINDS[kind]}")

    from data_prep.imagedb import ImageDB
    db = ImageDB(prepared.lmdb)
    try:
        want = (3, prof.input_size, prof.input_size)
        if tuple(db.shape) != want:
            raise MtdnetError(f"{prepared.lmdb}: images are {tuple(db.shape)}, profile '{profile}' "
                              f"needs {want}; re-run `make data PROFILE={profile}`")
        probes, gallery = db.images(rows), db.images(cols)
    finally:
        db.close()

    t0 = time.time()
    scores, higher = scoring.score_matrix(kind, net, probes, gallery, scorer=scorer, progress=progress)
    seconds = time.time() - t0
    bad = ~np.isfinite(scores)
    if bad.any():
        raise MtdnetError(f"{model}: the model gives {int(bad.sum())} non-finite (NaN/inf) "
                          f"score(s) of {scores.size}; it is broken (a NaN loss during training?)")

    body = protocols.evaluate_protocol(scores, rows, cols, the_trials, protocol=protocol,
                                       higher_is_better=higher,
                                       seed=seed if protocol == "random" else None)
    body["trial_seed"] = body.pop("seed")
    iters = caffe_run.snapshot_iter(model)
    if iters < 0:
        # run.json names its model relative to the project holding runs/.
        iters = info.get("iterations") if info.get("model") and \
            os.path.abspath(os.path.join(os.path.dirname(runs_dir), info["model"])) == model else None
    body.update(
        dataset=dataset, variant=variant, profile=profile, split=split,
        model=_rel(model), iterations=iters, seed=info.get("seed", prof.seed),
        init=info.get("init", "unknown (no run.json)"), run=os.path.basename(out),
        data=_rel(prepared.dir), deploy=deploy, score_kind=kind, scoring=scoring.SCORE_KINDS[kind],
        scorer=scorer if kind == "pair" else "features",
        scored=[int(rows.size), int(cols.size)], score_seconds=round(seconds, 1),
        evaluated=time.strftime("%Y-%m-%dT%H:%M:%S%z"))

    atomic_write_bytes(os.path.join(out, f"scores-{protocol}.npz"),
                       _npz_bytes(scores=scores, rows=rows, cols=cols))
    atomic_write_json(os.path.join(out, f"cmc-{protocol}.json"), body)
    atomic_write_json(os.path.join(out, "cmc.json"), body)
    pictures(body, out, prepared, the_trials[0], scores, rows, cols, probes, gallery, higher)
    log(summary(body, os.path.join(out, f"cmc-{protocol}.json")))
    return body


def pictures(body, out, prepared, trial, scores, rows, cols, probes, gallery, higher):
    """cmc-<protocol>.png and ranked-<protocol>.png (the first trial's ranked gallery)."""
    from mtdnet import plots
    protocol = body["protocol"]
    title = (f"{body['dataset']} {body['variant']} ({body['profile']} profile, {body['split']} split, "
             f"{protocol} protocol)")
    plots.plot_cmc([(body["run"], body)], os.path.join(out, f"cmc-{protocol}.png"), title=title)
    s = protocols.trial_scores(scores, rows, cols, trial)
    r = np.searchsorted(rows, trial.probe)
    c = np.searchsorted(cols, trial.gallery)
    records = {im["index"]: im for im in prepared.images}
    root = (prepared.manifest.get("inputs") or {}).get("root")
    if root and not os.path.isdir(root):
        root = None
    rows_ = plots.ranked_gallery_rows(
        s, trial.probe_ids, trial.gallery_ids,
        _Images(trial.probe, records, root, probes[r]), _Images(trial.gallery, records, root, gallery[c]),
        higher_is_better=higher, n_rows=RANKED_PROBES, top=RANKED_TOP)
    # The picture is narrow (probe + top 10): a short title.
    plots.plot_ranked_gallery(rows_, os.path.join(out, f"ranked-{protocol}.png"),
                              title=f"{body['run']}, {protocol}")


def summary(r, path=None):
    std = f" \u00b1 {r['rank1_std']:.2f}" if r.get("trials", 1) > 1 or r.get("splits") else ""
    where = f" -> {_rel(path)}" if path else ""
    return (f"{r.get('run', '')}: {r['protocol']} protocol, {r['trials']} trial(s): rank-1 {r['rank1']:.2f}%"
            f"{std}, rank-5 {r['rank5']:.2f}%, rank-10 {r['rank10']:.2f}%, rank-20 {r['rank20']:.2f}%, "
            f"mAP {r['mAP']:.2f}% (gallery {r['gallery_size']}){where}")


# ---- several splits ---------------------------------------------------------------

def random_splits_present(dataset, variant, profile, runs_dir):
    """The random<k> splits whose training run exists under runs_dir, sorted by k."""
    from prototxt import generate
    base = generate.run_name(dataset, variant, profile, "paper") + "-"
    ks = []
    for name in os.listdir(runs_dir) if os.path.isdir(runs_dir) else []:
        m = re.fullmatch(re.escape(base) + r"random(\d+)", name)
        if m:
            ks.append(int(m.group(1)))
    return [f"random{k}" for k in sorted(ks)]


def evaluate_splits(dataset, variant, profile, splits, protocol="paper", trials=DEFAULT_TRIALS,
                    data_dir=None, runs_dir=None, scorer="fast", seed=None, combine_only=False,
                    progress=True, log=print):
    """Evaluate each split (each with its own run's model) and write their mean to
    runs/<dataset>-<variant>-<profile>-random-mean/cmc-<protocol>.json (+ cmc.json, PNG)."""
    from mtdnet import evaluation, plots
    data_dir, runs_dir = default_dirs(data_dir, runs_dir)
    splits = list(splits)
    if not splits:
        raise MtdnetError(f"{runs_dir}: no {dataset}-{variant}-{profile}-random<k> runs to combine; "
                          f"train them with `make train SPLIT=random<k>` (or name --splits)")
    for s in splits:
        if not re.fullmatch(r"random\d+", s):
            raise MtdnetError(f"--splits takes random<k> names, got '{s}'")
    results = []
    for s in splits:
        if combine_only:
            p = os.path.join(runs_dir, result_name(dataset, variant, profile, s), f"cmc-{protocol}.json")
            results.append(read_json(p, f"result of split {s} (evaluate it first)"))
        else:
            results.append(evaluate(dataset, variant, profile, s, protocol, trials, None, data_dir,
                                    runs_dir, scorer, seed, progress, log))
    body = evaluation.combine_splits(results, names=splits)

    def same(key):
        vals = [r.get(key) for r in results]
        return vals[0] if all(v == vals[0] for v in vals) else vals
    name = result_name(dataset, variant, profile, MEAN_SUFFIX)
    body.update(dataset=dataset, variant=variant, profile=profile, split=MEAN_SUFFIX,
                split_names=splits, run=name, model=[r.get("model") for r in results],
                iterations=same("iterations"), seed=same("seed"), init=same("init"),
                score_kind=same("score_kind"), scoring=same("scoring"), scorer=same("scorer"),
                gallery_size=same("gallery_size"), trial_seed=same("trial_seed"),
                evaluated=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    out = os.path.join(runs_dir, name)
    atomic_write_json(os.path.join(out, f"cmc-{protocol}.json"), body)
    atomic_write_json(os.path.join(out, "cmc.json"), body)
    plots.plot_cmc([(name, body)] + [(r["run"], r) for r in results],
                   os.path.join(out, f"cmc-{protocol}.png"),
                   title=f"{dataset} {variant} ({profile}): mean of {len(splits)} random splits, "
                         f"{protocol} protocol")
    # The first split's ranked gallery stands for the set.
    first = os.path.join(runs_dir, result_name(dataset, variant, profile, splits[0]),
                         f"ranked-{protocol}.png")
    if os.path.isfile(first):
        tmp = os.path.join(out, f".ranked-{protocol}.png.tmp")
        shutil.copyfile(first, tmp)
        os.replace(tmp, os.path.join(out, f"ranked-{protocol}.png"))
    log(summary(body, os.path.join(out, f"cmc-{protocol}.json")))
    return body
