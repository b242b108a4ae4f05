"""make demo: the four steps on the synthetic data, into a project of its own (data/demo, runs/demo)."""
import os

from core import REPO_ROOT
from mtdnet import demo


def test_demo_runs_the_job_and_says_what_it_learnt_against_chance(tmp_path):
    said = []
    project = demo.demo_project(str(tmp_path))
    results = demo.demo(project, iters=30, progress=False, log=said.append)
    assert set(results) == {"mtdnet", "trp"}
    for r in results.values():
        assert r["gallery_size"] == 100 and r["iterations"] == 30
    text = "\n".join(said)
    assert "demo 5/5: make report" in text and text.count("demo 3/5") == 1 and "demo 4/5: make eval" in text
    summary = said[-1]
    assert "chance: rank-1 1.0% (100 people)" in summary
    for path in ("runs/demo/synthetic-mtdnet-tiny/cmc-paper.png", "runs/demo/synthetic-mtdnet-tiny/ranked-paper.png",
                 "runs/demo/report.md"):
        assert path in summary and os.path.getsize(tmp_path / path) > 0
    # Only its own folders: a user's data/ and runs/ hold nothing of the demo's.
    assert sorted(os.listdir(tmp_path)) == ["data", "runs"]
    assert os.listdir(tmp_path / "data") == ["demo"] and os.listdir(tmp_path / "runs") == ["demo"]
    assert demo.demo_project().runs_dir == os.path.join(REPO_ROOT, "runs", "demo")
