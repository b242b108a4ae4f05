"""`make report`: the Table 1 Markdown, the CMC picture and the ranked galleries per dataset."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from core import REPO_ROOT, MtdnetError
from mtdnet import cmc, plots
from mtdnet import report as R


def result(dataset, variant, protocol="paper", ranks=(1, 1, 2, 3), gallery=4, **extra):
    """A cmc.json body from a real Evaluation of made-up ranks."""
    ev = cmc.Evaluation(ranks=np.array(ranks), ap=1.0 / np.array(ranks, float),
                               kept=np.arange(len(ranks)), excluded=np.zeros(0, int), gallery_size=gallery)
    r = cmc.protocol_result([ev], protocol, higher_is_better=True)
    r.update(dataset=dataset, variant=variant, profile="cpu", split="paper", init="scratch (fillers)",
             iterations=5000, seed=1701, model=f"runs/{dataset}-{variant}-cpu/snapshots/m.caffemodel")
    r.update(extra)
    return r


def write_run(runs, name, r, picture_color=None):
    d = os.path.join(runs, name)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"cmc-{r['protocol']}.json"), "w") as f:
        json.dump(r, f)
    if picture_color is not None:
        img = np.full((40, 16, 3), picture_color, np.uint8)
        rows = [{"probe": img, "gallery": [img] * 3, "is_match": [False, True, False]}]
        plots.plot_ranked_gallery(rows, os.path.join(d, f"ranked-{r['protocol']}.png"), title=name)
    return d


def with_path(r, run):
    return dict(r, run=run, path=f"/x/{run}/cmc-{r['protocol']}.json")


def test_table_layout_paper_rows_and_ours():
    ours = [with_path(result("viper", "mtdnet"), "viper-mtdnet-cpu"),
            with_path(result("viper", "mtdnet", "random", ranks=(2, 2, 2, 2), trials=10, rank1_std=1.5),
                      "viper-mtdnet-cpu"),
            with_path(result("synthetic", "trp"), "synthetic-trp-cpu")]
    md = R.table1_markdown(ours)
    lines = md.splitlines()
    head = lines[0]
    assert head.startswith("| Method | Type | Source | CUHK03 r=1 | r=5 | r=10 | CUHK01 r=1")
    assert head.index("VIPeR") < head.index("i-LIDS") < head.index("PRID2011") < head.index("synthetic")
    n_cols = head.count("|")
    assert all(l.count("|") == n_cols for l in lines[:lines.index("")])
    rows = [l for l in lines if l.startswith("| MTDnet |")]
    assert rows[0].split(" | ")[2] == "paper" and "74.68 | 95.99 | 97.47" in rows[0]
    # Ours follow the paper row, one per protocol; VIPeR is the 3rd dataset (columns 9..11).
    assert len(rows) == 3
    assert "ours: from scratch, paper protocol, paper split, cpu profile" in rows[1]
    assert "ours: from scratch, random protocol, paper split, cpu profile" in rows[2]
    cells = [c.strip() for c in rows[1].strip("|").split("|")]
    # Notes are numbered in table order: trp's row (before MTDnet's in Table 1) has [1].
    assert cells[9:12] == ["50.00 [2]", "100.00", "100.00"]          # ranks (1, 1, 2, 3), gallery 4
    assert cells[3:9] == ["–"] * 6
    cells = [c.strip() for c in rows[2].strip("|").split("|")]
    assert cells[9:12] == ["0.00 [3]", "100.00", "100.00"]
    trp = [l for l in lines if l.startswith("| MTDnet-trp |")]
    assert "34.81 | 60.13 | 72.78" in trp[0] and trp[1].rstrip(" |").endswith("100.00")
    aug = [l for l in lines if l.startswith("| MTDnet-aug |")][0]
    assert aug.split(" | ")[3:6] == ["–", "–", "–"]                # no CUHK03 entry in the paper
    # Every number of ours is explained: protocol, split, profile, initialisation, iterations.
    n1 = next(l for l in lines if l.startswith("[2]"))
    for bit in ("VIPeR", "protocol paper", "paper split", "profile cpu", "init scratch (fillers)",
                "5000 iterations", "seed 1701", "mAP"):
        assert bit in n1, bit
    n2 = next(l for l in lines if l.startswith("[3]"))
    assert "protocol random, 10 trials" in n2 and "rank-1 std 1.50" in n2


def test_split_means_get_their_own_row():
    mean = with_path(result("viper", "mtdnet", splits=3, split="random-mean", iterations=[10, 20, 30]),
                     "viper-mtdnet-cpu-random-mean")
    md = R.table1_markdown([mean])
    assert "ours: from scratch, paper protocol, mean of 3 random splits, cpu profile" in md
    assert "10/20/30 iterations" in md


def test_build_report_writes_table_curves_and_best_ranked_gallery(tmp_path, monkeypatch):
    runs = str(tmp_path)
    drawn = {}
    plot_cmc = plots.plot_cmc

    def recording(items, path, **kw):
        drawn[os.path.basename(path)] = [name for name, _ in items]
        return plot_cmc(items, path, **kw)
    monkeypatch.setattr(plots, "plot_cmc", recording)
    write_run(runs, "viper-mtdnet-cpu", result("viper", "mtdnet", ranks=(2, 2, 2, 2)), (200, 0, 0))
    best = write_run(runs, "viper-cls-cpu", result("viper", "cls", ranks=(1, 1, 1, 2)), (0, 0, 200))
    write_run(runs, "synthetic-rnk-tiny", result("synthetic", "rnk", "random", trials=3), (0, 200, 0))
    # A tuning result (held-out training identities) is no test number: left out.
    write_run(runs, "viper-cls-cpu-val", result("viper", "cls", ranks=(1, 1, 1, 1), split="val"), (9, 9, 9))
    # A random split's higher number is no Table 1 number: the gallery shown stays the paper split's.
    write_run(runs, "viper-trp-cpu-random0", result("viper", "trp", ranks=(1, 1, 1, 1), split="random0"),
              (9, 200, 9))
    md, written = R.build_report(runs)
    names = sorted(os.path.basename(p) for p in written)
    assert names == ["report.md", "report_cmc.png", "report_cmc_synthetic.png", "report_cmc_viper.png",
                     "report_ranked_synthetic.png", "report_ranked_viper.png"]
    assert "`report_cmc_viper.png`" in md
    with open(os.path.join(runs, "report.md")) as f:
        assert f.read() == md
    assert md.count("[4]") == 2 and "[5]" not in md              # four numbers, each noted once
    with Image.open(os.path.join(runs, "report_cmc.png")) as im:
        assert im.size == plots.CMC_SIZE
    with open(os.path.join(runs, "report_ranked_viper.png"), "rb") as a, \
            open(os.path.join(best, "ranked-paper.png"), "rb") as b:
        assert a.read() == b.read()                               # the higher rank-1 (cls) is shown
    assert "report_ranked_viper.png` (from `viper-cls-cpu`" in md
    # One random split's result is a row of the table, not a curve (their mean would be one).
    assert "random0 split" in md
    assert drawn["report_cmc_viper.png"] == ["viper-cls-cpu", "viper-mtdnet-cpu"]
    assert "viper-trp-cpu-random0" not in drawn["report_cmc.png"]


def test_pre_trained_rows_wall_times_commands_and_a_docs_copy(tmp_path):
    """Fine-tuned numbers get their own row beside the from-scratch baseline, and each note
    says how long it trained and which commands reproduce it."""
    runs = str(tmp_path / "runs")
    weights = str(tmp_path / "runs" / "cuhk03detected-mtdnet-cpu" / "snapshots" / "m.caffemodel")
    ft = result("viper", "mtdnet", ranks=(1, 1, 1, 1), tag="cuhk03detected", iterations=1000,
                init=f"fine-tuned from {weights}", score_seconds=200,
                model="runs/viper-mtdnet-cpu@cuhk03detected/snapshots/viper_mtdnet_iter_1000.caffemodel")
    write_run(runs, "viper-mtdnet-cpu@cuhk03detected", ft, (0, 0, 200))
    write_run(runs, "viper-mtdnet-cpu", result("viper", "mtdnet", ranks=(2, 2, 2, 2)), (200, 0, 0))
    write_run(runs, "viper-cross-cpu@cuhk03detected", dict(ft, variant="cross", model=ft["model"].replace(
        "mtdnet", "cross")))
    for name, info in (("viper-mtdnet-cpu@cuhk03detected", dict(iterations=1000, weights=weights,
                                                                train_seconds=3720.0)),
                       ("viper-cross-cpu@cuhk03detected", dict(iterations=1000, weights=weights,
                                                               train_seconds=600.0,
                                                               data=["data/viper-cpu-paper",
                                                                     "data/cuhk03detected-cpu-paper"]))):
        with open(os.path.join(runs, name, "run.json"), "w") as f:
            json.dump(info, f)
    docs = str(tmp_path / "docs" / "table1")
    md, written = R.build_report(runs, docs)
    lines = md.splitlines()
    rows = [l for l in lines if l.startswith("| MTDnet |")]
    assert "ours: from scratch, paper protocol" in rows[1] and "0.00 [" in rows[1]
    assert "ours: pre-trained on CUHK03 (detected), paper protocol" in rows[2] and "100.00 [" in rows[2]
    k = rows[2].split("100.00 [")[1].split("]")[0]
    note = lines[lines.index(next(l for l in lines if l.startswith(f"[{k}]"))) + 1]
    assert next(l for l in lines if l.startswith(f"[{k}]")).count("wall time: training 1 h 02 min, scoring 3 min")
    assert note.strip() == ("reproduce: `make train DATASET=viper VARIANT=mtdnet PROFILE=cpu TAG=cuhk03detected "
                            f"ITERS=1000 WEIGHTS={weights}` then `make eval DATASET=viper VARIANT=mtdnet "
                            "PROFILE=cpu TAG=cuhk03detected`")
    # The cross run's source dataset comes from the data it read (run.json before it named it).
    assert "VARIANT=cross PROFILE=cpu TAG=cuhk03detected ITERS=1000 " in md and "SOURCE=cuhk03detected`" in md
    # The docs copy holds what the notes cite; runs/ is left as it was.
    assert os.path.isfile(os.path.join(docs, "viper-mtdnet-cpu@cuhk03detected", "cmc-paper.json"))
    assert os.path.isfile(os.path.join(docs, "viper-mtdnet-cpu@cuhk03detected", "run.json"))
    assert open(os.path.join(docs, "report.md")).read() == md and not os.path.exists(os.path.join(runs, "report.md"))
    assert all(p.startswith(docs) for p in written)


def test_report_errors(tmp_path):
    with pytest.raises(MtdnetError, match="no cmc-<protocol>.json results; run `make eval` first"):
        R.build_report(str(tmp_path))
    d = tmp_path / "x-mtdnet-cpu"
    d.mkdir()
    (d / "cmc-paper.json").write_text("{not json")
    with pytest.raises(MtdnetError, match=r"x-mtdnet-cpu/cmc-paper.json: cannot read the result"):
        R.build_report(str(tmp_path))
    (d / "cmc-paper.json").write_text(json.dumps({"protocol": "paper"}))
    with pytest.raises(MtdnetError, match=r"not a `make eval` result \(lacks dataset"):
        R.build_report(str(tmp_path))
    assert not (tmp_path / "report.md").exists()


def test_cli(tmp_path):
    write_run(str(tmp_path), "viper-mtdnet-cpu", result("viper", "mtdnet"), (10, 20, 30))
    p = subprocess.run([sys.executable, "tools/report.py", "--runs-dir", str(tmp_path)], cwd=REPO_ROOT,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("# MTDnet reproduction: Table 1") and "50.00 [1]" in p.stdout
    assert (tmp_path / "report.md").read_text() == p.stdout[:-1]
    (tmp_path / "empty").mkdir()
    p = subprocess.run(["make", "-s", "report", f"REPORT_ARGS=--runs-dir {tmp_path / 'empty'}"],
                       cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode != 0 and "error: " in p.stderr and "run `make eval` first" in p.stderr
    p = subprocess.run(["make", "-s", "report", f"REPORT_ARGS=--runs-dir {tmp_path / 'nosuch'}"],
                       cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode != 0 and f"error: {tmp_path / 'nosuch'}: runs folder not found" in p.stderr


def test_a_report_never_replaces_what_it_did_not_write(tmp_path):
    runs = str(tmp_path / "runs")
    write_run(runs, "viper-mtdnet-cpu", result("viper", "mtdnet"), (10, 20, 30))
    # --out: a folder of the user's is refused, untouched; a new one is written, then rewritten.
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "report.md").write_text("my notes")
    with pytest.raises(MtdnetError, match=f"{mine}: not empty and not made by this project; refusing"):
        R.build_report(runs, str(mine))
    assert sorted(os.listdir(mine)) == ["report.md"] and (mine / "report.md").read_text() == "my notes"
    docs = tmp_path / "docs"
    R.build_report(runs, str(docs))
    R.build_report(runs, str(docs))               # its own folder: replaced as a whole
    assert (docs / "report.md").read_text().startswith(R.HEADING)
    (docs / "todo.txt").write_text("mine")
    with pytest.raises(MtdnetError, match="not made by this project"):
        R.build_report(runs, str(docs))
    assert (docs / "todo.txt").read_text() == "mine"
    # In the runs folder: the report's own files are replaced, a user's report.md or picture never.
    R.build_report(runs)
    assert plots.made_here(os.path.join(runs, "report_cmc.png"))
    R.build_report(runs)
    open(os.path.join(runs, "report_cmc.png"), "wb").write(b"my picture")
    with pytest.raises(MtdnetError, match="report_cmc.png: exists and was not written by `make report`"):
        R.build_report(runs)
    assert open(os.path.join(runs, "report_cmc.png"), "rb").read() == b"my picture"
    open(os.path.join(runs, "report.md"), "w").write("mine")
    os.unlink(os.path.join(runs, "report_cmc.png"))
    with pytest.raises(MtdnetError, match="report.md: exists and was not written by `make report`"):
        R.build_report(runs)
    assert open(os.path.join(runs, "report.md")).read() == "mine"
    assert not [n for n in os.listdir(runs) if n.startswith(".")]     # no staging folder left


def test_reproduce_names_model_when_the_result_scored_another_runs_model(tmp_path):
    runs = str(tmp_path / "runs")
    own = write_run(runs, "viper-mtdnet-cpu", result("viper", "mtdnet"))
    other = write_run(runs, "viper-cls-cpu", result("viper", "cls", model="models/x/x_iter_7.caffemodel"))
    for d, variant in ((own, "mtdnet"), (other, "cls")):
        with open(os.path.join(d, "run.json"), "w") as f:
            json.dump({"variant": variant, "iterations": 5000,
                       "model": f"runs/viper-{variant}-cpu/snapshots/m.caffemodel"}, f)
    md, _ = R.build_report(runs)
    evals = [l.split(" then ")[1].strip() for l in md.splitlines() if "reproduce:" in l]
    assert "`make eval DATASET=viper VARIANT=cls PROFILE=cpu MODEL=models/x/x_iter_7.caffemodel`" in evals
    assert "`make eval DATASET=viper VARIANT=mtdnet PROFILE=cpu`" in evals


def test_wall_times_read_as_spent():
    assert [R.hours_minutes(s) for s in (1, 40, 59.4, 60, 89, 3600, 7500)] == \
        ["1 s", "40 s", "59 s", "1 min", "1 min", "1 h 00 min", "2 h 05 min"]


def test_a_rows_origin_comes_from_the_recorded_init_kind():
    assert R.origin({"init_kind": "scratch", "init": "anything"}) == "from scratch"
    assert R.origin({"init_kind": "imagenet", "init": "conv1/conv2 copied"}) == "ImageNet"
    assert R.origin({"init": "scratch (fillers)"}) == "from scratch"          # a result from before init_kind
    assert R.origin({"tag": "cuhk03detected", "init_kind": "finetune"}) == "pre-trained on CUHK03 (detected)"


def test_each_number_says_what_it_was_trained_with():
    r = result("viper", "mtdnet", train_compute=[{"fast": True, "threads": 2, "cpus": 2},
                                                 {"fast": True, "threads": 1, "cpus": 2}])
    text = R.label(r)
    assert text.endswith("trained with Caffe fast path, 2 thread(s) then Caffe fast path, 1 thread(s)")
    assert "trained with" not in R.label(result("viper", "mtdnet"))     # an older record: nothing claimed
    r = result("viper", "mtdnet", train_compute=[{"fast": True, "threads": 2, "cpus": 2},
                                                 {"fast": True, "threads": 2, "cpus": 2, "conv": "onednn"}])
    assert R.label(r).endswith("Caffe fast path, 2 thread(s) then Caffe fast path (oneDNN convolutions), 2 thread(s)")


def test_a_docs_page_keeps_the_results_it_cites_that_runs_lacks(tmp_path):
    """A machine holding only some runs updates a docs page without losing the others' numbers;
    one whose training has changed since is left out, and --only-runs drops them all."""
    runs = str(tmp_path / "runs")
    write_run(runs, "viper-mtdnet-cpu", result("viper", "mtdnet", ranks=(1, 1, 1, 1)), (0, 0, 200))
    write_run(runs, "viper-cls-cpu", result("viper", "cls", ranks=(2, 2, 2, 2)), (200, 0, 0))
    write_run(runs, "cuhk01-rnk-cpu", result("cuhk01", "rnk", ranks=(1, 2, 2, 3)), (0, 200, 0))
    for name in ("viper-mtdnet-cpu", "viper-cls-cpu", "cuhk01-rnk-cpu"):
        with open(os.path.join(runs, name, "run.json"), "w") as f:
            json.dump(dict(iterations=5000, train_seconds=60.0), f)
    docs = str(tmp_path / "docs")
    R.build_report(runs, docs)
    # Best (and only) CUHK01 result: its ranked gallery is kept beside its result as well.
    assert os.path.isfile(os.path.join(docs, "cuhk01-rnk-cpu", "ranked-paper.png"))
    assert not os.path.exists(os.path.join(docs, "viper-cls-cpu", "ranked-paper.png"))

    # Another machine: the MTDnet run redone (a new number), CUHK01's and cls's runs absent.
    other = str(tmp_path / "other")
    write_run(other, "viper-mtdnet-cpu", result("viper", "mtdnet", ranks=(1, 1, 1, 2)), (0, 0, 100))
    with open(os.path.join(other, "viper-mtdnet-cpu", "run.json"), "w") as f:
        json.dump(dict(iterations=5000, train_seconds=70.0), f)
    warned = []
    md, written = R.build_report(other, docs, warn=warned.append)
    assert warned == []
    rel = sorted(os.path.relpath(p, docs) for p in written)
    assert "cuhk01-rnk-cpu/cmc-paper.json" in rel and "cuhk01-rnk-cpu/run.json" in rel
    assert "viper-cls-cpu/cmc-paper.json" in rel and "report_ranked_cuhk01.png" in rel
    assert "75.00 [" in md                                         # the redone MTDnet number
    assert "25.00 [" in md and "0.00 [" in md                      # CUHK01 rnk and VIPeR cls kept
    assert md.count("carried over from this page's previous version") == 2
    note = next(l for l in md.splitlines() if "(`cuhk01-rnk-cpu/cmc-paper.json`)" in l)
    assert "carried over" in note and "wall time: training 1 min" in note
    assert "reproduce: `make train DATASET=cuhk01 VARIANT=rnk" in md
    with open(os.path.join(docs, "cuhk01-rnk-cpu", "cmc-paper.json")) as f:
        assert "kept" not in json.load(f)                          # the record is copied as it was

    # A kept result whose training this machine has in another state is stale: left out, named.
    os.makedirs(os.path.join(other, "viper-cls-cpu"))
    with open(os.path.join(other, "viper-cls-cpu", "run.json"), "w") as f:
        json.dump(dict(iterations=100, train_seconds=5.0), f)     # retraining, not yet evaluated
    md, _ = R.build_report(other, docs, warn=warned.append)
    assert len(warned) == 1 and "viper-cls-cpu/cmc-paper.json" in warned[0] and "has changed" in warned[0]
    assert "(`viper-cls-cpu/cmc-paper.json`)" not in md and "(`cuhk01-rnk-cpu/cmc-paper.json`)" in md
    assert os.path.isfile(os.path.join(docs, "report_ranked_cuhk01.png"))   # still drawn from the kept copy

    p = subprocess.run([sys.executable, "tools/report.py", "--runs-dir", other, "--out", docs, "--only-runs"],
                       cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "cuhk01-rnk-cpu" not in p.stdout and sorted(os.listdir(docs)) == [
        "report.md", "report_cmc.png", "report_cmc_viper.png", "report_ranked_viper.png", "viper-mtdnet-cpu"]
