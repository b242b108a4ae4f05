#!/usr/bin/env python3
"""Pictures that compare runs: their CMC curves and how their train-net outputs evolve.

Examples:
  tools/compare_runs.py --cmc docs/viper_scratch_cmc.png \\
      runs/viper-mtdnet-scratch runs/viper-trp-scratch runs/viper-cls-scratch runs/viper-rnk-scratch
  tools/compare_runs.py --train docs/viper_scratch_loss.png --outputs accuracy,cls_loss \\
      runs/viper-mtdnet-cpu runs/viper-mtdnet-scratch

A run directory is what `make train` / `make eval` wrote: --cmc reads its
cmc-<protocol>.json, --train its train.log (evaluation-only runs such as
<dataset>-trp-... have no log of their own).
"""
import argparse
import os

from mtdnet.cli import cli_main


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="run directories (runs/<dataset>-<variant>-<profile>[-<split>])")
    ap.add_argument("--cmc", help="write their CMC curves to this PNG")
    ap.add_argument("--protocol", default="paper", help="which cmc-<protocol>.json (default paper)")
    ap.add_argument("--train", help="write their train-net outputs against iterations to this PNG")
    ap.add_argument("--outputs", default="accuracy,cls_loss", help="comma-separated train-net outputs")
    ap.add_argument("--title", default=None)
    a = ap.parse_args(argv)
    if not (a.cmc or a.train):
        ap.error("nothing to do: give --cmc and/or --train")
    return a


def main(argv=None):
    from mtdnet import plots
    from core.fsutil import read_json
    a = parse_args(argv)
    names = [os.path.basename(os.path.normpath(r)) for r in a.runs]
    if a.cmc:
        results = [(n, read_json(os.path.join(r, f"cmc-{a.protocol}.json"), f"result of {n} (run `make eval`)"))
                   for n, r in zip(names, a.runs)]
        print(plots.plot_cmc(results, a.cmc, title=a.title or f"CMC ({a.protocol} protocol)"))
    if a.train:
        logs = [(n, os.path.join(r, "train.log")) for n, r in zip(names, a.runs)]
        print(plots.plot_output_comparison(logs, a.outputs.split(","), a.train, title=a.title or "training"))


if __name__ == "__main__":
    cli_main(main)
