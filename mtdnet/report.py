"""The Table 1 report: our CMC numbers beside the paper's, in the paper's layout."""
import glob
import json
import os

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
ROW_TITLES = dict(rnk="MTDnet-rnk", cls="MTDnet-cls", trp="MTDnet-trp", mtdnet="MTDnet",
                  aug="MTDnet-aug", cross="MTDnet-cross")
RANKS = ("rank1", "rank5", "rank10")


def find_results(runs_dir):
    """Every cmc-<protocol>.json under runs_dir, as dicts (with `run` = the run folder name)."""
    out = []
    for path in sorted(glob.glob(os.path.join(runs_dir, "*", "cmc-*.json"))):
        with open(path) as f:
            r = json.load(f)
        r["run"] = os.path.basename(os.path.dirname(path))
        r["path"] = path
        out.append(r)
    return out


def label(r):
    """What a number means: protocol, profile, initialisation, iterations."""
    bits = [f"{r['dataset']}", f"protocol {r['protocol']}"]
    if r.get("trials", 1) > 1:
        bits.append(f"{r['trials']} trials")
    bits += [f"profile {r['profile']}", f"init {r.get('init', '?')}", f"{r.get('iterations', '?')} it",
             f"seed {r.get('seed', '?')}"]
    return ", ".join(bits)


def _fmt(x):
    return "–" if x is None else f"{x:.2f}"


def table1_markdown(results):
    """Markdown: the paper's MTDnet rows and ours, Table 1's columns (+ synthetic if present)."""
    datasets = list(PAPER_DATASETS)
    if any(r["dataset"] not in datasets for r in results):
        datasets += sorted({r["dataset"] for r in results} - set(datasets))
    head = "| method | source | " + " | ".join(
        f"{DATASET_TITLES.get(d, d)} r=1 | r=5 | r=10" for d in datasets) + " |"
    sep = "|---|---|" + "---|" * (3 * len(datasets))
    lines = [head, sep]
    notes = []
    for variant, title in ROW_TITLES.items():
        cells = []
        for d in datasets:
            cells += [_fmt(v) for v in PAPER_TABLE1.get(variant, {}).get(d, (None,) * 3)]
        lines.append(f"| {title} | paper | " + " | ".join(cells) + " |")
        ours = [r for r in results if r.get("variant") == variant]
        for protocol in sorted({r["protocol"] for r in ours}):
            cells = []
            for d in datasets:
                rs = [r for r in ours if r["dataset"] == d and r["protocol"] == protocol]
                if not rs:
                    cells += ["–"] * 3
                    continue
                r = rs[-1]
                notes.append(r)
                tag = f" [{len(notes)}]"
                cells += [_fmt(r[k]) + (tag if k == "rank1" else "") for k in RANKS]
            lines.append(f"| {title} | ours ({protocol}) | " + " | ".join(cells) + " |")
    lines.append("")
    for i, r in enumerate(notes, 1):
        std = f", rank-1 std {r['rank1_std']:.2f}" if r.get("rank1_std") is not None else ""
        lines.append(f"[{i}] {label(r)}, mAP {r['mAP']:.2f}{std} (`{r['path']}`)  ")
    return "\n".join(lines) + "\n"
