"""Pictures: CMC curves, loss curves from Caffe logs (a real `caffe train` included),
ranked galleries; sizes, content and the log parser's numbers."""
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from core import REPO_ROOT, MtdnetError
from mtdnet import cmc as E
from mtdnet import caffelog, plots
from tests.helpers import run_caffe

LOG_SNIPPET = """\
I1125 10:00:00.000001  4242 solver.cpp:60] Solver scaffolding done.
I1125 10:00:01.000001  4242 solver.cpp:218] Iteration 0 (0 iter/s, 0.9s/20 iters), loss = 2.07944
I1125 10:00:01.000002  4242 solver.cpp:237]     Train net output #0: cls_loss = 0.693147 (* 1 = 0.693147 loss)
I1125 10:00:01.000003  4242 solver.cpp:237]     Train net output #1: rnk_loss = 1.38629 (* 1 = 1.38629 loss)
I1125 10:00:01.000004  4242 sgd_solver.cpp:105] Iteration 0, lr = 0.001
I1125 10:00:09.000001  4242 solver.cpp:218] Iteration 20 (2.5 iter/s, 8s/20 iters), loss = 1.5
I1125 10:00:09.000002  4242 solver.cpp:237]     Train net output #0: cls_loss = 0.6 (* 1 = 0.6 loss)
I1125 10:00:09.000003  4242 solver.cpp:237]     Train net output #1: rnk_loss = 0.9 (* 1 = 0.9 loss)
I1125 10:00:09.000004  4242 sgd_solver.cpp:105] Iteration 20, lr = 0.001
I1125 10:00:10.000000  4242 solver.cpp:330] Iteration 40, Testing net (#0)
I1125 10:00:11.000000  4242 solver.cpp:397]     Test net output #0: accuracy = 0.75
I1125 10:00:17.000001  4242 solver.cpp:218] Iteration 40 (2.5 iter/s, 8s/20 iters), loss = 1.2e+00
I1125 10:00:17.000002  4242 solver.cpp:237]     Train net output #0: cls_loss = 0.5 (* 1 = 0.5 loss)
I1125 10:00:17.000003  4242 solver.cpp:237]     Train net output #1: rnk_loss = 0.7 (* 1 = 0.7 loss)
I1125 10:00:25.000001  4242 solver.cpp:218] Iteration 60 (2.5 iter/s, 8s/20 iters), loss = -nan
I1125 10:00:25.000002  4242 solver.cpp:237]     Train net output #0: cls_loss = nan (* 1 = nan loss)
I1125 10:00:25.000003  4242 solver.cpp:237]     Train net output #1: rnk_loss = 0.7 (* 1 = 0.7 loss)
I1125 11:00:00.000000  5151 solver.cpp:60] Solver scaffolding done.
I1125 11:00:00.000001  5151 caffe.cpp:250] Resuming from runs/x/snap_iter_40.solverstate
I1125 11:00:01.000001  5151 solver.cpp:218] Iteration 40 (0 iter/s, 1s/20 iters), loss = 1.1
I1125 11:00:01.000002  5151 solver.cpp:237]     Train net output #0: cls_loss = 0.45 (* 1 = 0.45 loss)
I1125 11:00:01.000003  5151 solver.cpp:237]     Train net output #1: rnk_loss = 0.65 (* 1 = 0.65 loss)
I1125 11:00:09.000001  5151 solver.cpp:218] Iteration 60 (2.5 iter/s, 8s/20 iters), loss = 1.0
I1125 11:00:09.000002  5151 solver.cpp:237]     Train net output #0: cls_loss = 0.4 (* 1 = 0.4 loss)
I1125 11:00:09.000003  5151 solver.cpp:237]     Train net output #1: rnk_loss = 0.6 (* 0 = 0 loss)
"""


def png_size(path):
    assert os.path.getsize(path) > 1000
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


def pixels(path):
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).astype(int)


def test_parse_log_snippet():
    log = caffelog.parse_caffe_log(LOG_SNIPPET)
    # The resumed run (second half) supersedes iterations 40 and 60 of the first.
    assert log["iterations"] == [0, 20, 40, 60]
    assert log["loss"] == [2.07944, 1.5, 1.1, 1.0]
    assert log["outputs"]["cls_loss"] == ([0, 20, 40, 60], [0.693147, 0.6, 0.45, 0.4])
    assert log["outputs"]["rnk_loss"] == ([0, 20, 40, 60], [1.38629, 0.9, 0.65, 0.6])
    assert log["loss_weights"] == {"cls_loss": 1.0, "rnk_loss": 0.0}
    assert log["lr"] == ([0, 20], [0.001, 0.001])
    # The resumed run re-tests at 40 itself (none shown here), so the old test point goes.
    assert log["test"] == {"accuracy": ([], [])}


def test_parse_log_keeps_nan():
    first_run = LOG_SNIPPET.split("Solver scaffolding done.")[1]
    log = caffelog.parse_caffe_log(first_run)
    assert log["iterations"] == [0, 20, 40, 60]
    assert log["loss"][2] == 1.2 and math.isnan(log["loss"][3])
    assert math.isnan(log["outputs"]["cls_loss"][1][3])
    assert log["test"] == {"accuracy": ([40], [0.75])}


def test_read_caffe_log_errors(tmp_path):
    with pytest.raises(MtdnetError, match="Caffe log not found"):
        caffelog.read_caffe_log(tmp_path / "none.log")
    p = tmp_path / "empty.log"
    p.write_text("I1125 solver.cpp:60] Solver scaffolding done.\n")
    with pytest.raises(MtdnetError, match="empty.log: no 'Iteration N, loss = X' lines"):
        caffelog.read_caffe_log(p)


TINY_NET = """\
name: "tiny"
layer { name: "data" type: "DummyData" top: "x" top: "y"
  dummy_data_param { shape { dim: 4 dim: 3 } shape { dim: 4 dim: 2 }
    data_filler { type: "gaussian" std: 1 } data_filler { type: "gaussian" std: 1 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "ip"
  inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "l2" type: "EuclideanLoss" bottom: "ip" bottom: "y" top: "l2_loss" }
layer { name: "aux" type: "EuclideanLoss" bottom: "ip" bottom: "y" top: "aux_loss"
  loss_weight: 0.5 }
"""


def test_real_caffe_log_parsed_and_plotted(tmp_path):
    (tmp_path / "net.prototxt").write_text(TINY_NET)
    (tmp_path / "solver.prototxt").write_text(
        'net: "net.prototxt"\nbase_lr: 0.01\nlr_policy: "fixed"\nmomentum: 0.9\n'
        'max_iter: 20\ndisplay: 5\nsolver_mode: CPU\nrandom_seed: 1\n'
        'snapshot_prefix: "snap"\n')
    rc, text = run_caffe(["train", "-solver", "solver.prototxt"], cwd=tmp_path, timeout=120)
    assert rc == 0, text[-2000:]
    (tmp_path / "train.log").write_text(text)
    log = caffelog.read_caffe_log(tmp_path / "train.log")
    # Caffe displays every 5 iterations and the final loss at max_iter.
    assert log["iterations"] == [0, 5, 10, 15, 20]
    assert log["lr"][1] == [0.01] * 4
    assert log["loss_weights"] == {"aux_loss": 0.5, "l2_loss": 1.0}
    xs, l2 = log["outputs"]["l2_loss"]
    assert xs == [0, 5, 10, 15]
    # Both losses see the same blobs, so total = l2 + 0.5 * aux = 1.5 * l2 (Caffe
    # prints 6 significant digits, hence the tolerance).
    assert log["outputs"]["aux_loss"][1] == l2
    assert log["loss"][:4] == pytest.approx([1.5 * x for x in l2], rel=1e-5)
    out = plots.plot_loss_curve(tmp_path / "train.log", tmp_path / "loss.png", title="tiny")
    assert png_size(out) == plots.LOSS_SIZE


def test_loss_curve_marks_nan(tmp_path):
    first_run = LOG_SNIPPET.split("Solver scaffolding done.")[1]
    log = caffelog.parse_caffe_log(first_run)
    plots.plot_loss_curve(log, tmp_path / "nan.png", title="diverged")
    plots.plot_loss_curve(caffelog.parse_caffe_log(LOG_SNIPPET), tmp_path / "ok.png",
                          title="diverged")
    assert png_size(tmp_path / "nan.png") == plots.LOSS_SIZE
    # The NaN marker is a red line; the resumed (finite) log has none.
    def red(p):
        px = pixels(p)
        return int(((px[..., 0] > 200) & (px[..., 1] < 60) & (px[..., 2] < 60)).sum())
    assert red(tmp_path / "nan.png") > 100
    assert red(tmp_path / "ok.png") == 0


def _result(protocol, ranks, gallery_size, trials=1):
    evs = [E.Evaluation(ranks=np.array(ranks), ap=1.0 / np.array(ranks),
                        kept=np.arange(len(ranks)), excluded=np.zeros(0, int),
                        gallery_size=gallery_size)] * trials
    return E.protocol_result(evs, protocol, higher_is_better=True)


def test_cmc_plot(tmp_path):
    runs = {"mtdnet": _result("paper", [1, 1, 2, 5, 30], 40),
            "mtdnet-rnk": _result("random", [3, 2, 8, 40, 12], 40, trials=3)}
    out = plots.plot_cmc(runs, tmp_path / "cmc.png", title="VIPeR")
    assert png_size(out) == plots.CMC_SIZE
    px = pixels(out)
    assert px.std() > 10                         # not a blank canvas
    assert plots.cmc_label("mtdnet", runs["mtdnet"]) == "mtdnet: rank-1 40.00% (paper)"
    assert plots.cmc_label("mtdnet-rnk", runs["mtdnet-rnk"]) == \
        "mtdnet-rnk: rank-1 0.00% \u00b1 0.00 (random, 3 trials)"
    mean = dict(runs["mtdnet-rnk"], protocol="paper", splits=3)
    assert plots.cmc_label("m", mean) == "m: rank-1 0.00% \u00b1 0.00 (paper, 3 splits)"
    # One run and a list of pairs work too; no run is an error.
    plots.plot_cmc([("a", runs["mtdnet"])], tmp_path / "one.png", max_rank=20)
    assert png_size(tmp_path / "one.png") == plots.CMC_SIZE
    with pytest.raises(MtdnetError, match="no runs"):
        plots.plot_cmc({}, tmp_path / "none.png")
    with pytest.raises(MtdnetError, match="run 'x' has no 'cmc' curve"):
        plots.plot_cmc({"x": {"rank1": 3}}, tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()


def _person(color, h=128, w=48):
    img = np.full((h, w, 3), 240, np.uint8)
    img[10:-10, 12:-12] = color
    return img


def _green_frame_pixels(path):
    px = pixels(path)
    target = np.array([0x1a, 0x98, 0x50])
    return int((np.abs(px - target).sum(-1) < 30).sum())


def test_ranked_gallery(tmp_path):
    rng = np.random.default_rng(0)
    n_p, n_g = 4, 12
    scores = rng.random((n_p, n_g))
    probe_ids = [0, 1, 2, 3]
    gallery_ids = list(range(n_g))
    scores[0, 0] = 2.0            # probe 0: true match at rank 1
    scores[1, 1] = -1.0           # probe 1: true match last (rank 12, not shown)
    colors = rng.integers(0, 200, (n_g, 3)).astype(np.uint8)
    probe_imgs = [_person(colors[i]) for i in probe_ids]
    gallery_imgs = [_person(c) for c in colors]
    rows = plots.ranked_gallery_rows(scores, probe_ids, gallery_ids, probe_imgs, gallery_imgs,
                                     higher_is_better=True, probes=[0, 1], top=10)
    assert rows[0]["is_match"][0] and rows[0]["first_match_rank"] == 1
    assert not any(rows[1]["is_match"]) and rows[1]["first_match_rank"] == 12
    assert len(rows[1]["gallery"]) == 10
    out = plots.plot_ranked_gallery(rows, tmp_path / "ranked.png", title="synthetic")
    assert png_size(out) == plots.ranked_gallery_size(2, 10) == (1150, 500)
    # The true match is framed in green; with no match in the top 10 nothing is.
    assert _green_frame_pixels(out) > 200
    plots.plot_ranked_gallery(rows[1:], tmp_path / "miss.png", title="synthetic")
    assert png_size(tmp_path / "miss.png") == plots.ranked_gallery_size(1, 10) == (1150, 280)
    assert _green_frame_pixels(tmp_path / "miss.png") == 0


def test_ranked_gallery_bad_input(tmp_path):
    row = {"probe": str(tmp_path / "missing.bmp"), "gallery": [_person((1, 2, 3))],
           "is_match": [True]}
    with pytest.raises(MtdnetError, match="missing.bmp: image not found"):
        plots.plot_ranked_gallery([row], tmp_path / "x.png")
    row["probe"] = np.zeros((5, 5))
    with pytest.raises(MtdnetError, match="HxWx3 RGB image"):
        plots.plot_ranked_gallery([row], tmp_path / "x.png")
    row["probe"], row["is_match"] = _person((1, 2, 3)), [True, False]
    with pytest.raises(MtdnetError, match="differ in length"):
        plots.plot_ranked_gallery([row], tmp_path / "x.png")
    with pytest.raises(MtdnetError, match="1 probe and 2 gallery images"):
        plots.ranked_gallery_rows(np.zeros((2, 2)), [1, 2], [1, 2], [None], [None, None],
                                  higher_is_better=True)
    assert not (tmp_path / "x.png").exists()


def test_output_comparison_plot_and_cli(tmp_path):
    """One panel per output, one coloured line per run; a missing output names the run."""
    second = LOG_SNIPPET.split("Solver scaffolding done.")[2]
    for name, text in (("a", LOG_SNIPPET), ("b", second)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "train.log").write_text(text)
    out = tmp_path / "cmp.png"
    p = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "tools", "compare_runs.py"), "--train", str(out),
                        "--outputs", "cls_loss,rnk_loss", str(tmp_path / "a"), str(tmp_path / "b")],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    w, h = png_size(out)
    assert w == plots.LOSS_SIZE[0] and h == plots.LOSS_SIZE[1] + 100    # two panels
    def blue(p):     # matplotlib's C0
        return ((p[..., 2] > 150) & (p[..., 0] < 80)).sum()

    def orange(p):   # C1
        return ((p[..., 0] > 200) & (p[..., 1] > 100) & (p[..., 1] < 160) & (p[..., 2] < 60)).sum()
    px = pixels(out)
    assert blue(px) > 100 and orange(px) > 100
    with pytest.raises(MtdnetError, match=r"no run \(b\) has the train-net output accuracy \(they have cls_loss"):
        plots.plot_output_comparison({"b": caffelog.parse_caffe_log(second)}, ["accuracy"], tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()
    # A run lacking an output (a single-task net) is drawn only where it has one, in its colour.
    only_a = dict(caffelog.parse_caffe_log(LOG_SNIPPET))
    only_a["outputs"] = {"extra": only_a["outputs"]["cls_loss"]}
    plots.plot_output_comparison([("b", caffelog.parse_caffe_log(second)), ("a", only_a)],
                                 ["cls_loss", "extra"], tmp_path / "y.png")
    px = pixels(tmp_path / "y.png")
    top, bottom = px[: px.shape[0] // 2], px[px.shape[0] // 2:]
    assert blue(top) > 100 and orange(top) < 20          # b (C0) in cls_loss only
    assert orange(bottom) > 100 and blue(bottom) < 20    # a (C1) in extra only
    p = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "tools", "compare_runs.py"), str(tmp_path / "a")],
                       capture_output=True, text=True)
    assert p.returncode == 2 and "give --cmc and/or --train" in p.stderr
