"""A toy dataset and a toy variant, registered by tests/test_registry.py to show that
adding either is one file plus one registry entry."""
import json
import os

import numpy as np

from data_prep.records import Dataset, Facts, Record
from prototxt import nets

NAME = "toy"
N_IDS, N_TEST = 30, 10


def person_image(pid, cam):
    """HxWx3 uint8 BGR: two colours per person (upper / lower), brighter in camera 1, noise."""
    rng = np.random.default_rng([pid, cam])
    col = np.random.default_rng(pid).integers(20, 236, (2, 3))
    img = np.empty((64, 24, 3), np.float32)
    img[:32], img[32:] = col[0], col[1]
    img += rng.normal(0, 8, img.shape) + (15 if cam else -15)
    return np.clip(img, 0, 255).astype(np.uint8)


def write(root):
    """The toy dataset on disk: one JSON file naming its size (the images are drawn)."""
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, "toy.json"), "w") as f:
        json.dump({"ids": N_IDS, "test": N_TEST}, f)
    return root


def read(root):
    info = os.path.join(root, "toy.json")
    with open(info) as f:
        n = json.load(f)
    records = [Record(person_image(p, c), p, c, f"person{p}/cam{c}")
               for p in range(1, n["ids"] + 1) for c in (0, 1)]
    facts = Facts(name="Toy", root=root, n_train=n["ids"] - n["test"], n_val=0, n_test=n["test"],
                  protocol="toy: probes camera 0, gallery camera 1",
                  paper_test_ids=list(range(n["ids"] - n["test"] + 1, n["ids"] + 1)),
                  paper_source="toy.json", inputs=[info])
    return Dataset(records, facts)


def half_net(profile, batch, seed, target, source=None):
    """MTDnet with the triplet loss at half weight."""
    return nets.mtdnet_net(profile, batch, seed, target, trp_weight=0.5)
