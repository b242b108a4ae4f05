"""`make demo`: the whole job on the built-in synthetic data in about two minutes on 2 CPU cores.

  1. make data    the synthetic dataset (300 people, 2 cameras), tiny profile, paper split
  2. make train   MTDnet from scratch, tiny profile, its default iterations
  3. make eval    MTDnet (pair score) and MTDnet-trp (triplet features) on the 100 test people
  4. make report  Table 1 and the pictures

Everything goes to data/demo/ and runs/demo/, a project of its own: the demo
never reads or writes a user's data/ or runs/ (and `make report` of runs/
does not list it). Run again, it finds its data and model and only evaluates.
"""
import os
import sys
import time

from core import REPO_ROOT, Project, Run
from data_prep.build import prepare
from mtdnet import evaluate, training
from mtdnet.report import build_report

DATASET, VARIANT, SCORED_ALSO, PROFILE = "synthetic", "mtdnet", "trp", "tiny"


def demo_project(root=REPO_ROOT):
    return Project(root=root, data_dir=os.path.join(root, "data", "demo"),
                   runs_dir=os.path.join(root, "runs", "demo"))


def demo(project=None, iters=None, restart=False, progress=True, log=print):
    """Run the four steps; returns {variant: cmc.json dict}."""
    project = project or demo_project()
    bars = progress and sys.stderr.isatty()   # training prints plain progress lines otherwise
    t0 = time.time()

    k = 0

    def step(text):
        nonlocal k
        k += 1
        log(f"\n== demo {k}/5: {text} ({time.time() - t0:.0f} s)")

    step(f"make data DATASET={DATASET} PROFILE={PROFILE}")
    prepare(DATASET, PROFILE, "paper", project=project, progress=bars, log=log)
    run = Run.create(DATASET, VARIANT, PROFILE, project=project)
    step(f"make train DATASET={DATASET} VARIANT={VARIANT} PROFILE={PROFILE}"
            + (f" ITERS={iters}" if iters else ""))
    info = training.train(run, iters=iters, progress=progress, restart=restart)
    results = {}
    for variant in (VARIANT, SCORED_ALSO):
        step(f"make eval DATASET={DATASET} VARIANT={variant} PROFILE={PROFILE}"
             + (" (the same model, ranked by its triplet features)" if variant == SCORED_ALSO else ""))
        results[variant] = evaluate.evaluate(run.with_variant(variant), progress=bars, log=log)
    step("make report")
    _, written = build_report(project.runs_dir)
    log("\n" + summary(run, info, results, written, time.time() - t0))
    return results


def summary(run, info, results, written, seconds):
    """What the demo learnt, against chance, and where the pictures are."""
    project = run.project
    lines = [f"demo done in {seconds:.0f} s. MTDnet, trained from scratch for {info.get('iterations')} "
             f"iterations ({PROFILE} profile), finds each test person's camera-A image among the "
             "camera-B images of all test people:"]
    for variant, r in results.items():
        chance = 100.0 / r["gallery_size"]
        how = "pair score" if r["score_kind"] == "pair" else "triplet features"
        lines.append(f"  {run.with_variant(variant).variant.title:<11} {how:<17} rank-1 {r['rank1']:5.1f}%  "
                     f"rank-5 {r['rank5']:5.1f}%  mAP {r['mAP']:5.1f}%   chance: rank-1 {chance:.1f}% "
                     f"({r['gallery_size']} people), so {r['rank1'] / chance:.0f}x chance")
    first = run.with_variant(VARIANT)
    lines += ["pictures:",
              f"  CMC curve       {project.rel(first.result('paper', 'cmc', 'png'))}",
              f"  ranked gallery  {project.rel(first.result('paper', 'ranked', 'png'))}  "
              "(each probe and its top 10; the true match framed in green)",
              f"  loss curve      {project.rel(run.loss_png)}",
              f"  report          {project.rel(written[0])}",
              "next: real VIPeR in about 30 minutes (README, Quick start)."]
    return "\n".join(lines)
