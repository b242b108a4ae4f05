"""make train: the paper's stages (scratch, ImageNet conv1/conv2, fine-tune, cross) and its errors."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from core import REPO_ROOT, MtdnetError, Project, get_profile
from data_prep.build import SplitOptions, prepare
from prototxt.weights import read_caffemodel
from tests import fixtures
from tests.helpers import PROFILE, caffenet_like, train_run



def _quiet(*a, **k):
    pass


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A project dir with synthetic and (fixture) CUHK03 data at the tiny profile."""
    root = str(tmp_path_factory.mktemp("train"))
    prepare("synthetic", PROFILE, "paper", project=Project(root=root), root=os.path.join(root, "raw"),
            progress=False, log=_quiet, synthetic_params=dict(num_ids=24, num_test=8))
    mat = os.path.join(root, "cuhk03", "cuhk-03.mat")
    os.makedirs(os.path.dirname(mat))
    fixtures.write_cuhk03(mat, persons=[6, 6, 6, 0, 0])
    # The paper's recorded CUHK03 test identities need the full set: a random split here.
    prepare("cuhk03", PROFILE, "random0", SplitOptions(num_test=3, num_val=2), project=Project(root=root),
            root=mat, progress=False, log=_quiet)
    return root


def test_scratch_then_resume_records_the_run(project):
    info = train_run(project, "synthetic", "mtdnet", iters=20)
    assert info["init"].startswith("scratch") and info["iterations"] == 20
    run = os.path.join(project, "runs", "synthetic-mtdnet-tiny")
    saved = json.load(open(os.path.join(run, "run.json")))
    assert saved["seed"] == info["seed"] and saved["model"].endswith("_iter_20.caffemodel")
    assert os.path.getsize(os.path.join(run, "loss.png")) > 0
    # The run's own solver is a plain Caffe solver with the requested max_iter.
    assert "max_iter: 20" in open(os.path.join(run, "solver.prototxt")).read()
    # More iterations: resumes from the snapshot instead of starting again.
    info = train_run(project, "synthetic", "mtdnet", iters=30)
    assert info["iterations"] == 30
    assert "Resuming from" in open(os.path.join(run, "train.log")).read()


def test_imagenet_weights_initialise_conv1_conv2(project, tmp_path):
    p = get_profile(PROFILE)
    imagenet = str(tmp_path / "caffenet.caffemodel")
    caffenet_like(imagenet, p.conv1, p.conv2)
    info = train_run(project, "synthetic", "cls", iters=2, weights=imagenet)
    assert info["init"].startswith("ImageNet conv1/conv2")
    run = os.path.join(project, "runs", "synthetic-cls-tiny")
    init = read_caffemodel(os.path.join(run, "init.caffemodel"))
    src = read_caffemodel(imagenet)
    for layer in ("conv1", "conv2"):
        np.testing.assert_array_equal(init[layer][0], src[layer][0])
    assert "Finetuning from" in open(os.path.join(run, "train.log")).read()


def test_fine_tune_and_cross_from_a_cuhk03_model(project):
    src = train_run(project, "cuhk03", "mtdnet", "random0", iters=10)
    model = os.path.join(project, src["model"])
    ft = train_run(project, "synthetic", "rnk", iters=2, weights=None)
    assert ft["init"].startswith("scratch")
    ft = train_run(project, "synthetic", "aug", source_split="random0", iters=2, weights=model)
    assert ft["init"] == f"fine-tuned from {src['model']}"   # project-relative, as recorded
    cross = train_run(project, "synthetic", "cross", source_split="random0", iters=4, weights=model)
    assert cross["init"].startswith("both copies from the MTDnet model")
    # The frozen source copy is still the CUHK03 model after training.
    final = read_caffemodel(os.path.join(project, cross["model"]))
    start = read_caffemodel(model)
    np.testing.assert_array_equal(final["conv1_src"][0], start["conv1"][0])
    np.testing.assert_array_equal(final["fc7_pair_src"][0], start["fc7_pair"][0])
    assert not np.array_equal(final["conv1"][0], start["conv1"][0])  # the target copy trained


@pytest.mark.parametrize("kw,msg", [
    (dict(variant="trp"), "MTDnet-trp has no training of its own"),
    (dict(variant="cross", source_split="random0"), "starts from a CUHK03 MTDnet model"),
    (dict(dataset="viper"), "prepared data not found; run `make data DATASET=viper"),
    (dict(variant="bogus"), "unknown variant 'bogus'; valid:"),
    (dict(weights="missing.caffemodel"), "missing.caffemodel: model file not found"),
    (dict(iters=0), "ITERS must be >= 1"),
])
def test_bad_requests_are_clear_errors(project, kw, msg):
    args = dict(dataset="synthetic", variant="mtdnet", iters=2)
    args.update(kw)
    # A run with snapshots would resume instead of starting (a test above trains cross).
    shutil.rmtree(os.path.join(project, "runs", f"synthetic-{args['variant']}-tiny"), ignore_errors=True)
    with pytest.raises(MtdnetError, match=msg.replace("(", r"\(").replace("`", ".")):
        train_run(project, **args)


def test_cli_reports_errors_without_a_traceback():
    p = subprocess.run([sys.executable, "tools/train.py", "--dataset", "nope"], cwd=REPO_ROOT,
                       capture_output=True, text=True)
    assert p.returncode == 1
    assert "error: unknown dataset 'nope'" in p.stderr and "Traceback" not in p.stderr


@pytest.mark.parametrize("damage,msg", [
    ("mix", "mix_triplets.npy missing"),
    ("version", "prepared by an older version of make data (data version 1"),
])
def test_outdated_source_data_is_refused_before_caffe_starts(project, damage, msg):
    """MTDnet-aug reads the source's mix triplets: a CUHK03 folder from an older make data
    must name itself and the command that rebuilds it, not fail inside Caffe."""
    src = os.path.join(project, "data", f"cuhk03-{PROFILE}-random0")
    manifest = os.path.join(src, "manifest.json")
    saved = {f: open(os.path.join(src, f), "rb").read() for f in ("manifest.json", "mix_triplets.npy")}
    try:
        if damage == "mix":
            os.remove(os.path.join(src, "mix_triplets.npy"))
        else:
            m = json.load(open(manifest))
            json.dump(dict(m, data_version=1), open(manifest, "w"))
        shutil.rmtree(os.path.join(project, "runs", f"synthetic-aug-{PROFILE}"), ignore_errors=True)
        with pytest.raises(MtdnetError) as e:
            train_run(project, "synthetic", "aug", source_split="random0", iters=2,
                      weights=os.path.join(project, "missing-is-not-reached.caffemodel"))
        assert f"cuhk03-{PROFILE}-random0: {msg}" in str(e.value)
        assert "make data DATASET=cuhk03" in str(e.value)
        assert not os.path.exists(os.path.join(project, "runs", f"synthetic-aug-{PROFILE}", "train.log"))
    finally:
        for f, b in saved.items():
            open(os.path.join(src, f), "wb").write(b)
