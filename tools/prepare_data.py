#!/usr/bin/env python3
"""Prepare a dataset for training: image LMDB, triplets, split and manifest (`make data`).

Examples:
  tools/prepare_data.py                                   # synthetic, cpu profile, paper split
  tools/prepare_data.py --dataset viper --profile paper
  tools/prepare_data.py --dataset cuhk03 --data-root /data/cuhk03_release --split testsets
  tools/prepare_data.py --dataset prid2011 --split random --num-splits 10
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mtdnet.fsutil import cli_main  # noqa: E402
from mtdnet.profiles import DATASETS, PROFILES  # noqa: E402


def parse_args(argv=None):
    from data_prep.protocol import SPLIT_HELP
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="synthetic", choices=DATASETS)
    p.add_argument("--data-root", default=None,
                   help="the dataset as distributed (default ../shared/datasets/<Name> beside the repo; "
                        "synthetic: data/raw/synthetic, generated there)")
    p.add_argument("--profile", default="cpu", choices=sorted(PROFILES))
    p.add_argument("--split", default="paper", help=SPLIT_HELP)
    p.add_argument("--num-splits", type=int, default=10, help="random splits made by --split random")
    p.add_argument("--seed", type=int, default=None, help="split/triplet seed (default: the profile's)")
    p.add_argument("--num-test", type=int, default=None, help="test identities of random splits "
                   "(default: the paper protocol's)")
    p.add_argument("--num-val", type=int, default=None, help="validation identities (default: the protocol's)")
    p.add_argument("--cuhk03-images", choices=("labeled", "detected"), default="labeled")
    p.add_argument("--out-dir", default=None, help="where the split directories go (default data/)")
    p.add_argument("--force", action="store_true", help="rebuild even when up to date")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--synthetic-ids", type=int, default=None, help="synthetic: number of people")
    p.add_argument("--synthetic-test", type=int, default=None, help="synthetic: test people")
    p.add_argument("--synthetic-seed", type=int, default=None, help="synthetic: generator seed")
    return p.parse_args(argv)


def main(argv=None):
    a = parse_args(argv)
    from data_prep.build import prepare
    options = {"images": a.cuhk03_images} if a.dataset == "cuhk03" else {}
    syn = {"num_ids": a.synthetic_ids, "num_test": a.synthetic_test, "seed": a.synthetic_seed}
    prepare(a.dataset, a.data_root, a.profile, a.split, a.out_dir, a.num_splits, a.seed,
            a.num_test, a.num_val, options, a.force, not a.no_progress,
            synthetic_params=syn, argv=sys.argv if argv is None else argv)


if __name__ == "__main__":
    cli_main(main)
