"""The Table 1 report (`make report`): our CMC numbers beside the paper's, in its layout.

Reads every runs/<run>/cmc-<protocol>.json that `make eval` wrote (except the
tuning split `val`'s) and writes
  runs/report.md                  the table (paper rows and ours), with a note per number
                                  (protocol, split, profile, initialisation, iterations)
  runs/report_cmc.png             every result's CMC curve (random splits: their mean's)
  runs/report_cmc_<dataset>.png   the dataset's CMC curves
  runs/report_ranked_<dataset>.png  the ranked gallery of the dataset's best paper-split result (rank-1)
"""
import dataclasses
import glob
import json
import os
import tempfile

from core import PAPER, DataSpec, MtdnetError, Project, Run, Split, datasets, variants
from core.runs import MEAN
from core.fsutil import atomic_dir, atomic_write_bytes, atomic_write_text, read_json, require_replaceable
from data_prep.datasets import default_root
from mtdnet import plots

# Table 1 (the paper's rows, titles, types, dataset columns) comes from the variant
# and dataset registries (core/variants.py, core/datasets.py).
RANKS = ("rank1", "rank5", "rank10")
# A result's row by how its weights started (run.json / cmc.json init_kind; tagged runs are
# "pre-trained on <tag>").
ORIGINS = {"scratch": "from scratch", "imagenet": "ImageNet", "finetune": "fine-tuned",
           "two_copies": "fine-tuned (both copies)"}
REQUIRED = ("dataset", "variant", "profile", "protocol", "rank1", "rank5", "rank10", "mAP", "cmc")
DASH = "–"


def find_results(runs_dir):
    """Every runs_dir/<run>/cmc-<protocol>.json as a dict, plus `run` and `path`."""
    out = []
    for path in sorted(glob.glob(os.path.join(runs_dir, "*", "cmc-*.json"))):
        try:
            with open(path) as f:
                r = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise MtdnetError(f"{path}: cannot read the result ({e}); re-run `make eval` for it")
        lacking = [k for k in REQUIRED if k not in r]
        if lacking:
            raise MtdnetError(f"{path}: not a `make eval` result (lacks {', '.join(lacking)})")
        if r.get("on", "test") != "test":
            continue       # validation numbers choose settings and snapshots; they are not results
        try:
            split = result_split(r)
        except MtdnetError as e:
            raise MtdnetError(f"{path}: {e}") from None
        if split is not None and split.is_tuning:
            continue       # tuning numbers on held-out training identities, not a test result
        r["run"] = os.path.basename(os.path.dirname(path))
        r["path"] = path
        out.append(r)
    return out


def result_split(r):
    """The Split a result was scored on; None for a mean over random splits."""
    name = r.get("split") or PAPER.name
    return None if name == MEAN else Split.parse(name)


def split_label(r):
    if r.get("splits"):
        return f"mean of {r['splits']} random splits"
    return f"{r.get('split', 'paper')} split"


def origin(r):
    """Where the trained weights started: what separates Table 1's pre-trained rows from
    the from-scratch baselines."""
    if r.get("tag"):
        return f"pre-trained on {dataset_title(r['tag'])}"
    kind = r.get("init_kind")
    if kind in ORIGINS:
        return ORIGINS[kind]
    init = r.get("init") or ""   # a result recorded before init_kind: its description's first word
    return "from scratch" if init.startswith("scratch") else "ImageNet" if init.startswith("ImageNet") else init


def training_record(r, runs_dir):
    """(Run, run.json) of the training behind a result, or (None, {}) where it is not under runs_dir."""
    try:
        run = Run.create(r["dataset"], r["variant"], r["profile"], r.get("split") or "paper",
                         overrides=sorted((r.get("overrides") or {}).items()), tag=r.get("tag") or "",
                         project=Project(runs_dir=runs_dir))
        info = read_json(run.info, "run description")
    except (MtdnetError, KeyError):
        return None, {}
    if run.train_variant.source:
        split = Split.parse(info.get("source_split", "paper"))
        src = info.get("source") or _source_read(info, run.profile, split)
        if src:
            run = dataclasses.replace(run, source_dataset=datasets.get_dataset(src), source_split=split)
    return run, info


def _source_read(info, profile, split):
    """The source dataset of an aug / cross run whose run.json predates its `source` field:
    the one whose prepared-data folder the run read."""
    read = [os.path.basename(d) for d in (info.get("data") or [])[1:]]
    return next((name for name in datasets.names()
                 if os.path.basename(DataSpec(datasets.get_dataset(name), profile, split).dir) in read), None)


def reproduce(r, run, info):
    """The make commands that reproduce a result (train, then eval; MODEL= where the result
    scored a model that is not one of the run's own snapshots)."""
    model = r.get("model")
    # <run>/snapshots/<file>: the run's own (paths are relative to the project that evaluated).
    parts = os.path.normpath(model).split(os.sep)[-3:-1] if model else []
    own = not model or model == info.get("model") or parts == [run.name, "snapshots"]
    weights = info.get("weights")
    return run.commands(iters=info.get("iterations"), weights=weights and run.project.abs(weights),
                        select=bool(r.get("selected")), model=None if own else model)


def label(r):
    """What a number means: dataset, protocol, split, profile, initialisation, iterations."""
    bits = [dataset_title(r["dataset"]), f"protocol {r['protocol']}"]
    n = r.get("trials", 1)
    if n > 1:
        bits.append(f"{n} trials")
    profile = r["profile"] + "".join(f", {k}={v}" for k, v in sorted((r.get("overrides") or {}).items()))
    bits += [split_label(r), f"profile {profile}", f"init {_shown(r.get('init', 'unknown'))}",
             f"{_value(r.get('iterations'))} iterations", f"seed {_value(r.get('seed'))}"]
    if r.get("selected"):
        bits.append(f"snapshot chosen on validation rank-1 ({r['selected']['val_rank1']:.2f})")
    if r.get("substitute"):
        bits.append(f"split: {r['substitute']}")
    trained = compute_text(r.get("train_compute"))
    if trained:
        bits.append(f"trained with {trained}")
    return ", ".join(bits)


def compute_text(parts):
    """'Caffe fast path (oneDNN convolutions), 2 thread(s)' of run.json's compute records (one
    per resumed part), or ''. Records from before the conv field name no engine."""
    said = []
    for c in parts or []:
        engine = {"onednn": " (oneDNN convolutions)", "im2col": " (im2col convolutions)"}.get(c.get("conv"), "")
        path = f"fast path{engine}" if c.get("fast") else "stock code"
        text = f"Caffe {path}, {c.get('threads')} thread(s)"
        if text not in said:
            said.append(text)
    return " then ".join(said)


def _shown(text):
    """A recorded description with this checkout's absolute paths made project-relative."""
    return text.replace(Project().root + os.sep, "")


def dataset_key(name):
    try:
        return datasets.get_dataset(name).key
    except MtdnetError:
        return name


def dataset_title(name):
    try:
        return datasets.get_dataset(name).title
    except MtdnetError:
        return name


def setting(r):
    """What makes two numbers comparable within one table row."""
    tag = ",".join(f"{k}={v}" for k, v in sorted((r.get("overrides") or {}).items()))
    return (origin(r), r["protocol"], split_label(r), r["profile"] + (f" +{tag}" if tag else ""))


def _value(v):
    if isinstance(v, list):
        return "/".join(str(x) for x in v)
    return "unknown" if v is None else str(v)


def _fmt(x):
    return DASH if x is None else f"{x:.2f}"


def table1_markdown(results, records=None):
    """Markdown: Table 1's columns (rank 1/5/10 per dataset, + synthetic if present),
    each variant's paper row followed by our rows, one per (starting point, protocol, split,
    profile); every number of ours carries a note [k] listed under the table.
    records: {result path: (Run, run.json)} of the trainings (training_record), for wall
    times and the reproducing commands."""
    records = records or {}
    columns = datasets.table1_datasets()
    columns += sorted({r["dataset"] for r in results} - set(columns))
    head = "| Method | Type | Source | " + " | ".join(
        f"{dataset_title(d)} r=1 | r=5 | r=10" for d in columns) + " |"
    lines = [head, "|---|---|---|" + "---:|" * (3 * len(columns))]
    notes = []
    rows = variants.table1_rows()
    rows += [variants.get_variant(k) for k in sorted({r["variant"] for r in results} - {v.key for v in rows})]
    for v in rows:
        cells = []
        paper = v.paper_row()
        for d in columns:
            cells += [_fmt(x) for x in paper.get(d, (None,) * 3)]
        lines.append(f"| {v.title} | {v.table_type} | paper | " + " | ".join(cells) + " |")
        ours = [r for r in results if r["variant"] == v.key]
        for key in sorted({setting(r) for r in ours}):
            cells = []
            for d in columns:
                rs = [r for r in ours if r["dataset"] == d and setting(r) == key]
                if not rs:
                    cells += [DASH] * 3
                    continue
                r = rs[-1]
                notes.append(r)
                cells += [_fmt(r[k]) + (f" [{len(notes)}]" if k == "rank1" else "") for k in RANKS]
            start, protocol, split, profile = key
            lines.append(f"| {v.title} | {v.table_type} | ours: {start}, {protocol} protocol, {split}, "
                         f"{profile} profile | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Paper: ImageNet conv1/conv2 initialisation, CUHK03 pre-training for the small sets, "
                 "the authors' fixed galleries (README, Evaluation: Protocols). Ours: as noted per number. "
                 "Percent; single-shot CMC; ties count against the true match. A rerun of one command with "
                 "another thread count or code path sums floats in another order and has moved a rank-1 by "
                 "one probe (0.32 on VIPeR, 0.5 on CUHK01): each number says what it was trained with "
                 "where its run recorded it.")
    lines.append("")
    for i, r in enumerate(notes, 1):
        std = f", rank-1 std {r['rank1_std']:.2f}" if (r.get("trials", 1) > 1 or r.get("splits")) \
            and r.get("rank1_std") is not None else ""
        run, info = records.get(r["path"], (None, {}))
        wall = ""
        if info.get("train_seconds") is not None:
            wall = f"; wall time: training {hours_minutes(info['train_seconds'])}"
            if r.get("score_seconds") is not None:
                wall += f", scoring {hours_minutes(r['score_seconds'])}"
        carried = "; carried over from this page's previous version" if r.get("kept") else ""
        lines.append(f"[{i}] {label(r)}; mAP {r['mAP']:.2f}{std}; gallery {_value(r.get('gallery_size'))}"
                     f"{wall}{carried} (`{r['run']}/{os.path.basename(r['path'])}`)  ")
        if run is not None:
            train, ev = reproduce(r, run, info)
            lines.append(f"    reproduce: `{train}` then `{ev}`  ")
    return "\n".join(lines) + "\n"


def hours_minutes(seconds):
    """'2 h 05 min' / '7 min' / '40 s': wall times in plans and reports."""
    if seconds < 59.5:
        return f"{max(seconds, 0):.0f} s"
    m = int(round(seconds / 60))
    return f"{m // 60} h {m % 60:02d} min" if m >= 60 else f"{m} min"


def best_per_dataset(results):
    """{dataset: the result with the highest rank-1 that has a ranked-gallery picture}, one on
    the paper split where there is one (the split Table 1 compares on; a random split's
    number is not comparable with it)."""
    def key(r):
        split = result_split(r)
        return (split is not None and split.is_paper, r["rank1"])
    best = {}
    for r in results:
        png = os.path.join(os.path.dirname(r["path"]), f"ranked-{r['protocol']}.png")
        if not os.path.isfile(png):
            continue
        if r["dataset"] not in best or key(r) > key(best[r["dataset"]][0]):
            best[r["dataset"]] = (r, png)
    return best


HEADING = "# MTDnet reproduction: Table 1\n"
KEEP_YOURS = "Move your own files out of it, or give --out another folder (a new one, or one `make report` wrote)."


def _report_md_ours(path):
    try:
        with open(path, errors="replace") as f:
            return f.readline() == HEADING
    except OSError:
        return False


def _report_file(rel):
    """A file name a report writes (report.md, report_*.png, <run>/cmc-*.json, <run>/run.json,
    <run>/ranked-*.png)."""
    parts = rel.split(os.sep)
    if len(parts) == 1:
        return rel == "report.md" or (rel.startswith("report_") and rel.endswith(".png"))
    return len(parts) == 2 and (parts[1] == "run.json" or (parts[1].startswith("cmc-") and parts[1].endswith(".json"))
                                or (parts[1].startswith("ranked-") and parts[1].endswith(".png")))


def _report_folder_ours(folder):
    """A folder `make report --out` wrote: its report.md and only files of the report's kinds."""
    if not _report_md_ours(os.path.join(folder, "report.md")):
        return False
    for r, _, fs in os.walk(folder):
        for f in fs:
            if not _report_file(os.path.relpath(os.path.join(r, f), folder)):
                return False
    return True


def _is_png(path):
    with open(path, "rb") as f:
        return f.read(8) == b"\x89PNG\r\n\x1a\n"


def _check_replaceable_in_runs(runs_dir, names):
    """The report files written into the runs folder replace only the report's own files."""
    md = os.path.join(runs_dir, "report.md")
    md_ours = _report_md_ours(md)
    for name in names:
        path = os.path.join(runs_dir, name)
        if not os.path.lexists(path):
            continue
        # A picture of an older report (drawn before PNGs carried their Software text) goes
        # with its report.md.
        ours = md_ours if name == "report.md" else (plots.made_here(path) or (md_ours and _is_png(path)))
        if not ours or not os.path.isfile(path):
            raise MtdnetError(f"{path}: exists and was not written by `make report`; refusing to replace "
                              f"it. {KEEP_YOURS}")


def _result_key(r):
    """(run, cmc file name): one result, wherever its folder is."""
    return r["run"], os.path.basename(r["path"])


def kept_results(out_dir, runs_dir, results, warn=None):
    """The results a report folder (checked by the caller) already cites that runs_dir lacks
    (another machine's runs, or runs since removed), each with its copied training record:
    ([result], {path: (Run, run.json)}). One whose training runs_dir holds in another state
    (retrained or resumed since) is stale and left out, with a warning naming it."""
    have = {_result_key(r) for r in results}
    now = {}       # run.json under runs_dir per training (MTDnet-trp's results share MTDnet's)
    here = Project(runs_dir=runs_dir)
    kept, records = [], {}
    for r in find_results(out_dir):
        if _result_key(r) in have:
            continue
        run, info = training_record(r, out_dir)
        if run is not None:
            path = dataclasses.replace(run, project=here).info
            if run.name not in now:
                now[run.name] = read_json(path, "run description") if os.path.isfile(path) else None
            if now[run.name] is not None and now[run.name] != info:
                if warn:
                    warn(f"left out {'/'.join(_result_key(r))} of {out_dir}: its training {path} has "
                         f"changed since (evaluate it again with `make eval`)")
                continue
        r["kept"] = True
        kept.append(r)
        records[r["path"]] = (run, info)
    return kept, records


def build_report(runs_dir, out_dir=None, keep=True, warn=None):
    """Write report.md, report_cmc.png, report_ranked_<dataset>.png under out_dir (default:
    runs_dir). Into another folder (a docs page) it also copies what the notes cite: each
    result's cmc JSON and its training's run.json, as <run>/<file>, and the ranked galleries it
    shows, as <run>/ranked-<protocol>.png; that folder is replaced as a whole, and only when it
    is new, empty or a report folder. With keep, the results such a folder already cites that
    runs_dir lacks stay in it (kept_results), so a machine holding only some of the runs can
    update the page. Nothing is replaced until every file is drawn, and never a file the report
    did not write. warn(message) hears of results left out.

    Returns (markdown, [written paths])."""
    if not os.path.isdir(runs_dir):
        raise MtdnetError(f"{runs_dir}: runs folder not found (--runs-dir)")
    results = find_results(runs_dir)
    out_dir = out_dir or runs_dir
    elsewhere = os.path.realpath(out_dir) != os.path.realpath(runs_dir)
    guard = (_report_folder_ours, "a report", KEEP_YOURS)
    if elsewhere:
        require_replaceable(out_dir, *guard)
    records = {r["path"]: training_record(r, runs_dir) for r in results}
    if elsewhere and keep:
        kept, kept_records = kept_results(out_dir, runs_dir, results, warn)
        results += kept
        records.update(kept_records)
    if not results:
        raise MtdnetError(f"{runs_dir}: no cmc-<protocol>.json results; run `make eval` first")
    if elsewhere:
        with atomic_dir(out_dir, guard=guard) as tmp:
            md, names = _draw_report(results, records, tmp, runs_dir, copies=True)
    else:
        with tempfile.TemporaryDirectory(prefix=".report.partial-", dir=runs_dir) as stage:
            md, names = _draw_report(results, records, stage, runs_dir, copies=False)
            _check_replaceable_in_runs(runs_dir, names)
            for name in sorted(names, key=lambda n: n == "report.md"):   # report.md last
                os.replace(os.path.join(stage, name), os.path.join(runs_dir, name))
    return md, [os.path.join(out_dir, n) for n in names]


def _one_random_split(r):
    """A result of one random<k> split (not their mean)."""
    split = result_split(r)
    return split is not None and split.kind == "random" and split.index is not None


def _draw_report(results, records, out_dir, runs_dir, copies):
    """The report's files under out_dir (a staging folder); returns (markdown, [relative names]),
    report.md first."""
    written = []
    # Each random split's own curve is in the table only: their mean stands for them, and
    # dozens of curves would hide the rest.
    drawn = [r for r in results if not _one_random_split(r)]
    cmc_png = os.path.join(out_dir, "report_cmc.png")
    plots.plot_cmc([(f"{r['run']}", r) for r in drawn], cmc_png, title="CMC of every evaluated run")
    written.append(cmc_png)
    curves = []
    for d in sorted({r["dataset"] for r in drawn}):
        png = os.path.join(out_dir, f"report_cmc_{d}.png")
        plots.plot_cmc([(r["run"], r) for r in drawn if r["dataset"] == d], png,
                       title=f"{dataset_title(d)}: CMC of our runs")
        written.append(png)
        curves.append(f"- {dataset_title(d)}: `{os.path.basename(png)}`")
    lines = []
    for d, (r, png) in sorted(best_per_dataset(results).items()):
        dst = os.path.join(out_dir, f"report_ranked_{d}.png")
        written.append(_copy(png, dst))
        if copies:      # beside its result too, so that a later report keeping the result can show it
            written.append(_copy(png, os.path.join(out_dir, r["run"], os.path.basename(png))))
        lines.append(f"- {dataset_title(d)}: `{os.path.basename(dst)}` "
                     f"(from `{r['run']}`, {r['protocol']} protocol, rank-1 {r['rank1']:.2f})")
    if copies:
        for r in results:
            written.append(_copy(r["path"], os.path.join(out_dir, r["run"], os.path.basename(r["path"]))))
        # Each training's record once (MTDnet-trp's is MTDnet's).
        trainings = {run.name: run for run, _ in records.values() if run is not None}
        for name, run in sorted(trainings.items()):
            written.append(_copy(run.info, os.path.join(out_dir, name, "run.json")))
    absent = [dataset_title(d) for d in datasets.table1_datasets()
              if not os.path.isdir(default_root(d)) and d not in {dataset_key(r["dataset"]) for r in results}]
    missing = (f"Not available on this machine (no raw data): {', '.join(absent)}; their columns hold the "
               f"paper's numbers only.\n\n" if absent else "")
    md = (HEADING + "\n" + missing + table1_markdown(results, records)
          + "\nCMC curves per dataset (all of them together: `report_cmc.png`):\n\n" + "\n".join(curves)
          + "\n\nRanked galleries (probe and top 10, true match framed in green), best rank-1 per "
            "dataset:\n\n" + "\n".join(lines) + "\n")
    path = os.path.join(out_dir, "report.md")
    atomic_write_text(path, md)
    written.insert(0, path)
    return md, [os.path.relpath(p, out_dir) for p in written]


def _copy(src, dst):
    with open(src, "rb") as f:
        data = f.read()
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    atomic_write_bytes(dst, data)   # a full disk leaves no partial copy
    return dst
