"""`make eval`: trials from the prepared data, cmc.json, pictures, several splits, errors, the CLI.

Real parts throughout: data_prep's builder on a small synthetic set, tiny
train-net snapshots saved by pycaffe, the generated deploy nets, the
`make eval` target and tools/evaluate.py in subprocesses.
"""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from core import REPO_ROOT, MtdnetError
from core.profiles import get_profile
from data_prep.build import SplitOptions, prepare
from data_prep.prepared import Prepared
from mtdnet import evaluate as E
from mtdnet import cmc, plots
from mtdnet import report
from tests.helpers import (PROFILE, deploy_file, eval_run, make_model, prepare_synthetic, run_of, save_deploy_model,
                           tiny_project)

PY = sys.executable
KEYS = ("protocol", "rank1", "rank5", "rank10", "rank20", "mAP", "trials", "cmc", "model", "profile",
        "seed", "iterations", "dataset", "variant", "split", "init", "score_kind", "gallery_size")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("eval"))
    data = prepare_synthetic(root)
    runs = os.path.join(root, "runs")
    run = os.path.join(runs, "synthetic-mtdnet-tiny")
    model = make_model(os.path.join(run, "snapshots", "synthetic_mtdnet_iter_120.caffemodel"), data, seed=3)
    with open(os.path.join(run, "run.json"), "w") as f:
        json.dump({"dataset": "synthetic", "variant": "mtdnet", "profile": "tiny", "seed": 1701,
                   "init": "scratch (fillers)", "iterations": 120, "model": model}, f)
    return dict(root=root, data=data, runs=runs, run=run, model=model)


def run_eval(world, **kw):
    args = dict(data_dir=world["data"], runs_dir=world["runs"])
    args.update(kw)
    return eval_run(**args)


def load(path):
    with open(path) as f:
        return json.load(f)


def check_body(r, gallery_size):
    for k in KEYS:
        assert k in r, k
    assert 0 <= r["rank1"] <= r["rank5"] <= r["rank10"] <= r["rank20"] <= 100
    assert len(r["cmc"]) == r["gallery_size"] == gallery_size
    assert np.all(np.diff(r["cmc"]) >= 0) and r["cmc"][-1] == 100.0
    assert r["cmc"][0] == r["rank1"]
    assert r["cmc"][min(5, gallery_size) - 1] == r["rank5"]
    assert 0 < r["mAP"] <= 100


# ---- trials from the prepared split ------------------------------------------------------

def fake_prepared(images, split):
    return Prepared("/nowhere", images, split, {}, "/nowhere/images.lmdb", "/nowhere/t.npy")


def rec(i, pid, cam, role="test"):
    return {"index": i, "person_id": pid, "camera_id": cam, "role": role, "path": f"{i}.png"}


def test_paper_trial_is_split_json_eval(world):
    from data_prep.prepared import load_prepared
    p = load_prepared(os.path.join(world["data"], "synthetic-tiny-paper"))
    (t,) = E.make_trials(p, "paper")
    ids = p.split["eval"]["test"]["identities"]
    assert sorted(t.probe.tolist()) == sorted(i for e in ids for i in e["probe"])
    assert t.gallery.tolist() == [e["gallery"][0] for e in ids]
    assert sorted(t.gallery_ids.tolist()) == sorted(p.split["test"])
    by_index = {im["index"]: im for im in p.images}
    assert all(by_index[i]["camera_id"] == 0 for i in t.probe)
    assert all(by_index[i]["camera_id"] == 1 and by_index[i]["role"] == "test" for i in t.gallery)


def test_prid_like_distractors_join_every_gallery():
    # persons 1, 2 test (both cameras); 7, 8 gallery-only distractors; 5 train.
    images = [rec(0, 1, 0), rec(1, 1, 1), rec(2, 2, 0), rec(3, 2, 1), rec(4, 7, 1), rec(5, 8, 1),
              rec(6, 5, 0, "train"), rec(7, 5, 1, "train")]
    split = {"test": [1, 2], "distractors": [7, 8], "probe_camera": 0, "gallery_camera": 1,
             "cameras_known": True,
             "eval": {"test": {"identities": [{"person_id": 1, "probe": [0], "gallery": [1]},
                                              {"person_id": 2, "probe": [2], "gallery": [3]}],
                               "distractors": [4, 5]}}}
    (t,) = E.make_trials(fake_prepared(images, split), "paper")
    assert t.gallery.tolist() == [1, 3, 4, 5] and t.n_distractors == 2
    assert t.probe.tolist() == [0, 2]
    rs = E.make_trials(fake_prepared(images, split), "random", n_trials=3, seed=5)
    assert len(rs) == 3
    for t in rs:
        assert sorted(t.gallery.tolist()) == [1, 3, 4, 5]
        assert 5 not in t.probe_ids and 7 not in t.probe_ids


def test_ilids_like_pool_gives_several_probes_per_identity():
    # cameras_known False: image 1 is the paper gallery, the random protocol pools all images.
    images = [rec(0, 1, 1), rec(1, 1, 0), rec(2, 1, 0), rec(3, 2, 1), rec(4, 2, 0)]
    split = {"test": [1, 2], "distractors": [], "probe_camera": 0, "gallery_camera": 1,
             "cameras_known": False,
             "eval": {"test": {"identities": [{"person_id": 1, "probe": [1, 2], "gallery": [0]},
                                              {"person_id": 2, "probe": [4], "gallery": [3]}],
                               "distractors": []}}}
    (t,) = E.make_trials(fake_prepared(images, split), "paper")
    assert t.probe.tolist() == [1, 2, 4] and t.gallery.tolist() == [0, 3]
    rs = E.make_trials(fake_prepared(images, split), "random", n_trials=20, seed=1)
    galleries = {tuple(t.gallery.tolist()) for t in rs}
    assert len(galleries) > 1                       # pooled: the gallery image varies
    for t in rs:
        assert not set(t.probe.tolist()) & set(t.gallery.tolist())
        assert t.probe.size == 3
    again = E.make_trials(fake_prepared(images, split), "random", n_trials=20, seed=1)
    assert [x.gallery.tolist() for x in again] == [x.gallery.tolist() for x in rs]


# ---- one evaluation ---------------------------------------------------------------------

def test_paper_eval_writes_consistent_results(world):
    r = run_eval(world)
    out = world["run"]
    check_body(r, 6)
    assert r["protocol"] == "paper" and r["trials"] == 1 and r["trial_seed"] is None
    assert r["iterations"] == 120 and r["seed"] == 1701 and r["init"] == "scratch (fillers)"
    assert r["score"] == "similarity" and r["score_kind"] == "pair" and r["scorer"] == "fast"
    assert os.path.samefile(r["model"], world["model"])
    assert load(os.path.join(out, "cmc-paper.json")) == load(os.path.join(out, "cmc.json")) == r
    # The saved score matrix gives the recorded numbers again.
    z = np.load(os.path.join(out, "scores-paper.npz"))
    assert z["scores"].shape == (6, 6) and z["scores"].std() > 1e-4
    pid = {im["index"]: im["person_id"] for im in load(os.path.join(world["data"], "synthetic-tiny-paper",
                                                                   "images.json"))}
    ev = cmc.evaluate(z["scores"], [pid[i] for i in z["rows"]], [pid[i] for i in z["cols"]],
                             higher_is_better=True)
    assert round(100 * ev.rank(1), 4) == r["rank1"] and round(100 * ev.mAP, 4) == r["mAP"]
    with Image.open(os.path.join(out, "cmc-paper.png")) as im:
        assert im.size == plots.CMC_SIZE
    with Image.open(os.path.join(out, "ranked-paper.png")) as im:
        assert im.size == plots.ranked_gallery_size(E.RANKED_PROBES, 6)   # top 10 of a gallery of 6


def test_trp_uses_the_mtdnet_model_and_its_own_folder(world):
    r = run_eval(world, variant="trp", protocol="random", trials=4, seed=9)
    out = os.path.join(world["runs"], "synthetic-trp-tiny")
    assert load(os.path.join(out, "cmc-random.json")) == r
    check_body(r, 6)
    assert r["score"] == "distance" and r["score_kind"] == "feature"
    assert os.path.samefile(r["model"], world["model"])
    assert r["trials"] == 4 and len(r["per_trial"]) == 4 and r["trial_seed"] == 9
    assert r["run"] == "synthetic-trp-tiny" and r["variant"] == "trp"
    assert os.path.isfile(os.path.join(out, "ranked-random.png"))
    # Deterministic: the same seed gives the same file content.
    again = run_eval(world, variant="trp", protocol="random", trials=4, seed=9)
    strip = lambda d: {k: v for k, v in d.items() if k not in ("evaluated", "score_seconds")}
    assert strip(again) == strip(r)


def test_model_option_overrides_the_run(world, tmp_path):
    other = make_model(str(tmp_path / "other_iter_40.caffemodel"), world["data"], seed=11)
    r = run_eval(world, model=other, protocol="random", trials=2)
    assert os.path.samefile(r["model"], other) and r["iterations"] == 40
    assert not os.path.samefile(r["model"], world["model"])


# ---- errors ------------------------------------------------------------------------------

def test_missing_data_dir(world, tmp_path):
    with pytest.raises(MtdnetError, match=r"synthetic-tiny-paper: no prepared data here.*make data"):
        run_eval(world, data_dir=str(tmp_path / "nodata"))


def test_missing_model(world, tmp_path):
    runs = str(tmp_path / "runs")
    with pytest.raises(MtdnetError, match=r"no model to evaluate; train first \(make train DATASET=synthetic "
                                          r"VARIANT=mtdnet PROFILE=tiny\) or pass MODEL="):
        run_eval(world, runs_dir=runs)
    with pytest.raises(MtdnetError, match=r"gone\.caffemodel: model not found"):
        run_eval(world, runs_dir=runs, model=str(tmp_path / "gone.caffemodel"))
    assert not os.path.exists(os.path.join(runs, "synthetic-mtdnet-tiny", "cmc.json"))


def test_model_that_does_not_fit(world, tmp_path):
    runs = str(tmp_path / "runs")
    cpu = save_deploy_model(str(tmp_path / "cpu_pair.caffemodel"), "pair_score", "cpu")
    with pytest.raises(MtdnetError, match=r"cpu_pair\.caffemodel: layer 'conv1'.*does not fit"):
        run_eval(world, runs_dir=runs, model=cpu)
    rnk = make_model(str(tmp_path / "rnk.caffemodel"), world["data"], "rnk")
    with pytest.raises(MtdnetError, match=r"no weights for layer\(s\) conv3_pair"):
        run_eval(world, runs_dir=runs, model=rnk)
    assert not os.path.exists(os.path.join(runs, "synthetic-mtdnet-tiny"))   # nothing written


def test_data_of_another_profile(world, tmp_path):
    data = str(tmp_path / "data")
    shutil.copytree(os.path.join(world["data"], "synthetic-tiny-paper"),
                    os.path.join(data, "synthetic-cpu-paper"))
    t, c = get_profile("tiny").input_size, get_profile("cpu").input_size
    with pytest.raises(MtdnetError, match=rf"images are \(3, {t}, {t}\), profile 'cpu' needs \(3, {c}, {c}\)"):
        run_eval(world, profile="cpu", data_dir=data, runs_dir=str(tmp_path / "runs"),
                 model=save_deploy_model(str(tmp_path / "cpu.caffemodel"), "pair_score", "cpu"))


def test_bad_arguments(world):
    with pytest.raises(MtdnetError, match="unknown protocol 'cuhk'"):
        run_eval(world, protocol="cuhk")
    with pytest.raises(MtdnetError, match="unknown variant"):
        run_eval(world, variant="siamese")
    with pytest.raises(MtdnetError, match="TRIALS must be a positive integer"):
        run_eval(world, protocol="random", trials=0)
    with pytest.raises(MtdnetError, match="unknown scorer 'bogus'"):
        run_eval(world, scorer="bogus")
    with pytest.raises(MtdnetError, match="needs a target dataset other than cuhk03"):
        run_eval(world, dataset="cuhk03", variant="cross")


def test_nan_model_is_reported(world, tmp_path):
    import caffe
    net = caffe.Net(deploy_file(str(tmp_path), "pair_score"), caffe.TEST)
    net.copy_from(world["model"])
    net.params["fc8_pair"][0].data[...] = np.nan
    bad = str(tmp_path / "nan_iter_5.caffemodel")
    net.save(bad)
    with pytest.raises(MtdnetError, match=r"nan_iter_5\.caffemodel: the model gives 36 non-finite"):
        run_eval(world, runs_dir=str(tmp_path / "runs"), model=bad)


# ---- several random splits ------------------------------------------------------------

def test_random_splits_and_their_mean(world, tmp_path):
    root = str(tmp_path)
    data = prepare_synthetic(root, split="random", num_splits=2)
    runs = os.path.join(root, "runs")
    for k, seed in ((0, 21), (1, 22)):
        make_model(os.path.join(runs, f"synthetic-mtdnet-tiny-random{k}", "snapshots",
                                f"synthetic_mtdnet_iter_{10 * (k + 1)}.caffemodel"), world["data"], seed=seed)
    run = run_of(data_dir=data, runs_dir=runs)
    assert [s.name for s in E.random_splits_present(run)] == ["random0", "random1"]
    # `--split random` through the CLI: every random<k> run present, then their mean.
    p = subprocess.run([PY, "tools/evaluate.py", "--dataset", "synthetic", "--profile", "tiny",
                        "--split", "random", "--data-dir", data, "--runs-dir", runs, "--no-progress"],
                       cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    parts = [load(os.path.join(runs, f"synthetic-mtdnet-tiny-random{k}", "cmc-paper.json")) for k in (0, 1)]
    mean = load(os.path.join(runs, "synthetic-mtdnet-tiny-random-mean", "cmc-paper.json"))
    assert mean["splits"] == 2 and mean["split_names"] == ["random0", "random1"]
    for m in ("rank1", "rank5", "mAP"):
        assert mean[m] == pytest.approx((parts[0][m] + parts[1][m]) / 2, abs=1e-3)
    assert mean["iterations"] == [10, 20] and mean["gallery_size"] == 6
    assert mean["rank1_std"] == pytest.approx(float(np.std([x["rank1"] for x in parts], ddof=1)), abs=1e-3)
    assert os.path.isfile(os.path.join(runs, "synthetic-mtdnet-tiny-random-mean", "cmc-paper.png"))
    # --combine-only re-averages what is there without scoring.
    os.remove(os.path.join(runs, "synthetic-mtdnet-tiny-random-mean", "cmc-paper.json"))
    r = E.evaluate_splits(run, ["random0", "random1"], combine_only=True, log=lambda *a: None)
    assert r["rank1"] == mean["rank1"]
    with pytest.raises(MtdnetError, match="result of split random3"):
        E.evaluate_splits(run, ["random3"], combine_only=True, log=lambda *a: None)
    with pytest.raises(MtdnetError, match="--splits takes random<k> names"):
        E.evaluate_splits(run, ["paper"])


# ---- the command line -----------------------------------------------------------------

def test_make_eval_and_cli_errors(world, tmp_path):
    runs = str(tmp_path / "runs")
    shutil.copytree(world["run"], os.path.join(runs, "synthetic-mtdnet-tiny"))
    p = subprocess.run(["make", "-s", "eval", "DATASET=synthetic", "VARIANT=mtdnet", "PROFILE=tiny",
                        "PROTOCOL=random", "TRIALS=3",
                        f"EVAL_ARGS=--data-dir {world['data']} --runs-dir {runs} --no-progress"],
                       cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "synthetic-mtdnet-tiny: random protocol, 3 trial(s): rank-1" in p.stdout
    r = load(os.path.join(runs, "synthetic-mtdnet-tiny", "cmc.json"))
    check_body(r, 6)
    assert r["trials"] == 3 and r["protocol"] == "random"

    p = subprocess.run([PY, "tools/evaluate.py", "--dataset", "synthetic", "--profile", "tiny",
                        "--data-dir", world["data"], "--runs-dir", runs,
                        "--model", str(tmp_path / "missing.caffemodel")],
                       cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 1
    assert p.stderr.startswith("error: ") and "missing.caffemodel: model not found" in p.stderr
    assert "Traceback" not in p.stderr

    p = subprocess.run([PY, "tools/evaluate.py", "--help"], cwd=REPO_ROOT, capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0 and "--protocol" in p.stdout and "--splits" in p.stdout


# ---- choosing the snapshot on validation identities ------------------------------------

def test_snapshot_chosen_on_validation_identities(tmp_path):
    root = str(tmp_path)
    prepare("synthetic", PROFILE, "paper", SplitOptions(num_val=4), project=tiny_project(root),
            root=os.path.join(root, "raw"), progress=False, log=lambda *a: None,
            synthetic_params=dict(num_ids=16, num_test=6))
    run = run_of(data_dir=os.path.join(root, "data"), runs_dir=os.path.join(root, "runs"))
    for it, seed in ((100, 31), (200, 32), (300, 33)):
        make_model(f"{run.snapshot_prefix}_iter_{it}.caffemodel", run.project.data_dir, seed=seed)
    val = E.evaluate(run, E.Evaluation(on="val", model=f"{run.snapshot_prefix}_iter_200.caffemodel"),
                     progress=False, log=lambda *a: None)
    assert val["on"] == "val" and val["gallery_size"] == 4
    assert os.path.isfile(run.result("paper", on="val")) and not os.path.exists(run.result("paper"))
    body = E.select_snapshot(run, E.Evaluation(), progress=False, log=lambda *a: None)
    choice = load(run.selection)
    assert [c["iteration"] for c in choice["curve"]] == [100, 200, 300]
    best = max(choice["curve"], key=lambda c: (c["rank1"], c["mAP"], c["iteration"]))
    assert choice["iteration"] == best["iteration"] and body["selected"]["iteration"] == best["iteration"]
    assert body["on"] == "test" and body["gallery_size"] == 6 and body["iterations"] == best["iteration"]
    assert load(os.path.join(run.result_dir, "cmc.json"))["selected"]["val_rank1"] == best["rank1"]
    assert os.path.getsize(os.path.join(run.result_dir, "select-val.png")) > 0
    # Validation numbers never reach the report.
    assert [r["on"] for r in report.find_results(run.project.runs_dir)] == ["test"]
    with pytest.raises(MtdnetError, match="no val identities"):
        E.evaluate(run_of(data_dir=world_data(root)), E.Evaluation(on="val"), progress=False)


def world_data(root):
    """A prepared split without validation identities."""
    d = os.path.join(root, "noval")
    prepare_synthetic(d)
    return os.path.join(d, "data")


def test_a_model_of_another_variant_is_refused(world, tmp_path, capsys):
    """MODEL= of a cls run scored as trp (an untrained feature layer) or an MTDnet model
    scored as cls (MTDnet's number under cls's name): the run.json beside it says what it is."""
    runs = str(tmp_path / "runs")
    cls_dir = tmp_path / "runs" / "synthetic-cls-tiny"
    cls_model = make_model(str(cls_dir / "snapshots" / "synthetic_cls_iter_20.caffemodel"), world["data"], "cls")
    (cls_dir / "run.json").write_text(json.dumps({"variant": "cls", "model": cls_model}))
    with pytest.raises(MtdnetError, match=r"synthetic_cls_iter_20\.caffemodel: a MTDnet-cls model .*"
                                          r"VARIANT=trp scores a MTDnet model\. Score this one with VARIANT=cls"):
        run_eval(world, runs_dir=runs, variant="trp", model=cls_model)
    with pytest.raises(MtdnetError, match=r"a MTDnet model .*VARIANT=cls scores a MTDnet-cls model\. "
                                          r"Score this one with VARIANT=mtdnet or VARIANT=trp"):
        run_eval(world, runs_dir=runs, variant="cls", model=world["model"])
    assert not os.path.exists(os.path.join(runs, "synthetic-trp-tiny"))
    assert not os.path.exists(os.path.join(runs, "synthetic-cls-tiny", "cmc-paper.json"))
    # A published copy (models/<run>/ holds run.json beside the model) is checked the same way.
    published = tmp_path / "models" / "synthetic-cls-tiny"
    published.mkdir(parents=True)
    shutil.copy(cls_model, published)
    shutil.copy(cls_dir / "run.json", published)
    with pytest.raises(MtdnetError, match="a MTDnet-cls model"):
        run_eval(world, runs_dir=runs, variant="trp", model=str(published / os.path.basename(cls_model)))
    # Without a record it is scored, and says what it could not check.
    capsys.readouterr()
    bare = make_model(str(tmp_path / "bare.caffemodel"), world["data"], seed=4)
    run_eval(world, runs_dir=runs, variant="trp", model=bare, protocol="random", trials=2)
    assert "no run record beside it (run.json); cannot check that it is a MTDnet model" in capsys.readouterr().out


def test_one_evaluation_of_a_result_at_a_time_and_a_note_while_training(world, tmp_path):
    from core.locks import exclusive
    runs = str(tmp_path / "runs")
    shutil.copytree(world["run"], os.path.join(runs, "synthetic-mtdnet-tiny"),
                    ignore=shutil.ignore_patterns("cmc*", "ranked*", "scores*"))   # the training only
    run = run_of(data_dir=world["data"], runs_dir=runs)
    with exclusive(run.result_dir + ".eval", "make eval"):
        with pytest.raises(MtdnetError, match=f"runs/synthetic-mtdnet-tiny: make eval already running "
                                              f"\\(pid {os.getpid()}\\)"):
            E.evaluate(run, E.Evaluation(protocol="random", trials=2), progress=False, log=lambda *a: None)
    assert not os.path.exists(os.path.join(runs, "synthetic-mtdnet-tiny", "cmc-random.json"))
    said = []
    with exclusive(run.dir, "make train"):     # a training holds the run: its newest snapshot is scored
        E.evaluate(run, E.Evaluation(protocol="random", trials=2), progress=False, log=said.append)
    assert said[0] == (f"note: {run.project.rel(run.dir)} is training now (pid {os.getpid()}): this scores its "
                       "newest snapshot, iteration 120, not the finished model")
    said.clear()
    E.evaluate(run, E.Evaluation(protocol="random", trials=2), progress=False, log=said.append)
    assert not any(x.startswith("note:") for x in said)
