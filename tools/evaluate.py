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

from mtdnet.cli import add_experiment_args, add_flag, bars, cli_main, run_from_args


def main(argv=None):
    # Caffe's glog chatter on every net construction would hide the progress bars.
    os.environ.setdefault("GLOG_minloglevel", "2")
    from mtdnet import evaluate as E
    from mtdnet.scoring import PAIR_SCORERS
    from mtdnet.trials import PROTOCOLS
    from core import Split
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_experiment_args(ap, split_help="paper, val, random<k>, or random = every random<k> run present "
                                       "(and their mean)")
    ap.add_argument("--splits", help="comma-separated random<k> splits to evaluate and average")
    ap.add_argument("--combine-only", action="store_true",
                    help="with --splits/--split random: average the splits' existing results, score nothing")
    ap.add_argument("--protocol", default="paper", help=f"one of {', '.join(PROTOCOLS)}")
    ap.add_argument("--trials", type=int, default=E.DEFAULT_TRIALS, help="random protocol: gallery draws")
    ap.add_argument("--seed", type=int, help="random protocol: seed of the draws (default: the profile's)")
    ap.add_argument("--model", help="a .caffemodel (default: the run's newest snapshot)")
    ap.add_argument("--scorer", default="fast", help=f"pair scorer: {', '.join(PAIR_SCORERS)}")
    add_flag(ap, "--gpu", help="score on the GPU (needs `make setup CUDA=1`)")
    ap.add_argument("--on", default="test", choices=("test", "val"),
                    help="rank the split's test identities (default) or its validation identities")
    add_flag(ap, "--select-on-val",
             help="evaluate every snapshot on the validation identities, then the best one on test")
    ap.add_argument("--no-progress", action="store_true")
    a = ap.parse_args(argv)
    ev = E.Evaluation(a.protocol, a.trials, a.seed, a.model, a.scorer, a.gpu, a.on)
    split = Split.parse(a.split)
    if a.splits or not split.concrete:
        a.split = "paper"
        run = run_from_args(a)
        splits = [s.strip() for s in a.splits.split(",") if s.strip()] if a.splits else \
            E.random_splits_present(run)
        E.evaluate_splits(run, splits, ev, combine_only=a.combine_only, progress=bars(a))
    elif a.select_on_val:
        E.select_snapshot(run_from_args(a), ev, progress=bars(a))
    else:
        E.evaluate(run_from_args(a), ev, progress=bars(a))
    return 0


if __name__ == "__main__":
    cli_main(main)
