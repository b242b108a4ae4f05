#!/usr/bin/env python3
"""Publish a trained run's chosen model into models/<run>/ with its records and SHA256SUMS.

Examples:
  python tools/publish_model.py --dataset cuhk03detected --variant mtdnet --profile scratch --with trp
  python tools/publish_model.py --dataset cuhk03detected --variant mtdnet --profile scratch --resume
      (a run still training: its newest snapshot pair into models/resume/<run>/, which `make train`
      of the same run continues from on a machine without runs/<run>/)
"""
import argparse

from mtdnet.cli import add_experiment_args, cli_main, run_from_args


def main(argv=None):
    from mtdnet import models
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_experiment_args(ap)
    ap.add_argument("--with", dest="also", action="append", default=[],
                    help="another variant scored with this model whose test results go along (e.g. trp)")
    ap.add_argument("--resume", action="store_true",
                    help="keep the newest snapshot pair of a run still training (models/resume/<run>/)")
    a = ap.parse_args(argv)
    run = run_from_args(a)
    out = models.publish_resume(run) if a.resume else models.publish(run, [run.with_variant(v) for v in a.also])
    print(f"published {run.name} -> {out}")
    return 0


if __name__ == "__main__":
    cli_main(main)
