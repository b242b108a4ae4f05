#!/usr/bin/env python
"""make train: train one MTDnet variant on one dataset with the generated solver.

Examples:
  python tools/train.py --dataset synthetic --variant mtdnet --profile tiny --iters 300
  python tools/train.py --dataset viper --variant mtdnet --profile cpu \\
      --weights runs/cuhk03-mtdnet-cpu/snapshots/cuhk03_mtdnet_iter_50000.caffemodel
Re-running the same command resumes from the newest snapshot that loads; Ctrl-C
(or kill, or a closed terminal) stops with a snapshot. One command per run at a
time: a second one stops at once ("already running (pid N)").
"""
import argparse

from mtdnet.cli import add_experiment_args, add_flag, cli_main, run_from_args


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_experiment_args(ap, split_help="paper, val (tuning: held-out training identities) or random<k>")
    ap.add_argument("--source-split", default="paper", help="the CUHK03 split aug / cross read (default paper)")
    ap.add_argument("--iters", type=int, help="max_iter (default: the profile's for this dataset)")
    ap.add_argument("--weights", help="an ImageNet CaffeNet/AlexNet caffemodel (conv1/conv2 are copied) "
                                      "or an MTDnet model (CUHK03) to fine-tune from")
    add_flag(ap, "--gpu", help="solver_mode GPU (needs `make setup CUDA=1`)")
    add_flag(ap, "--restart",
             help="start the run again (from --weights or the fillers) instead of resuming; the "
                         "earlier run is moved into <run>/previous-<time>/, nothing is deleted")
    ap.add_argument("--no-progress", action="store_true")
    a = ap.parse_args()
    from mtdnet import training
    training.train(run_from_args(a, source_split=a.source_split), a.iters, a.weights, a.gpu,
                   progress=not a.no_progress, restart=a.restart)


if __name__ == "__main__":
    cli_main(main)
