#!/usr/bin/env python
"""make bench: speed and memory on this machine, printed and written to bench/results.json.

Parts (--parts, default all): scoring (fast vs naive pair scorer at the paper and
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
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from spec import MtdnetError  # noqa: E402
from mtdnet.cli import cli_main  # noqa: E402


def parse_blocks(text):
    """'paper=16x16,cpu=32x32' -> {'paper': (16, 16), 'cpu': (32, 32)}."""
    from spec.profiles import get_profile
    out = {}
    for item in filter(None, (x.strip() for x in text.split(","))):
        try:
            prof, size = item.split("=")
            p, g = (int(v) for v in size.lower().split("x"))
        except ValueError:
            raise MtdnetError(f"--blocks: '{item}' is not <profile>=<P>x<G> (e.g. paper=16x16)") from None
        get_profile(prof)
        if p < 1 or g < 1:
            raise MtdnetError(f"--blocks: '{item}': P and G must be >= 1")
        out[prof] = (p, g)
    if not out:
        raise MtdnetError("--blocks: no block given")
    return out


def positive(name, v):
    if v is not None and v <= 0:
        raise MtdnetError(f"{name} must be > 0, got {v}")
    return v


def main(argv=None):
    from mtdnet import bench
    from spec.profiles import DATASETS, get_profile
    d = bench.Settings()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", help=f"comma-separated, from: {', '.join(bench.PARTS)} (default: all)")
    ap.add_argument("--quick", action="store_true", help="seconds, tiny profile: a smoke run of every code path")
    ap.add_argument("--out", help="results JSON (default bench/results.json; --quick: none unless given)")
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
    ap.add_argument("--prep-dataset", help=f"prep: one of {', '.join(DATASETS)} (default {d.prep_dataset})")
    ap.add_argument("--prep-profile", help=f"prep: profile (default {d.prep_profile})")
    ap.add_argument("--prep-root", help="prep: the dataset's raw folder (default: the usual place)")
    ap.add_argument("--cmc-size", type=int, help=f"cmc: N of the N x N score matrix (default {d.cmc_size})")
    ap.add_argument("--cmc-loop-probes", type=int, help=f"cmc: probes checked with the loop (default {d.cmc_loop_probes})")
    ap.add_argument("--seed", type=int, help=f"seed of the random nets, images and scores (default {d.seed})")
    a = ap.parse_args(argv)

    kw = {}
    if a.parts:
        parts = tuple(p.strip() for p in a.parts.split(",") if p.strip())
        bad = [p for p in parts if p not in bench.PARTS]
        if bad or not parts:
            raise MtdnetError(f"--parts: unknown part(s) {', '.join(bad) or '(none)'}; valid: {', '.join(bench.PARTS)}")
        kw["parts"] = parts
    if a.blocks:
        kw["blocks"] = parse_blocks(a.blocks)
    if a.memory_size:
        try:
            kw["memory_probes"], kw["memory_gallery"] = (int(v) for v in a.memory_size.lower().split("x"))
        except ValueError:
            raise MtdnetError(f"--memory-size: '{a.memory_size}' is not PxG (e.g. 1000x10000)") from None
        positive("--memory-size", min(kw["memory_probes"], kw["memory_gallery"]))
    for prof in ("memory_profile", "train_profile", "prep_profile"):
        if getattr(a, prof):
            kw[prof] = get_profile(getattr(a, prof)).name
    for name in ("memory_budget_mb", "memory_pair_batches", "train_iters", "train_rounds", "cmc_size",
                 "cmc_loop_probes"):
        if getattr(a, name) is not None:
            kw[name] = positive("--" + name.replace("_", "-"), getattr(a, name))
    if a.train_warmup is not None:
        if a.train_warmup < 0:
            raise MtdnetError(f"--train-warmup must be >= 0, got {a.train_warmup}")
        kw["train_warmup"] = a.train_warmup
    if a.prep_dataset:
        from spec.profiles import check_dataset
        kw["prep_dataset"] = check_dataset(a.prep_dataset)
    if a.prep_root:
        kw["prep_root"] = os.path.abspath(a.prep_root)
    if a.seed is not None:
        kw["seed"] = a.seed
    settings = bench.quick_settings(**kw) if a.quick else bench.Settings(**kw)
    out = a.out if a.out or a.quick else bench.DEFAULT_OUT
    bench.run(settings, out=out)
    return 0


if __name__ == "__main__":
    sys.exit(cli_main(main))
