#!/usr/bin/env python
"""Record the golden blob values of every variant's train net from stock Caffe.

Run with the unpatched build (the reference the CPU fast path is checked
against by tests/test_caffe_fast.py):

  STOCK=1 bash scripts/setup.sh                       # builds it (cached), prints its python/ path
  PYTHONPATH=<that path> python tools/record_caffe_golden.py

Writes tests/data/caffe_stock_golden.npz (seeded samples of every blob's data and
diff and every parameter's diff after one forward + backward, per net).
"""
import argparse
import sys

from mtdnet.cli import cli_main


def main(argv=None):
    from mtdnet import caffe_speed
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=caffe_speed.GOLDEN_PATH, help="the golden file (default %(default)s)")
    a = ap.parse_args(argv)
    caffe_speed.record_golden(a.out)
    return 0


if __name__ == "__main__":
    sys.exit(cli_main(main))
