"""The experiment's vocabulary (core/): registries, Split, Run, profiles and their overrides.

A toy dataset and a toy variant (tests/toy_registry.py) are registered here and run
through data preparation, the generator, training, evaluation and the report:
adding either is its file plus one registry entry.
"""
import dataclasses
import json
import os
import subprocess
import sys

import pytest

from core import (PROFILES, REPO_ROOT, DatasetSpec, DataSpec, MtdnetError, Project, Run, Split, Variant,
                  datasets, get_dataset, get_profile, variants)
from data_prep.build import SplitOptions, prepare
from mtdnet import evaluate, report, training
from prototxt import generate, nets
from tests import fixtures as F
from tests import toy_registry


# ---------------------------------------------------------------- Split

@pytest.mark.parametrize("name,kind,index,concrete", [
    ("paper", "paper", None, True), ("val", "val", None, True), ("random3", "random", 3, True),
    ("random", "random", None, False), ("testsets12", "testsets", 12, True), ("testsets", "testsets", None, False),
])
def test_split_names_parse_once(name, kind, index, concrete):
    s = Split.parse(name)
    assert (s.kind, s.index, s.concrete, s.name) == (kind, index, concrete, name)
    assert Split.parse(s) is s


@pytest.mark.parametrize("bad", ["half", "random-1", "paper0", "", "Random1", "val2"])
def test_bad_split_names(bad):
    with pytest.raises(MtdnetError, match="unknown split"):
        Split.parse(bad)


def test_split_expand():
    assert [s.name for s in Split.parse("random").expand(3)] == ["random0", "random1", "random2"]
    assert Split.parse("random1").expand(3) == [Split("random", 1)]
    with pytest.raises(MtdnetError, match="there are random0..random2"):
        Split.parse("random5").expand(3)
    with pytest.raises(MtdnetError, match="needs one split"):
        Split.parse("random").require_concrete("a run")


# ---------------------------------------------------------------- profiles

def test_profiles_derive_from_each_other():
    """Each profile names only what differs from the one it derives from."""
    def diff(a, b):
        return {f.name for f in dataclasses.fields(a) if getattr(a, f.name) != getattr(b, f.name)}
    assert diff(PROFILES["scratch"], PROFILES["cpu"]) == {"name", "base_lr", "max_iter", "max_iter_cuhk03", "biases"}
    assert {"input_scale", "weight_filler", "input_size"} <= diff(PROFILES["cpu"], PROFILES["paper"])
    assert diff(PROFILES["tiny"], PROFILES["cpu"]) >= {"batch_triplets", "input_size"}


def test_overrides_are_typed_recorded_and_tag_the_run():
    p = get_profile("scratch", ["base_lr=0.005", "shift=8", "release_solver_exceptions=true",
                                "lr_steps=0.5:0.75"])
    assert (p.base_lr, p.shift, p.release_solver_exceptions, p.lr_steps) == (0.005, 8, True, (0.5, 0.75))
    assert p.name == "scratch" and p.to_dict()["overrides"] == {
        "base_lr": 0.005, "lr_steps": (0.5, 0.75), "shift": 8, "release_solver_exceptions": True}
    assert p.tag == "+base_lr=0.005,lr_steps=0.5:0.75,release_solver_exceptions=True,shift=8"
    assert p.data_tag == ""                                    # none of them changes the prepared data
    run = Run.create("viper", "trp", p)
    assert run.name == "viper-mtdnet-scratch+base_lr=0.005,lr_steps=0.5:0.75,release_solver_exceptions=True,shift=8"
    assert run.result_name.startswith("viper-trp-scratch+") and run.data.name == "viper-scratch-paper"
    q = get_profile("tiny", ["input_size=79", "seed=3"])
    assert Run.create("viper", "mtdnet", q, "random1").data.name == "viper-tiny+input_size=79,seed=3-random1"
    assert get_profile("tiny", []) is PROFILES["tiny"]


@pytest.mark.parametrize("bad,msg", [
    ("base_lr", "is not field=value"), ("learning_rate=1", "unknown profile field 'learning_rate'"),
    ("name=x", "unknown profile field 'name'"), ("max_iter=1.5", "max_iter=1.5: expected int"),
    ("zero_bias=1", "unknown profile field 'zero_bias'"), ("biases=one", "biases=one; valid: release"),
    ("release_solver_exceptions=maybe", "expected bool"),
])
def test_bad_overrides(bad, msg):
    with pytest.raises(MtdnetError, match=msg):
        get_profile("tiny", [bad])


# ---------------------------------------------------------------- datasets, variants, runs

def test_dataset_options_are_part_of_the_name():
    d = get_dataset("cuhk03", images="detected")
    assert d.name == "cuhk03detected" and get_dataset("cuhk03detected") == d
    assert get_dataset("cuhk03", images="labeled") == get_dataset("cuhk03")
    assert d.title == "CUHK03 (detected)"
    with pytest.raises(MtdnetError, match="no option 'images'"):
        get_dataset("viper", images="detected")
    with pytest.raises(MtdnetError, match="option images='raw'; valid: labeled, detected"):
        get_dataset("cuhk03", images="raw")


def test_run_paths_come_from_one_place(tmp_path):
    project = Project(root=str(tmp_path), data_dir=str(tmp_path / "d"), runs_dir=str(tmp_path / "r"))
    run = Run.create("cuhk01", "cross", "cpu", "random2", source_split="random0", project=project)
    assert run.dir == str(tmp_path / "r" / "cuhk01-cross-cpu-random2")
    assert run.snapshot_prefix == str(tmp_path / "r" / "cuhk01-cross-cpu-random2" / "snapshots" / "cuhk01_cross")
    assert [d.dir for d in run.all_data] == [str(tmp_path / "d" / "cuhk01-cpu-random2"),
                                             str(tmp_path / "d" / "cuhk03-cpu-random0")]
    assert run.result("random") == str(tmp_path / "r" / "cuhk01-cross-cpu-random2" / "cmc-random.json")
    trp = Run.create("viper", "trp", "cpu", project=project)
    assert trp.dir.endswith("viper-mtdnet-cpu") and trp.result_dir.endswith("viper-trp-cpu")
    assert trp.mean_result_dir.endswith("viper-trp-cpu-random-mean")
    assert run.solver_settings() == (0.001, 5000)
    assert Run.create("prid2011", "mtdnet", "paper").solver_settings() == (pytest.approx(1e-4), 20000)
    assert Run.create("cuhk03detected", "mtdnet", "paper").solver_settings() == (0.001, 200000)
    with pytest.raises(MtdnetError, match="needs a target dataset other than cuhk03"):
        Run.create("cuhk03detected", "aug", "cpu")


def test_every_variant_is_complete():
    for v in variants.REGISTRY.values():
        assert v.deploy in nets.DEPLOY_NETS and (not v.net or v.net in nets.TRAIN_NETS), v.key
        assert v.table1 and v.title and v.table_type
        if v.net:
            generate.train_net_text(Run.create("synthetic" if not v.source else "viper", v.key, "tiny"))
        else:
            assert variants.get_variant(v.trains).net, f"{v.key} is scored with {v.trains}'s model"
    with pytest.raises(MtdnetError, match="registered twice"):
        variants.register(variants.get_variant("mtdnet"))
    with pytest.raises(MtdnetError, match="relative_cost 0 must be > 0"):
        variants.register(dataclasses.replace(variants.get_variant("mtdnet"), key="free", relative_cost=0))
    assert "free" not in variants.REGISTRY


# ---------------------------------------------------------------- a toy dataset and variant, end to end

@pytest.fixture
def toy():
    datasets.register(DatasetSpec("toy", "Toy", "tests.toy_registry"))
    nets.register_train_net("half", toy_registry.half_net)
    variants.register(Variant("half", "MTDnet-half", "Cls+Rnk", 7, "pair", "pair_score", net="half"))
    yield
    datasets.unregister("toy")
    variants.unregister("half")
    nets.TRAIN_NETS.pop("half")


def test_toy_dataset_and_variant_end_to_end(toy, tmp_project, quiet_log):
    project = tmp_project
    raw = toy_registry.write(os.path.join(project.root, "raw"))
    (m,) = prepare("toy", "tiny", "paper", project=project, root=raw, progress=False, log=quiet_log)
    assert m["counts"]["identities"]["test"] == toy_registry.N_TEST
    assert "prototxt/tiny/toy_half_train.prototxt" in generate.render(["tiny"], ["toy"], ["half"])
    run = Run.create("toy", "half", "tiny", project=project, overrides=["base_lr=0.002"])
    info = training.train(run, iters=60, progress=False)
    assert info["iterations"] == 60 and info["overrides"] == {"base_lr": 0.002}
    assert run.name == "toy-half-tiny+base_lr=0.002" and os.path.isdir(run.dir)
    net = open(run.train_net).read()
    assert 'loss_weight: 0.5' in net and "base_lr: 0.002" in open(run.solver).read()
    res = evaluate.evaluate(run, evaluate.Evaluation(), progress=False, log=quiet_log)
    assert (res["dataset"], res["variant"], res["gallery_size"]) == ("toy", "half", toy_registry.N_TEST)
    assert json.load(open(run.result("paper")))["overrides"] == {"base_lr": 0.002}
    md, _ = report.build_report(project.runs_dir)
    assert "| MTDnet-half | Cls+Rnk | ours: from scratch, paper protocol, paper split, tiny +base_lr=0.002 profile |" in md
    assert "Toy r=1" in md


def test_cuhk03_detected_prepared_by_option_is_found_by_name(tmp_path):
    """`make data DATASET=cuhk03 DATA_ARGS="--cuhk03-images detected"` writes what
    DATASET=cuhk03detected trains and evaluates on."""
    mat = str(tmp_path / "c3" / "cuhk-03.mat")
    F.write_cuhk03(mat, [8, 6, 6, 0, 0], h=12, w=6)
    py = [sys.executable]
    p = subprocess.run(py + ["tools/prepare_data.py", "--dataset", "cuhk03", "--cuhk03-images", "detected",
                             "--profile", "tiny", "--split", "random0", "--data-root", mat, "--num-val", "2", "--num-test", "4",
                             "--data-dir", str(tmp_path / "data"), "--no-progress"],
                       cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    run = Run.create("cuhk03detected", "mtdnet", "tiny", "random0", project=Project(data_dir=str(tmp_path / "data")))
    assert run.data.exists() and os.path.basename(run.data.dir) == "cuhk03detected-tiny-random0"
    assert run.data == DataSpec(get_dataset("cuhk03", images="detected"), get_profile("tiny"), Split("random", 0),
                                run.project)
    p = subprocess.run(py + ["tools/train.py", "--dataset", "cuhk03detected", "--profile", "tiny", "--split",
                             "random0", "--iters", "2", "--data-dir", str(tmp_path / "data"),
                             "--runs-dir", str(tmp_path / "runs")],
                       cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    assert os.path.isfile(os.path.join(tmp_path, "runs", "cuhk03detected-mtdnet-tiny-random0",
                                       "snapshots", "cuhk03detected_mtdnet_iter_2.caffemodel"))


def test_split_options_key_the_build():
    assert SplitOptions(num_test=3).key() != SplitOptions().key()


def test_every_rule_a_variant_may_name_has_its_one_implementation():
    from mtdnet import training
    assert set(training.WITHOUT_WEIGHTS) == set(training.FROM_OUR_MODEL) == set(variants.INIT_RULES)
    assert set(generate.SOURCE_READS) == set(variants.SOURCE_USES)
    from mtdnet import report
    assert set(report.ORIGINS) == set(training.INIT_KINDS)     # every recorded init_kind has its row
    assert {v.net for v in variants.trained_variants()} <= set(nets.TRAIN_NETS)
    assert {v.deploy for v in variants.REGISTRY.values()} <= set(nets.DEPLOY_NETS)


def test_each_readers_name_is_its_registry_title():
    """The title is said twice (the reader's NAME for its messages, the registry's for tables):
    they must agree."""
    from data_prep.datasets import get_reader
    for name in datasets.names():
        d = datasets.get_dataset(name)
        assert get_reader(d).NAME == d.spec.title, name
