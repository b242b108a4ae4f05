"""`make table1`: the plan for the datasets present, its order and estimates, and resuming."""
import os
import shutil
import subprocess
import sys

import pytest

from core import REPO_ROOT, Project, Run, get_profile, variants
from core.fsutil import atomic_write_json
import data_prep.datasets
from mtdnet import models, table1, training
from tests import fixtures as F
from tests.helpers import prepare_synthetic

CUHK03_PAIRS = [843, 440, 77]


@pytest.fixture
def shared(tmp_path, monkeypatch):
    """A datasets folder holding CUHK03's detected image folder only (no .mat, no targets)."""
    root = tmp_path / "datasets"
    F.write_cuhk03_folder(str(root / "CUHK03"), CUHK03_PAIRS, h=8, w=4)
    monkeypatch.setattr(data_prep.datasets, "DATASETS_DIR", str(root))
    monkeypatch.setenv("MTDNET_DATASETS", str(root))
    monkeypatch.setenv("MTDNET_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("MTDNET_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("MTDNET_MODELS_DIR", str(tmp_path / "models"))
    return tmp_path


def test_plan_orders_the_stages_and_names_what_is_absent(shared):
    steps, notes = table1.plan("scratch")
    assert [n.split(":")[0] for n in notes] == ["CUHK01", "VIPeR", "i-LIDS", "PRID2011"]
    what = [s.what for s in steps]
    assert what[:4] == ["CUHK03 (detected): prepare the data", "CUHK03 (detected): train MTDnet",
                        "CUHK03 (detected): evaluate MTDnet", "CUHK03 (detected): evaluate MTDnet-trp"]
    assert what[-1] == "Table 1: the report"
    # The source's MTDnet before its single-task variants; its snapshots chosen on validation.
    assert what.index("CUHK03 (detected): train MTDnet") < what.index("CUHK03 (detected): train MTDnet-cls")
    assert all("SELECT=1" in s.command() for s in steps if s.what.startswith("CUHK03 (detected): evaluate"))
    # The profile's CUHK03 iterations at its seconds per iteration: the estimate says so.
    prof = get_profile("scratch")
    assert steps[1].seconds == pytest.approx(prof.max_iter_cuhk03 * prof.seconds_per_iter)
    text = table1.describe(steps, notes)
    assert "make train DATASET=cuhk03detected PROFILE=scratch VARIANT=mtdnet" in text
    assert "expected time of what is left on this machine" in text


def test_targets_fine_tune_from_the_source_models(shared):
    F.write_cuhk01(str(shared / "datasets" / "CUHK01"), [1, 2])
    steps, _ = table1.plan("scratch")
    cmds = {s.what: " ".join(s.command(resolve=False)) for s in steps}
    ft = cmds["CUHK01: train MTDnet (cuhk03detected)"]
    assert "TAG=cuhk03detected" in ft and "WEIGHTS=<cuhk03detected-mtdnet-scratch's model chosen on validation>" in ft
    assert "WEIGHTS=<cuhk03detected-rnk-scratch" in cmds["CUHK01: train MTDnet-rnk (cuhk03detected)"]
    assert "SOURCE=cuhk03detected" in cmds["CUHK01: train MTDnet-cross (cuhk03detected)"]
    assert "WEIGHTS" not in cmds["CUHK01: train MTDnet"]           # the from-scratch baseline
    with pytest.raises(Exception, match="model the next stages start from is missing"):
        steps[[s.what for s in steps].index("CUHK01: train MTDnet (cuhk03detected)")].command()
    # Time estimates follow the variant: cross trains two copies of the net per iteration.
    secs = {s.what: s.seconds for s in steps}
    cost = variants.get_variant("cross").relative_cost
    assert cost > 1 and secs["CUHK01: train MTDnet-cross (cuhk03detected)"] == pytest.approx(
        cost * secs["CUHK01: train MTDnet (cuhk03detected)"])


def test_a_run_short_of_the_plans_iterations_is_resumed(shared):
    """A run trained with a smaller ITERS (or stopped early) is not done: `make table1` resumes it."""
    step = table1.plan("scratch")[0][1]
    run = Run.create("cuhk03detected", "mtdnet", get_profile("scratch"))
    os.makedirs(run.dir)
    planned = get_profile("scratch").max_iter_cuhk03
    for iterations, done in ((1500, False), (planned - 1, False), (planned, True), (planned + 1000, True)):
        atomic_write_json(run.info, {"iterations": iterations, "max_iter": iterations})
        assert step.done() is done, iterations


def test_runs_the_source_stage_and_resumes(shared):
    prof = get_profile("tiny", ["max_iter_cuhk03=20", "snapshot=10"])
    steps, notes = table1.plan(prof)
    done_before = [s.done() for s in steps[1:4]]
    table1.run_plan(steps[:4], notes, log=lambda *a: None)
    assert done_before == [False, False, False] and all(s.done() for s in steps[1:4])
    run = Run.create("cuhk03detected", "mtdnet", prof)
    assert os.path.isfile(run.selection) and os.path.isfile(run.with_variant("trp").result("paper"))
    # A second run skips what is done.
    logs = []
    table1.run_plan(steps[:4], notes, log=logs.append)
    assert sum("done, skipped" in x for x in logs) == 3
    # Published into models/ (checked by sha256), it stands for the run: no retraining.
    chosen = os.path.basename(models.chosen(run))
    out = models.publish(run, [run.with_variant("trp")])
    assert sorted(os.listdir(out)) == sorted(["README.md", "SHA256SUMS", "run.json", "select-val.json", chosen,
                                              f"{run.result_name}.cmc-paper.json",
                                              f"{run.with_variant('trp').result_name}.cmc-paper.json"])
    shutil.rmtree(run.dir)
    assert models.published(run).endswith(chosen) and all(s.done() for s in steps[1:3])
    with open(os.path.join(out, "run.json"), "a") as f:
        f.write(" ")
    with pytest.raises(Exception, match="sha256 differs"):
        models.published(run)


def test_dry_run_cli(shared):
    p = subprocess.run([sys.executable, "tools/table1.py", "--profile", "scratch", "--dry-run"], cwd=REPO_ROOT,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "1. CUHK03 (detected): prepare the data" in p.stdout and "note: VIPeR" in p.stdout


def test_make_passes_tag_and_source(shared):
    """TAG and SOURCE reach the tools: the errors name the tagged run and the chosen source's data."""
    def make(*args):
        return subprocess.run(["make", "-s", *args, "PROFILE=tiny", "DATASET=synthetic"], cwd=REPO_ROOT,
                              capture_output=True, text=True, timeout=300)
    assert make("data", "DATA_ARGS=--synthetic-ids 20 --synthetic-test 5 --no-progress").returncode == 0
    p = make("eval", "VARIANT=mtdnet", "TAG=x")
    assert p.returncode != 0 and "synthetic-mtdnet-tiny@x/snapshots/synthetic_mtdnet_iter_*.caffemodel" in p.stderr
    assert "TAG=x" in p.stderr
    p = make("train", "VARIANT=aug", "TAG=x", "SOURCE=cuhk03detected", "ITERS=1")
    assert p.returncode != 0 and "cuhk03detected-tiny-paper: prepared data not found" in p.stderr


def _write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def test_a_fine_tune_from_a_model_no_longer_chosen_restarts(shared):
    """CUHK03 cls trained on and another snapshot chosen: the fine-tunes from the old one are
    outdated. The plan says why and restarts them (RESTART=1 keeps the earlier run aside)."""
    F.write_cuhk01(str(shared / "datasets" / "CUHK01"), [1, 2])
    prof = get_profile("scratch")
    base = Run.create("cuhk03detected", "cls", prof)
    old, new = base.snapshot_prefix + "_iter_1500.caffemodel", base.snapshot_prefix + "_iter_5000.caffemodel"
    _write(old, "weights at 1500")
    ft = Run.create("cuhk01", "cls", prof, tag="cuhk03detected",
                    source_dataset=data_prep.datasets.get_dataset("cuhk03detected"))
    os.makedirs(ft.dir)
    atomic_write_json(ft.info, {"iterations": 1600, "max_iter": 1600, "weights": old})
    atomic_write_json(base.selection, {"model": base.project.rel(old), "iteration": 1500})

    def step():
        steps, _ = table1.plan(prof)
        return next(s for s in steps if s.what == "CUHK01: train MTDnet-cls (cuhk03detected)")
    s = step()
    assert s.done() and s.command()[-1] == "WEIGHTS=" + old and "RESTART=1" not in s.command()
    # The same weights under another path (e.g. the published copy) are the same model.
    copy = str(shared / "models" / "copy.caffemodel")
    _write(copy, "weights at 1500")
    atomic_write_json(ft.info, {"iterations": 1600, "max_iter": 1600, "weights": copy})
    assert step().done()
    _write(new, "weights at 5000")
    atomic_write_json(base.selection, {"model": base.project.rel(new), "iteration": 5000})
    s = step()
    assert not s.done() and s.command()[-2:] == ["WEIGHTS=" + new, "RESTART=1"]
    assert s.seconds == pytest.approx(ft.solver_settings()[1] * ft.seconds_per_iter)   # from the start
    assert "it restarts" in table1.describe([s], [])


def test_an_evaluation_is_redone_after_its_run_trains_on(shared):
    """A snapshot choice made among 500..1500 is not done once the run has a 2000 snapshot."""
    prof = get_profile("scratch")
    steps, _ = table1.plan(prof)
    train, evaluate = steps[1], steps[2]            # CUHK03 MTDnet: train, evaluate (SELECT=1)
    run = Run.create("cuhk03detected", "mtdnet", prof)
    its = run.solver_settings()[1]
    for k in (500, 1000, 1500):
        _write(f"{run.snapshot_prefix}_iter_{k}.caffemodel", "w")
    atomic_write_json(run.result("paper"), {"selected": {"iteration": 1500}, "iterations": 1500})
    atomic_write_json(run.selection, {"curve": [{"iteration": k} for k in (500, 1000, 1500)]})
    atomic_write_json(run.info, {"iterations": 1500})
    assert not train.done() and not evaluate.done()     # training is not finished: neither is its score
    atomic_write_json(run.info, {"iterations": its})
    assert train.done() and evaluate.done()
    _write(f"{run.snapshot_prefix}_iter_{its + 500}.caffemodel", "w")
    assert not evaluate.done()


def test_a_variant_registered_once_is_in_the_plan(shared):
    from prototxt import nets
    from tests import toy_registry
    F.write_cuhk01(str(shared / "datasets" / "CUHK01"), [1, 2])
    nets.register_train_net("half", toy_registry.half_net)
    variants.register(variants.Variant("half", "MTDnet-half", "Cls+Rnk", 7, "pair", "pair_score", net="half"))
    try:
        what = [s.what for s in table1.plan("scratch")[0]]
    finally:
        variants.unregister("half")
        nets.TRAIN_NETS.pop("half")
    for step in ("CUHK03 (detected): train MTDnet-half", "CUHK03 (detected): evaluate MTDnet-half",
                 "CUHK01: train MTDnet-half (cuhk03detected)", "CUHK01: evaluate MTDnet-half (cuhk03detected)"):
        assert step in what, step
    assert what.index("CUHK03 (detected): train MTDnet-half") > what.index("CUHK01: train MTDnet-cross (cuhk03detected)")


def test_a_kept_resume_pair_continues_on_a_machine_without_the_run(shared):
    """A run too long for one session: its newest snapshot pair kept in models/resume/<run>/
    (committed), the runs/ folder gone (a fresh machine); the same make train continues."""
    prepare_synthetic(str(shared / "syn"))
    project = Project(data_dir=str(shared / "syn" / "data"), runs_dir=str(shared / "runs"),
                      models_dir=str(shared / "models"))
    run = Run.create("synthetic", "mtdnet", get_profile("tiny", ["snapshot=10"]), project=project)
    first = training.train(run, iters=20, progress=False)
    out = models.publish_resume(run)
    assert sorted(os.listdir(out)) == ["README.md", "SHA256SUMS", "run.json", "synthetic_mtdnet_iter_20.caffemodel",
                                       "synthetic_mtdnet_iter_20.solverstate", "train.log.gz"]
    shutil.rmtree(run.dir)
    info = training.train(run, iters=30, progress=False)
    assert info["iterations"] == 30 and info["train_seconds"] > first["train_seconds"]
    log = open(run.log).read()
    assert "Resuming from" in log and log.count("### mtdnet:") == 2     # the kept log goes on
    # A pair that is not what was kept is refused, not trained on.
    shutil.rmtree(run.dir)
    with open(os.path.join(out, "run.json"), "a") as f:
        f.write(" ")
    with pytest.raises(Exception, match="sha256 differs"):
        training.train(run, iters=40, progress=False)


def test_splits_add_each_targets_random_split_runs_and_their_mean(shared):
    F.write_cuhk01(str(shared / "datasets" / "CUHK01"), [1, 2])
    steps, _ = table1.plan("scratch", splits=["random0", "random1"])
    cmds = {s.what: " ".join(s.command(resolve=False)) for s in steps}
    assert "SPLIT=random1 TAG=cuhk03detected VARIANT=mtdnet" in cmds["CUHK01: train MTDnet (cuhk03detected, random1)"]
    assert "WEIGHTS=<cuhk03detected-mtdnet-scratch" in cmds["CUHK01: train MTDnet (cuhk03detected, random1)"]
    assert "WEIGHTS" not in cmds["CUHK01: train MTDnet (random0)"]
    assert cmds["CUHK01: MTDnet-trp mean over random0,random1 (cuhk03detected)"].endswith(
        "TAG=cuhk03detected VARIANT=trp SPLITS=random0,random1")
    what = [s.what for s in steps]
    assert what.index("CUHK01: prepare the data (random0)") < what.index("CUHK01: train MTDnet (random0)") \
        < what.index("CUHK01: MTDnet mean over random0,random1") < what.index("Table 1: the report")
    with pytest.raises(Exception, match="SPLITS takes random<k> names"):
        table1.plan("scratch", splits=["paper"])
