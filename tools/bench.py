#!/usr/bin/env python
"""make bench: speed and memory on this machine, printed and written to runs/bench/results.json.

Parts (--parts, default all): caffe (our Caffe build's CPU fast path vs its
stock code, scratch and paper MTDnet train nets), scoring (fast vs naive pair scorer at the paper and
cpu profiles), memory (peak RSS of scoring 1000 x 10000 with the fast scorer),
train (caffe train with our data layer vs caffe time of the same net), prep
(make data images/s on VIPeR), cmc (a 10000 x 10000 score matrix). Each
measurement runs in its own child process. See mtdnet/bench.py for what each
number means. Takes ~7 minutes at the defaults on 2 cores; --quick: seconds,
tiny profile, synthetic data (the code paths, not representative numbers;
written only with --out).

Examples:
  python tools/bench.py
  python tools/bench.py --parts scoring --blocks paper=8x8,cpu=16x16
  python tools/bench.py --parts cmc,prep --out /tmp/bench.json
  python tools/bench.py --quick
"""
import argparse
import sys

from mtdnet.cli import cli_main


def main(argv=None):
    from mtdnet import bench
    from core import datasets
    d = bench.Settings()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", help=f"comma-separated, from: {', '.join(bench.PARTS)} (default: all)")
    ap.add_argument("--quick", action="store_true", help="seconds, tiny profile: a smoke run of every code path")
    ap.add_argument("--out", help="results JSON (default runs/bench/results.json; --quick: none unless given)")
    ap.add_argument("--blocks", help="scoring: profile=PxG,... (default "
                    + ",".join(f"{k}={p}x{g}" for k, (p, g) in d.blocks.items()) + ")")
    ap.add_argument("--memory-profile", help=f"memory: profile (default {d.memory_profile})")
    ap.add_argument("--memory-size", help="memory: PxG probes x gallery images "
                    f"(default {d.memory_probes}x{d.memory_gallery})")
    ap.add_argument("--memory-budget-mb", type=float,
                    help=f"memory: the fast scorer's cache budget, MiB (default {d.memory_budget_mb:g})")
    ap.add_argument("--memory-pair-batches", type=int,
                    help=f"memory: pair batches scored before stopping (default {d.memory_pair_batches})")
    ap.add_argument("--train-profile", help=f"train: profile (default {d.train_profile})")
    ap.add_argument("--train-iters", type=int, help=f"train: timed iterations per run (default {d.train_iters})")
    ap.add_argument("--train-warmup", type=int,
                    help=f"train: untimed first iterations of caffe train (default {d.train_warmup})")
    ap.add_argument("--train-rounds", type=int, help=f"train: alternations of the three runs (default {d.train_rounds})")
    ap.add_argument("--prep-dataset", help=f"prep: one of {', '.join(datasets.names())} (default {d.prep_dataset})")
    ap.add_argument("--prep-profile", help=f"prep: profile (default {d.prep_profile})")
    ap.add_argument("--prep-root", help="prep: the dataset's raw folder (default: the usual place)")
    ap.add_argument("--cmc-size", type=int, help=f"cmc: N of the N x N score matrix (default {d.cmc_size})")
    ap.add_argument("--cmc-loop-probes", type=int, help=f"cmc: probes checked with the loop (default {d.cmc_loop_probes})")
    ap.add_argument("--caffe-runs", help="caffe: profile=ITERSxROUNDS,... (default "
                    + ",".join(f"{k}={i}x{r}" for k, (i, r) in d.caffe_runs.items()) + ")")
    ap.add_argument("--seed", type=int, help=f"seed of the random nets, images and scores (default {d.seed})")
    a = ap.parse_args(argv)

    settings = bench.settings_from_args(a)
    out = a.out if a.out or a.quick else bench.DEFAULT_OUT
    bench.run(settings, out=out)
    return 0


if __name__ == "__main__":
    sys.exit(cli_main(main))
