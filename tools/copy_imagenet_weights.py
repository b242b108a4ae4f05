#!/usr/bin/env python3
"""Copy conv1/conv2 of an ImageNet CaffeNet / AlexNet caffemodel into a fresh MTDnet model.

The other layers keep their (seeded) fillers, as the authors initialised them.
Shapes are asserted: a mismatch (e.g. a cpu- or tiny-profile net, whose widths
are not ImageNet's) or a missing file is an error, and nothing is written.
Writes OUT and OUT.json (the copied layers and the filler seed). Train from it with
`caffe train -solver solvers/paper/<dataset>_mtdnet_solver.prototxt -weights OUT` (BVLC
Caffe; the pinned build's `train` ignores -weights until setup patches it), or in
pycaffe with solver.net.copy_from(OUT).
"""
import argparse

from mtdnet.cli import cli_main
from prototxt.weights import IMAGENET_LAYERS, init_from_imagenet


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--imagenet", required=True, help="ImageNet model, e.g. bvlc_reference_caffenet.caffemodel")
    ap.add_argument("--net", required=True, help="the MTDnet net prototxt, e.g. prototxt/paper/viper_mtdnet_train.prototxt")
    ap.add_argument("--out", required=True, help="the .caffemodel to write")
    ap.add_argument("--seed", type=int, help="filler seed (default: the net's data-layer seed, i.e. the profile's)")
    ap.add_argument("--layers", default=",".join(IMAGENET_LAYERS), help="layers to copy (default conv1,conv2)")
    a = ap.parse_args()
    rec = init_from_imagenet(a.imagenet, a.net, a.out, a.seed, tuple(x for x in a.layers.split(",") if x))
    for name, shapes in rec["copied"].items():
        print(f"copied {name}: " + ", ".join("x".join(map(str, s)) for s in shapes))
    print(f"wrote {a.out} (fillers seeded with {rec['seed']}) and {a.out}.json")


if __name__ == "__main__":
    cli_main(main)
