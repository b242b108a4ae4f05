"""Pictures: CMC curves, the training loss curve from a Caffe log, ranked galleries.

matplotlib through the object API (Figure + Agg), never pyplot, so nothing
global changes and no display is needed. Every PNG is rendered in memory and
written atomically, with a fixed pixel size (see the *_SIZE constants and
`ranked_gallery_size`).
"""
import io
import math
import os

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from core import MtdnetError
from core.fsutil import atomic_write_bytes
from mtdnet import cmc
from mtdnet.caffelog import read_caffe_log

DPI = 100
CMC_SIZE = (900, 600)        # pixels (width, height)
LOSS_SIZE = (1000, 600)
CELL_IN = (1.0, 2.2)         # one ranked-gallery image cell, inches (people are tall)
MATCH_COLOR = "#1a9850"
PROBE_COLOR = "#2166ac"


# The PNG's Software text: how a later report knows a picture is its own to replace.
PNG_SOFTWARE = "MTDnet reproduction (mtdnet/plots.py)"


def made_here(path):
    """A PNG these functions drew (its Software text chunk)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    return head.startswith(b"\x89PNG") and PNG_SOFTWARE.encode() in head


def _save(fig, path):
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": PNG_SOFTWARE})
    atomic_write_bytes(path, buf.getvalue())
    return path


def _finish(fig, ax, path, xlabel, ylabel, title, legend_loc):
    """Integer x ticks, labels, grid, legend; save the PNG."""
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title is not None:
        ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc=legend_loc, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def _figure(size_px):
    return Figure(figsize=(size_px[0] / DPI, size_px[1] / DPI), dpi=DPI)


# ---- CMC ----------------------------------------------------------------------

def cmc_label(name, result):
    """Legend text: run name, rank-1 (with spread over trials or random splits), protocol."""
    r1 = result.get("rank1")
    if r1 is None:
        r1 = result["cmc"][0]
    text = f"{name}: rank-1 {r1:.2f}%"
    if result.get("trials", 1) > 1 and result.get("rank1_std") is not None:
        text += f" \u00b1 {result['rank1_std']:.2f}"
    if result.get("protocol"):
        n = result.get("trials", 1)
        # A mean over random splits counts its splits in "trials" too.
        what = "splits" if result.get("splits") else "trials"
        text += f" ({result['protocol']}" + (f", {n} {what})" if n > 1 else ")")
    return text


def plot_cmc(runs, path, *, title="CMC", max_rank=None):
    """CMC curves of one or several runs -> PNG of CMC_SIZE pixels.

    runs: {name: result} or [(name, result)], result a cmc.json dict (needs
    "cmc" in percent, rank 1 first; uses rank1, rank1_std, trials, protocol,
    gallery_size when present). max_rank: x range (default the longest curve,
    at most 50). A dashed chance line k/G is drawn when all runs share G.
    """
    items = list(runs.items()) if isinstance(runs, dict) else list(runs)
    if not items:
        raise MtdnetError("plot_cmc: no runs to plot")
    for name, res in items:
        if not res.get("cmc"):
            raise MtdnetError(f"plot_cmc: run '{name}' has no 'cmc' curve")
    longest = max(len(res["cmc"]) for _, res in items)
    n = max_rank or min(longest, 50)
    fig = _figure(CMC_SIZE)
    ax = fig.add_subplot()
    for name, res in items:
        cmc = np.asarray(res["cmc"], dtype=float)
        # Past the gallery size the whole gallery is shown: the curve stays flat.
        y = np.concatenate([cmc, np.full(max(0, n - cmc.size), cmc[-1])])[:n]
        ax.plot(np.arange(1, n + 1), y, marker="o" if n <= 30 else None, markersize=3,
                linewidth=1.8, label=cmc_label(name, res))
    sizes = {len(res["cmc"]) for _, res in items}
    if len(sizes) == 1:
        g = sizes.pop()
        k = np.arange(1, n + 1)
        ax.plot(k, 100.0 * np.minimum(k, g) / g, "k--", linewidth=1,
                label=f"chance (gallery of {g})")
    ax.set_xlim(1, n)
    ax.set_ylim(0, 100)
    return _finish(fig, ax, path, "rank", "matching rate (%)", title, "lower right")


def plot_selection(curve, chosen, path, *, title="validation rank-1 per snapshot"):
    """Validation rank-1 and mAP against the snapshot's iteration, the `chosen` iteration marked."""
    fig = _figure(LOSS_SIZE)
    ax = fig.add_subplot(1, 1, 1)
    its = [c["iteration"] for c in curve]
    ax.plot(its, [c["rank1"] for c in curve], "o-", label="rank-1")
    ax.plot(its, [c["mAP"] for c in curve], "s--", label="mAP")
    ax.axvline(chosen, color="green", alpha=0.5, label=f"chosen: iteration {chosen}")
    return _finish(fig, ax, path, "iteration", "validation (%)", title, "lower right")


def plot_loss_curve(log, path, *, title="training loss"):
    """Loss curve PNG (LOSS_SIZE pixels) from a Caffe log path or a parsed log.

    Draws Caffe's smoothed total loss and every train-net output; the first
    NaN/inf loss, if any, is marked with a red line and its iteration.
    """
    parsed = read_caffe_log(log) if isinstance(log, (str, os.PathLike)) else log
    if not parsed["iterations"]:
        raise MtdnetError("plot_loss_curve: the log has no loss values")
    fig = _figure(LOSS_SIZE)
    ax = fig.add_subplot()
    ax.plot(parsed["iterations"], parsed["loss"], color="black", linewidth=2,
            label="total weighted loss (as Caffe displays it)")
    weights = parsed.get("loss_weights", {})
    for name, (xs, ys) in sorted(parsed["outputs"].items()):
        w = f", weight {weights[name]:g}" if name in weights else ""
        ax.plot(xs, ys, linewidth=1.2, alpha=0.85, label=f"{name} (unweighted{w})")
    bad = [n for n, x in zip(parsed["iterations"], parsed["loss"]) if not math.isfinite(x)]
    if bad:
        ax.axvline(bad[0], color="red", linewidth=1.5,
                   label=f"loss is NaN/inf from iteration {bad[0]}")
    return _finish(fig, ax, path, "iteration", "loss", title, "best")


def plot_output_comparison(logs, outputs, path, *, title="training"):
    """One panel per train-net output (e.g. accuracy, cls_loss), one line per run.

    logs: {name: Caffe log path or parsed log}; outputs: output names. Shows
    how different settings train (here: when the pair classifier starts to learn).
    A run without one of the outputs (a single-task net) is left out of that panel
    and keeps its colour in the others.
    """
    items = [(name, read_caffe_log(log) if isinstance(log, (str, os.PathLike)) else log)
             for name, log in (logs.items() if isinstance(logs, dict) else logs)]
    if not items or not outputs:
        raise MtdnetError("plot_output_comparison: need at least one log and one output")
    for out in outputs:
        if not any(out in parsed["outputs"] for _, parsed in items):
            has = sorted({o for _, parsed in items for o in parsed["outputs"]})
            raise MtdnetError(f"plot_output_comparison: no run ({', '.join(n for n, _ in items)}) has the "
                              f"train-net output {out} (they have {', '.join(has) or 'none'})")
    fig = _figure((LOSS_SIZE[0], LOSS_SIZE[1] * len(outputs) // 2 + 100))
    axes = fig.subplots(len(outputs), 1, sharex=True, squeeze=False)[:, 0]
    for ax, out in zip(axes, outputs):
        for i, (name, parsed) in enumerate(items):
            if out in parsed["outputs"]:
                xs, ys = parsed["outputs"][out]
                ax.plot(xs, ys, linewidth=1.4, label=name, color=f"C{i % 10}")
        ax.set_ylabel(out)
        ax.grid(True, alpha=0.3)
        if ax is not axes[-1]:
            ax.legend(loc="best", fontsize=9)     # each panel names its own runs
    axes[0].set_title(title)
    return _finish(fig, axes[-1], path, "iteration", outputs[-1], None, "best")


# ---- ranked gallery -------------------------------------------------------------

def ranked_gallery_size(n_rows, top):
    """Pixel size (width, height) of a ranked-gallery PNG with n_rows probes and top images."""
    w_in, h_in = _gallery_inches(n_rows, top)
    return round(w_in * DPI), round(h_in * DPI)


def _gallery_inches(n_rows, top):
    # probe column + a half-cell gap + top columns; rows of cells + a title band
    return (top + 1.5) * CELL_IN[0], n_rows * CELL_IN[1] + 0.6


def _load(img):
    if isinstance(img, (str, os.PathLike)):
        from PIL import Image
        try:
            with Image.open(img) as im:
                return np.asarray(im.convert("RGB"))
        except FileNotFoundError:
            raise MtdnetError(f"{img}: image not found") from None
        except OSError as e:
            raise MtdnetError(f"{img}: cannot read image ({e})") from None
    a = np.asarray(img)
    if a.ndim != 3 or a.shape[2] != 3:
        raise MtdnetError(f"ranked gallery: expected an HxWx3 RGB image, got shape {a.shape}")
    return a


def ranked_gallery_rows(scores, probe_ids, gallery_ids, probe_images, gallery_images, *,
                        higher_is_better, probes=None, n_rows=5, top=10):
    """Rows for plot_ranked_gallery from a (P, G) score matrix (same tie rule as CMC).

    probe_images / gallery_images: one image (path or RGB array) per probe /
    gallery entry. probes: which probe positions to show (default n_rows
    evenly spaced over the probe list).
    """
    s, p, g = cmc.check_scores(scores, probe_ids, gallery_ids)
    if len(probe_images) != p.size or len(gallery_images) != g.size:
        raise MtdnetError(f"ranked gallery: {len(probe_images)} probe and {len(gallery_images)} "
                          f"gallery images for a {s.shape} score matrix")
    if probes is None:
        probes = np.unique(np.linspace(0, p.size - 1, min(n_rows, p.size)).round().astype(int))
    rows = []
    for i in probes:
        order, match, first = cmc.ranked_gallery(
            s[i], g, p[i], higher_is_better=higher_is_better, top=top)
        rows.append({"probe": probe_images[i], "probe_label": f"probe id {p[i]}",
                     "gallery": [gallery_images[j] for j in order],
                     "is_match": [bool(x) for x in match],
                     "scores": [float(s[i, j]) for j in order],
                     "first_match_rank": first})
    return rows


def plot_ranked_gallery(rows, path, *, title="ranked gallery"):
    """Probe and its top gallery images per row; true matches framed in green.

    rows: dicts {"probe": image, "gallery": [images, best first],
    "is_match": [bool], optional "scores": [float], "probe_label": str,
    "first_match_rank": int} (see ranked_gallery_rows); images are paths or
    HxWx3 RGB arrays. Size: ranked_gallery_size(len(rows), longest gallery).
    """
    if not rows:
        raise MtdnetError("plot_ranked_gallery: no rows")
    top = max(len(r["gallery"]) for r in rows)
    for r in rows:
        if len(r["is_match"]) != len(r["gallery"]):
            raise MtdnetError("plot_ranked_gallery: is_match and gallery differ in length")
    w_in, h_in = _gallery_inches(len(rows), top)
    fig = Figure(figsize=(w_in, h_in), dpi=DPI)
    title_frac = 0.6 / h_in
    gs = fig.add_gridspec(len(rows), top + 2, width_ratios=[1, 0.5] + [1] * top,
                          left=0.01, right=0.99, bottom=0.01, top=1 - title_frac,
                          wspace=0.08, hspace=0.35)
    fig.suptitle(title + "  (green frame = true match)", fontsize=12,
                 y=1 - 0.25 / h_in, va="center")
    for ri, r in enumerate(rows):
        ax = fig.add_subplot(gs[ri, 0])
        _show(ax, _load(r["probe"]), PROBE_COLOR, 3)
        label = r.get("probe_label", "probe")
        fm = r.get("first_match_rank")
        if fm is not None and fm > len(r["gallery"]):
            label += f"\nmatch at rank {fm}"
        ax.set_title(label, fontsize=8, color=PROBE_COLOR)
        scores = r.get("scores")
        for k, img in enumerate(r["gallery"]):
            ax = fig.add_subplot(gs[ri, k + 2])
            hit = r["is_match"][k]
            _show(ax, _load(img), MATCH_COLOR if hit else "#bbbbbb", 4 if hit else 1)
            t = f"#{k + 1}" + (f"  {scores[k]:.3g}" if scores is not None else "")
            ax.set_title(t, fontsize=8, color=MATCH_COLOR if hit else "black",
                         fontweight="bold" if hit else "normal")
    return _save(fig, path)


def _show(ax, img, color, width):
    ax.imshow(img, aspect="equal", interpolation="bilinear")
    ax.set_xticks([])
    ax.set_yticks([])
    for sp in ax.spines.values():
        sp.set_edgecolor(color)
        sp.set_linewidth(width)
