#!/usr/bin/env python3
"""make table1: every stage of the paper for the datasets present, in order, then the report.

Examples:
  python tools/table1.py --profile scratch --dry-run       # the plan, with expected times
  python tools/table1.py --profile scratch                 # run it (resumable)
  python tools/table1.py --profile scratch --splits random0,random1,random2   # and 3 random splits
  python tools/table1.py --profile paper --gpu --weights bvlc_reference_caffenet.caffemodel
"""
import argparse
import os

from mtdnet.cli import DEFAULTS, add_flag, cli_main


def main(argv=None):
    from mtdnet import table1
    from core import PROFILES
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default=DEFAULTS["PROFILE"],
                    help=f"one of {', '.join(PROFILES)} (default {DEFAULTS['PROFILE']})")
    add_flag(ap, "--gpu", help="train and score on the GPU (a CUDA build)")
    ap.add_argument("--weights", help="an ImageNet CaffeNet / AlexNet model for the source stage (paper profile)")
    add_flag(ap, "--dry-run", help="print the plan and the expected times; run nothing")
    ap.add_argument("--splits", default="",
                    help="random splits (e.g. random0,random1,random2) each target's MTDnet is also trained and "
                         "evaluated on, fine-tuned and from scratch; the report shows their mean and spread")
    a = ap.parse_args(argv)
    steps, notes = table1.plan(a.profile, a.gpu, os.path.abspath(a.weights) if a.weights else None,
                               splits=[x.strip() for x in a.splits.split(",") if x.strip()])
    if a.dry_run:
        print(table1.describe(steps, notes))
        return 0
    table1.run_plan(steps, notes)
    return 0


if __name__ == "__main__":
    cli_main(main)
