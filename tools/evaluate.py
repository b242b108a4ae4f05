#!/usr/bin/env python
"""make eval: single-shot CMC of a trained model (rank 1/5/10/20, the whole curve, mAP).

Examples:
  python tools/evaluate.py --dataset synthetic --variant mtdnet --profile tiny
  python tools/evaluate.py --dataset viper --variant trp --profile cpu --protocol random --trials 10
  python tools/evaluate.py --dataset viper --variant mtdnet --profile cpu --split random   # all random<k> runs
  python tools/evaluate.py --dataset viper --variant mtdnet --profile cpu --splits random0,random1

Writes runs/<dataset>-<variant>-<profile>[-<split>]/cmc-<protocol>.json (and cmc.json),
cmc-<protocol>.png, ranked-<protocol>.png, scores-<protocol>.npz. Several random
splits: each split's own results, plus their mean in
runs/<dataset>-<variant>-<profile>-random-mean/.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mtdnet.fsutil import cli_main  # noqa: E402
from mtdnet.profiles import DATASETS, PROFILES, VARIANTS  # noqa: E402


def main(argv=None):
    from mtdnet import evaluate as E
    from mtdnet.protocols import PROTOCOLS
    from mtdnet.scoring import PAIR_SCORERS
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="synthetic", help=f"one of {', '.join(DATASETS)}")
    ap.add_argument("--variant", default="mtdnet", help=f"one of {', '.join(VARIANTS)}")
    ap.add_argument("--profile", default="cpu", help=f"one of {', '.join(PROFILES)}")
    ap.add_argument("--split", default="paper",
                    help="paper, val, random<k>, or random = every random<k> run present (and their mean)")
    ap.add_argument("--splits", help="comma-separated random<k> splits to evaluate and average")
    ap.add_argument("--combine-only", action="store_true",
                    help="with --splits/--split random: average the splits' existing results, score nothing")
    ap.add_argument("--protocol", default="paper", help=f"one of {', '.join(PROTOCOLS)}")
    ap.add_argument("--trials", type=int, default=E.DEFAULT_TRIALS, help="random protocol: gallery draws")
    ap.add_argument("--seed", type=int, help="random protocol: seed of the draws (default: the profile's)")
    ap.add_argument("--model", help="a .caffemodel (default: the run's newest snapshot)")
    ap.add_argument("--scorer", default="fast", help=f"pair scorer: {', '.join(PAIR_SCORERS)}")
    ap.add_argument("--data-dir", help="where `make data` put the prepared splits (default: data/)")
    ap.add_argument("--runs-dir", help="the runs folder (default: runs/)")
    ap.add_argument("--no-progress", action="store_true")
    a = ap.parse_args(argv)
    common = dict(protocol=a.protocol, trials=a.trials, data_dir=a.data_dir, runs_dir=a.runs_dir,
                  scorer=a.scorer, seed=a.seed, progress=not a.no_progress)
    if a.splits or a.split == "random":
        if a.model:
            from mtdnet import MtdnetError
            raise MtdnetError("--model names one model; several splits use each split's own run")
        _, runs_dir = E.default_dirs(a.data_dir, a.runs_dir)
        splits = [s.strip() for s in a.splits.split(",") if s.strip()] if a.splits else \
            E.random_splits_present(a.dataset, a.variant, a.profile, runs_dir)
        E.evaluate_splits(a.dataset, a.variant, a.profile, splits, combine_only=a.combine_only, **common)
    else:
        E.evaluate(a.dataset, a.variant, a.profile, a.split, model=a.model, **common)
    return 0


if __name__ == "__main__":
    cli_main(main)
