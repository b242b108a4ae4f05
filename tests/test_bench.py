"""`make bench` code paths: the real CLI in --quick mode (tiny profile, real Caffe,
real caffe train / caffe time, a real prepared dataset), its checks and its
parsing. No timing is asserted: benchmarks are not tests."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from core import REPO_ROOT
from mtdnet import bench, caffelog

TOOL = [sys.executable, os.path.join(REPO_ROOT, "tools", "bench.py")]


def run_tool(*args):
    p = subprocess.run(TOOL + list(args), cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    return p.returncode, p.stdout, p.stderr


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("bench") / "results.json")
    rc, stdout, stderr = run_tool("--quick", "--out", out)
    assert rc == 0, stderr[-3000:]
    with open(out) as f:
        return json.load(f), stdout


def test_quick_run_writes_every_headline_key(quick):
    doc, stdout = quick
    for key in ("scoring_speedup_tiny", "scoring_max_abs_diff", "train_overhead", "prep_images_per_s",
                "cmc_400_seconds", "memory_peak_rss_mb"):
        assert isinstance(doc[key], float) and math.isfinite(doc[key]), key
    assert doc["settings"]["quick"] is True and doc["settings"]["parts"] == list(bench.PARTS)
    m = doc["machine"]
    assert m["cores"] >= 1 and m["cpu"] and m["date"].endswith("Z") and len(m["git_commit"]) == 40
    # The table names every part.
    for part in ("scoring", "memory", "train", "prep", "cmc", "caffe"):
        assert f"\n{part}" in stdout


def test_scoring_agrees_and_counts_its_pairs(quick):
    r = quick[0]["scoring"]["tiny"]
    assert (r["probes"], r["gallery"], r["pairs"]) == (4, 5, 20)
    # The calibrated random weights spread the scores, so a wrong pairing would show.
    assert r["score_std"] > 0.02 and 0.05 < r["score_mean"] < 0.95
    assert r["max_abs_diff"] < 1e-5
    assert r["fast_pairs_per_s"] > 0 and r["naive_pairs_per_s"] > 0
    # Interleaved: the naive scorer in pair-batch chunks of whole probe rows, the fast one
    # on the whole block between them.
    assert (r["naive_chunks"], r["naive_chunk_pairs"], r["fast_runs"]) == (1, 20, 2)
    assert r["fast_seconds"] == min(r["fast_seconds_all"])
    assert r["speedup"] == pytest.approx(r["fast_pairs_per_s"] / r["naive_pairs_per_s"])
    assert r["flop_ratio_limit"] > r["flop_ratio_block"] > 1


def test_memory_case_runs_in_blocks_within_the_budget(quick):
    r = quick[0]["memory"]
    assert (r["probes"], r["gallery"]) == (30, 200)
    assert r["cache_unbounded_bytes"] > r["budget_bytes"] >= r["cache_bytes"]
    assert r["probe_blocks"] > 1 and r["gallery_blocks"] > 1
    assert r["pairs_scored"] == 4 * 64      # stopped after the bounded number of pair batches
    assert r["child_peak_rss_mb"] >= r["rss_after_images_mb"] >= r["rss_after_net_mb"] > 0


def test_train_prep_and_cmc_parts(quick):
    doc = quick[0]
    t = doc["train"]
    assert (t["iterations"], t["rounds"], t["batch_triplets"]) == (3, 1, 16)
    assert min(t["train_s_per_iter"], t["caffe_time_s_per_iter"], t["caffe_time_zeros_s_per_iter"],
               t["data_layer_s_per_batch"]) > 0
    assert t["overhead"] == pytest.approx(t["train_s_per_iter"] / t["caffe_time_s_per_iter"] - 1)
    assert t["overhead_vs_zero_input"] == pytest.approx(t["train_s_per_iter"] / t["caffe_time_zeros_s_per_iter"] - 1)
    # Every run's iterations were read: caffe train's from its log, caffe time's from its output.
    assert [t["seconds_per_iter"][k]["n"] for k in ("train", "time_real", "time_zeros")] == [3, 3, 3]
    p = doc["prep"]
    assert p["dataset"] == "synthetic" and p["images"] == 200 and p["images_per_s"] > 0
    c = doc["cmc"]
    assert c["size"] == 400 and c["loop_probes"] == 400 and c["loop_agrees"] is True
    assert c["probes_with_tied_match"] > 0      # the 1e-4 grid makes ties: the tie rule is exercised


def test_caffe_part_times_every_code_path_of_one_build(quick):
    doc = quick[0]
    r = doc["caffe"]["tiny"]
    st, im, fa = r["modes"]["stock"], r["modes"]["im2col"], r["modes"]["fast"]
    assert r["threads"]["fast"] >= 1 and r["threads"]["stock"] >= 1
    assert st["n"] == fa["n"] == im["n"] == 2 and min(st["s_per_iter"], fa["s_per_iter"]) > 0
    assert r["speedup"] == pytest.approx(st["s_per_iter"] / fa["s_per_iter"])
    assert r["speedup_im2col"] == pytest.approx(st["s_per_iter"] / im["s_per_iter"])
    assert doc["caffe_speedup_tiny"] == r["speedup"]
    assert r["gflop_per_iter"] > 0 and r["gemm_peak_gflops"] > 0
    assert fa["peak_fraction"] == pytest.approx(r["gflop_per_iter"] / fa["s_per_iter"] / r["gemm_peak_gflops"])
    assert r["memory_ratio"] == pytest.approx(fa["peak_rss_mb"] / st["peak_rss_mb"])
    names = [x["name"] for x in st["layers"]]
    assert names == [x["name"] for x in fa["layers"]] and "conv1" in names and "trp_loss" in names
    assert {"Convolution", "Pooling", "LRN", "ReLU"} <= set(r["by_type"])
    assert set(r["by_type"]["Convolution"]) == {"stock_s", "im2col_s", "fast_s"}


def test_results_go_where_git_ignores_them():
    assert bench.DEFAULT_OUT.startswith(os.path.join(REPO_ROOT, "runs") + os.sep)
    p = subprocess.run(["git", "check-ignore", "-q", bench.DEFAULT_OUT], cwd=REPO_ROOT)
    assert p.returncode == 0


def test_bad_options_are_clear_errors(tmp_path):
    for args, msg in ((["--parts", "scoring,bogus"], "unknown part(s) bogus"),
                      (["--blocks", "paper=16"], "'paper=16' is not <profile>=<P>x<G>"),
                      (["--blocks", "huge=4x4"], "unknown profile 'huge'"),
                      (["--memory-size", "10"], "'10' is not PxG"),
                      (["--cmc-size", "0"], "--cmc-size must be > 0")):
        rc, _, err = run_tool(*args, "--out", str(tmp_path / "r.json"))
        assert rc == 1 and msg in err, (args, err)
    assert not os.path.exists(tmp_path / "r.json")
    rc, out, _ = run_tool("--help")
    assert rc == 0 and "--quick" in out and "bench/results.json" in out


def test_caffe_log_iteration_times():
    # glog with the year (this Caffe) and without; across midnight.
    for day1, day2 in (("20261125", "20261126"), ("1125", "1126")):
        log = (f"I{day1} 23:59:59.500000 1 solver.cpp:231] Iteration 10, loss = 1.5\n"
               f"I{day1} 23:59:59.600000 1 sgd_solver.cpp:106] Iteration 10, lr = 0.001\n"
               f"I{day2} 00:00:00.250000 1 solver.cpp:231] Iteration 11, loss = nan\n"
               f"I{day2} 00:00:01.000000 1 solver.cpp:231] Iteration 12, loss = 1.2\n")
        t = caffelog.iteration_times(log)
        assert sorted(t) == [10, 11, 12]
        assert (t[11], t[12]) == (pytest.approx(0.75), pytest.approx(1.5))
    log = ("I1125 caffe.cpp:402] Iteration: 1 forward-backward time: 812 ms.\n"
           "I1125 caffe.cpp:402] Iteration: 2 forward-backward time: 790.5 ms.\n"
           "I1125 caffe.cpp:420] Average Forward-Backward: 801.2 ms.\n")
    assert caffelog.caffe_time_ms(log) == [812.0, 790.5]
    table = ("I1125 caffe.cpp:408]      conv1\tforward: 1.5 ms.\n"
             "I1125 caffe.cpp:411]      conv1\tbackward: 2.25 ms.\n"
             "I1125 caffe.cpp:408]  trp_loss\tforward: 0.125 ms.\n")
    assert caffelog.caffe_time_layers(log + table) == {"conv1": 3.75, "trp_loss": 0.125}


def test_pair_macs_split_the_net():
    net = bench.pair_net("tiny", seed=3)
    m = bench.pair_macs(net)
    # One whole-net pass = the trunk of both streams + conv3 + the head.
    assert m["full"] == 2 * m["trunk"] + m["conv3"] + m["head"]
    assert min(m.values()) > 0
    w = net.params["conv3_pair"][0].data
    assert m["conv3"] == int(np.prod(net.blobs["conv3_pair"].data.shape[1:])) * int(np.prod(w.shape[1:]))
