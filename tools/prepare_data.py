#!/usr/bin/env python3
"""Prepare a dataset for training: image LMDB, triplets, split and manifest (`make data`).

Examples:
  tools/prepare_data.py                                   # synthetic, cpu profile, paper split
  tools/prepare_data.py --dataset viper --profile paper
  tools/prepare_data.py --dataset cuhk03 --data-root /data/cuhk03_release --split testsets
  tools/prepare_data.py --dataset prid2011 --split random --num-splits 10
"""
import argparse
import sys

from mtdnet.cli import add_experiment_args, bars, cli_main, overrides, project


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_experiment_args(p, variant=False)
    p.add_argument("--out-dir", dest="data_dir", help=argparse.SUPPRESS)   # the old name of --data-dir
    p.add_argument("--data-root", default=None,
                   help="the dataset as distributed (default: <datasets dir>/<Name>, the datasets dir "
                        "being $MTDNET_DATASETS or ../shared/datasets beside the repo; synthetic: "
                        "data/raw/synthetic, generated there)")
    p.add_argument("--num-splits", type=int, default=10, help="random splits made by --split random")
    p.add_argument("--seed", type=int, default=None, help="split/triplet seed (default: the profile's)")
    p.add_argument("--num-test", type=int, default=None, help="test identities of random and val splits "
                   "(default: the paper protocol's; val: a third)")
    p.add_argument("--num-val", type=int, default=None, help="validation identities (default: the protocol's)")
    p.add_argument("--cuhk03-images", choices=("labeled", "detected"), default=None,
                   help="CUHK03's image set (the same as --dataset cuhk03detected)")
    p.add_argument("--force", action="store_true", help="rebuild even when up to date")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--synthetic-ids", type=int, default=None, help="synthetic: number of people")
    p.add_argument("--synthetic-test", type=int, default=None, help="synthetic: test people")
    p.add_argument("--synthetic-seed", type=int, default=None, help="synthetic: generator seed")
    return p.parse_args(argv)


def main(argv=None):
    from data_prep.build import SplitOptions, prepare
    from core import get_dataset, get_profile
    a = parse_args(argv)
    dataset = get_dataset(a.dataset, images=a.cuhk03_images) if a.cuhk03_images else get_dataset(a.dataset)
    syn = {"num_ids": a.synthetic_ids, "num_test": a.synthetic_test, "seed": a.synthetic_seed}
    prepare(dataset, get_profile(a.profile, overrides(a)), a.split,
            SplitOptions(a.seed, a.num_splits, a.num_test, a.num_val), project=project(a),
            root=a.data_root, force=a.force, progress=bars(a), synthetic_params=syn,
            argv=sys.argv if argv is None else argv)


if __name__ == "__main__":
    cli_main(main)
