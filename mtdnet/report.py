"""The Table 1 report (`make report`): our CMC numbers beside the paper's, in its layout.

Reads every runs/<run>/cmc-<protocol>.json that `make eval` wrote (except the
tuning split `val`'s) and writes
  runs/report.md                  the table (paper rows and ours), with a note per number
                                  (protocol, split, profile, initialisation, iterations)
  runs/report_cmc.png             every result's CMC curve
  runs/report_ranked_<dataset>.png  the ranked gallery of the dataset's best result (rank-1)
"""
import glob
import json
import os
import shutil

from mtdnet import MtdnetError
from mtdnet.fsutil import atomic_write_text

# The paper's Table 1, MTDnet rows: rank-1 / 5 / 10 (%), single-shot CMC.
# Their protocol: ImageNet conv1/conv2, CUHK03 pre-training, paper splits.
PAPER_DATASETS = ("cuhk03", "cuhk01", "viper", "ilids", "prid2011")
DATASET_TITLES = dict(cuhk03="CUHK03", cuhk01="CUHK01", viper="VIPeR", ilids="iLIDS",
                      prid2011="PRID2011", synthetic="synthetic")
PAPER_TABLE1 = {
    "rnk": dict(cuhk03=(60.13, 90.51, 95.15), cuhk01=(63.50, 80.00, 89.50), viper=(28.16, 52.22, 65.19),
                ilids=(41.04, 69.94, 78.61), prid2011=(22.00, 41.00, 48.00)),
    "cls": dict(cuhk03=(68.35, 93.46, 97.47), cuhk01=(76.50, 94.00, 97.00), viper=(44.30, 69.94, 81.96),
                ilids=(54.34, 73.41, 86.13), prid2011=(28.00, 50.00, 60.00)),
    "trp": dict(cuhk03=(66.03, 84.81, 89.87), cuhk01=(66.00, 84.00, 91.50), viper=(34.81, 60.13, 72.78),
                ilids=(46.82, 72.83, 81.50), prid2011=(26.00, 49.00, 57.00)),
    "mtdnet": dict(cuhk03=(74.68, 95.99, 97.47), cuhk01=(77.50, 95.00, 97.50), viper=(45.89, 71.84, 83.23),
                   ilids=(57.80, 78.61, 87.28), prid2011=(32.00, 51.00, 62.00)),
    "aug": dict(cuhk01=(75.50, 93.50, 97.00), viper=(43.35, 70.25, 78.48),
                ilids=(54.91, 74.57, 84.97), prid2011=(27.00, 46.00, 59.00)),
    "cross": dict(cuhk01=(78.50, 96.50, 97.50), viper=(47.47, 73.10, 82.59),
                  ilids=(58.38, 80.35, 87.28), prid2011=(31.00, 54.00, 61.00)),
}
# Table 1's row order, names and "Type" column.
ROW_TITLES = dict(rnk="MTDnet-rnk", cls="MTDnet-cls", trp="MTDnet-trp", mtdnet="MTDnet",
                  aug="MTDnet-aug", cross="MTDnet-cross")
ROW_TYPES = dict(rnk="Rnk", cls="Cls", trp="Cls+Rnk", mtdnet="Cls+Rnk", aug="Cls+Rnk", cross="Cls+Rnk")
RANKS = ("rank1", "rank5", "rank10")
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
        if r.get("split") == "val":
            continue   # tuning numbers on held-out training identities, not a test result
        r["run"] = os.path.basename(os.path.dirname(path))
        r["path"] = path
        out.append(r)
    return out


def split_label(r):
    if r.get("splits"):
        return f"mean of {r['splits']} random splits"
    return f"{r.get('split', 'paper')} split"


def setting(r):
    """What makes two numbers comparable within one table row."""
    return (r["protocol"], split_label(r), r["profile"])


def label(r):
    """What a number means: dataset, protocol, split, profile, initialisation, iterations."""
    bits = [DATASET_TITLES.get(r["dataset"], r["dataset"]), f"protocol {r['protocol']}"]
    n = r.get("trials", 1)
    if n > 1:
        bits.append(f"{n} trials")
    bits += [split_label(r), f"profile {r['profile']}", f"init {r.get('init', 'unknown')}",
             f"{_value(r.get('iterations'))} iterations", f"seed {_value(r.get('seed'))}"]
    return ", ".join(bits)


def _value(v):
    if isinstance(v, list):
        return "/".join(str(x) for x in v)
    return "unknown" if v is None else str(v)


def _fmt(x):
    return DASH if x is None else f"{x:.2f}"


def table1_markdown(results):
    """Markdown: Table 1's columns (rank 1/5/10 per dataset, + synthetic if present),
    each variant's paper row followed by our rows, one per (protocol, split, profile);
    every number of ours carries a note [k] listed under the table."""
    datasets = list(PAPER_DATASETS)
    datasets += sorted({r["dataset"] for r in results} - set(datasets))
    head = "| Method | Type | Source | " + " | ".join(
        f"{DATASET_TITLES.get(d, d)} r=1 | r=5 | r=10" for d in datasets) + " |"
    lines = [head, "|---|---|---|" + "---:|" * (3 * len(datasets))]
    notes = []
    for variant, title in ROW_TITLES.items():
        cells = []
        for d in datasets:
            cells += [_fmt(v) for v in PAPER_TABLE1[variant].get(d, (None,) * 3)]
        lines.append(f"| {title} | {ROW_TYPES[variant]} | paper | " + " | ".join(cells) + " |")
        ours = [r for r in results if r["variant"] == variant]
        for key in sorted({setting(r) for r in ours}):
            cells = []
            for d in datasets:
                rs = [r for r in ours if r["dataset"] == d and setting(r) == key]
                if not rs:
                    cells += [DASH] * 3
                    continue
                r = rs[-1]
                notes.append(r)
                cells += [_fmt(r[k]) + (f" [{len(notes)}]" if k == "rank1" else "") for k in RANKS]
            protocol, split, profile = key
            lines.append(f"| {title} | {ROW_TYPES[variant]} | ours: {protocol} protocol, {split}, "
                         f"{profile} profile | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Paper: ImageNet conv1/conv2 initialisation, CUHK03 pre-training for the small sets, "
                 "the authors' fixed galleries (REFERENCE.md). Ours: as noted per number. "
                 "Percent; single-shot CMC; ties count against the true match.")
    lines.append("")
    for i, r in enumerate(notes, 1):
        std = f", rank-1 std {r['rank1_std']:.2f}" if (r.get("trials", 1) > 1 or r.get("splits")) \
            and r.get("rank1_std") is not None else ""
        lines.append(f"[{i}] {label(r)}; mAP {r['mAP']:.2f}{std}; gallery {_value(r.get('gallery_size'))} "
                     f"(`{r['run']}/{os.path.basename(r['path'])}`)  ")
    return "\n".join(lines) + "\n"


def best_per_dataset(results):
    """{dataset: the result with the highest rank-1 that has a ranked-gallery picture}."""
    best = {}
    for r in results:
        png = os.path.join(os.path.dirname(r["path"]), f"ranked-{r['protocol']}.png")
        if not os.path.isfile(png):
            continue
        if r["dataset"] not in best or r["rank1"] > best[r["dataset"]][0]["rank1"]:
            best[r["dataset"]] = (r, png)
    return best


def build_report(runs_dir):
    """Write report.md, report_cmc.png, report_ranked_<dataset>.png under runs_dir.

    Returns (markdown, [written paths])."""
    from mtdnet import plots
    results = find_results(runs_dir)
    if not results:
        raise MtdnetError(f"{runs_dir}: no cmc-<protocol>.json results; run `make eval` first")
    written = []
    cmc_png = os.path.join(runs_dir, "report_cmc.png")
    plots.plot_cmc([(f"{r['run']}", r) for r in results], cmc_png, title="CMC of every evaluated run")
    written.append(cmc_png)
    lines = []
    for d, (r, png) in sorted(best_per_dataset(results).items()):
        dst = os.path.join(runs_dir, f"report_ranked_{d}.png")
        tmp = dst + ".tmp"
        shutil.copyfile(png, tmp)
        os.replace(tmp, dst)
        written.append(dst)
        lines.append(f"- {DATASET_TITLES.get(d, d)}: `{os.path.basename(dst)}` "
                     f"(from `{r['run']}`, {r['protocol']} protocol, rank-1 {r['rank1']:.2f})")
    md = ("# MTDnet reproduction: Table 1\n\n" + table1_markdown(results)
          + "\nCMC curves: `report_cmc.png`. Ranked galleries (probe and top 10, true match framed "
            "in green), best rank-1 per dataset:\n\n" + "\n".join(lines) + "\n")
    path = os.path.join(runs_dir, "report.md")
    atomic_write_text(path, md)
    written.insert(0, path)
    return md, written
