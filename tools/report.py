#!/usr/bin/env python
"""make report: the Table 1 report from every `make eval` result under runs/.

Writes runs/report.md (our numbers beside the paper's, each labelled with its
protocol, split, profile, initialisation and iterations), runs/report_cmc.png
(all CMC curves) and runs/report_ranked_<dataset>.png (the best run's ranked
gallery per dataset), and prints the Markdown. With --out (a docs page) the results that
page already cites and runs/ lacks stay in it, unless their training under runs/ has changed.
"""
import argparse
import os
import sys

from mtdnet.cli import cli_main


def main(argv=None):
    from core import REPO_ROOT
    from mtdnet.report import build_report
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs-dir", default=os.path.join(REPO_ROOT, "runs"),
                    help="the runs folder to report on and write into (default: runs/)")
    ap.add_argument("--out", default=None,
                    help="write the report there instead (a docs page), with copies of the result and "
                         "run records its notes cite")
    ap.add_argument("--only-runs", action="store_true",
                    help="with --out: leave out the results that folder already cites and the runs "
                         "folder lacks (kept by default)")
    a = ap.parse_args(argv)
    md, written = build_report(os.path.abspath(a.runs_dir), a.out and os.path.abspath(a.out),
                               keep=not a.only_runs, warn=lambda m: print("warning: " + m, file=sys.stderr))
    print(md)
    print("wrote " + ", ".join(written), file=sys.stderr)
    return 0


if __name__ == "__main__":
    cli_main(main)
