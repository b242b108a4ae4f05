"""Reading a prepared-data directory (what `make data` wrote) for training and evaluation."""
import os
from typing import NamedTuple

from core import MtdnetError
from core.fsutil import read_json
from core.runs import DATA_FILES


class Prepared(NamedTuple):
    dir: str
    images: list       # images.json: {"index", "path", "person_id", "camera_id", "role", "label"}
    split: dict        # split.json: train/val/test ids, rule, seed, eval (probe/gallery indices)
    manifest: dict
    lmdb: str          # images.lmdb directory
    triplets: str      # train_triplets.npy


def load_prepared(data):
    """A prepared-data directory; `data` is a spec.DataSpec (named in errors) or a path."""
    d = getattr(data, "dir", data)
    make = data.make_command() if hasattr(data, "make_command") else "make data (DATASET, PROFILE, SPLIT)"
    if not os.path.isdir(d):
        raise MtdnetError(f"{d}: no prepared data here; run `{make}`")
    lmdb = os.path.join(d, DATA_FILES.lmdb)
    triplets = os.path.join(d, DATA_FILES.triplets)
    for p in (os.path.join(lmdb, "data.mdb"), triplets):
        if not os.path.isfile(p):
            raise MtdnetError(f"{p}: missing; the prepared data is incomplete, re-run `make data`")
    images = read_json(os.path.join(d, DATA_FILES.images), DATA_FILES.images)
    split = read_json(os.path.join(d, DATA_FILES.split), DATA_FILES.split)
    manifest = read_json(os.path.join(d, DATA_FILES.manifest), DATA_FILES.manifest)
    if len(images) != manifest.get("counts", {}).get("images", {}).get("total"):
        raise MtdnetError(f"{d}: images.json and manifest.json disagree on the number of images; "
                          f"re-run `make data`")
    return Prepared(d, images, split, manifest, lmdb, triplets)
