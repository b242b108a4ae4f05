#!/usr/bin/env python
"""make demo: data, a tiny MTDnet, evaluation and report on the built-in synthetic data (~2 minutes).

Writes only data/demo/ and runs/demo/. Run again, it reuses its data and model.
"""
import argparse
import os

from mtdnet.cli import add_flag, cli_main


def main(argv=None):
    # Caffe's glog chatter on every net construction would hide the progress.
    os.environ.setdefault("GLOG_minloglevel", "2")
    from mtdnet.demo import demo
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iters", type=int, help="training iterations (default: the tiny profile's)")
    add_flag(ap, "--restart", help="train the demo's model again from scratch")
    ap.add_argument("--no-progress", action="store_true")
    a = ap.parse_args(argv)
    demo(iters=a.iters, restart=a.restart, progress=not a.no_progress)
    return 0


if __name__ == "__main__":
    cli_main(main)
