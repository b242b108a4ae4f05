"""What a dataset reader returns: plain records plus the dataset's facts.

Everything downstream (splits, triplets, the LMDB) sees only these, so adding
a dataset is one reader module and one registry line.
"""
import dataclasses
import glob
import json
import os
import shutil
from typing import NamedTuple

import cv2
import numpy as np

from core import MtdnetError

PROBE_CAMERA = 0      # camera A: the probes of a test identity
GALLERY_CAMERA = 1    # camera B: the gallery
SPLITS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "splits")


class Record(NamedTuple):
    """One image. `image` is a file path, an HxWx3 uint8 BGR array, or an object
    whose load() returns one (lazy cells of a .mat). `name` is what images.json
    shows: the path relative to the dataset root, or the .mat cell."""
    image: object
    person_id: int
    camera_id: int
    name: str = ""


@dataclasses.dataclass
class Facts:
    name: str                 # the dataset's own name, e.g. "VIPeR"
    root: str
    n_train: int              # protocol sizes (identities) of the paper
    n_val: int
    n_test: int
    protocol: str             # one line: what the paper protocol is
    paper_test_ids: list = None    # the authors' recorded test identities
    paper_source: str = ""         # the file under data_prep/splits they come from
    paper_test_names: list = None  # their recorded images (VIPeR's stems), checked by the split
    paper_val_ids: list = None     # the authors' recorded validation identities (CUHK03)
    paper_rule: str = ""           # what the paper split's test set is, when not paper_source's identities
    substitute: str = None         # why the paper split differs from the authors' here (named in results)
    cameras: tuple = ("cam_a", "cam_b")
    probe_camera: int = PROBE_CAMERA
    gallery_camera: int = GALLERY_CAMERA
    cameras_known: bool = True     # False (i-LIDS): camera ids are assigned, not observed
    identities: list = None        # the protocol's identity pool; None = every person found
    distractor_ids: list = None    # gallery-only persons in every test gallery (PRID2011)
    testsets: list = None          # CUHK03: the 20 recorded test sets of cuhk-03.mat
    inputs: list = None            # files whose (size, mtime) define "the inputs"
    # Splits fixed image by image ({name: () -> ImageProtocol}, read when that split is made):
    # CUHK03's 767/700 protocol (split `new`).
    image_protocols: dict = dataclasses.field(default_factory=dict)
    options: dict = dataclasses.field(default_factory=dict)
    notes: list = dataclasses.field(default_factory=list)
    key: str = ""                  # registry name, set by data_prep.datasets.read_dataset


@dataclasses.dataclass(frozen=True)
class ImageProtocol:
    """A split its authors fixed image by image (CUHK03's 767/700): the training and test
    identities, and which test images are queries and which form the gallery (record
    names). A query is ranked against the gallery images of the other cameras: its own
    identity's images from its own camera are left out of its ranking."""
    rule: str
    train_ids: list
    test_ids: list
    query: list
    gallery: list


@dataclasses.dataclass
class Dataset:
    records: list
    facts: Facts

    def person_ids(self):
        return sorted({r.person_id for r in self.records})


def paper_split(filename):
    """The authors' recorded test identities shipped in data_prep/splits/."""
    path = os.path.join(SPLITS_DIR, filename)
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise MtdnetError(f"{path}: cannot read the recorded paper split ({e})")


def require_dir(path, what):
    if not os.path.exists(path):
        raise MtdnetError(f"{path}: {what} not found (set DATA_ROOT to the dataset's directory)")
    if not os.path.isdir(path):
        raise MtdnetError(f"{path}: expected a directory ({what})")
    return path


def find_image_dir(root, name, subdirs, pattern, layout):
    """The first of root/<subdir>..., root holding a file that matches `pattern`."""
    require_dir(root, f"{name} root")
    for d in [os.path.join(root, *sub) for sub in subdirs] + [root]:
        if os.path.isdir(d) and any(pattern.match(f) for f in os.listdir(d)):
            return d
    article = "an" if name[0].lower() in "aeiou" else "a"
    raise MtdnetError(f"{root}: not {article} {name} directory; expected {layout}")


def check_both_cameras(records, dataset_name, ids=None):
    """Every person (of `ids`, default all) needs an image in each camera."""
    seen = {}
    first = {}
    for r in records:
        seen.setdefault(r.person_id, set()).add(r.camera_id)
        first.setdefault(r.person_id, r.name)
    for pid in sorted(seen if ids is None else ids):
        cams = seen.get(pid, set())
        if len(cams) < 2:
            where = first.get(pid, f"person {pid}")
            missing = "any camera" if not cams else f"camera {'B' if 0 in cams else 'A'}"
            raise MtdnetError(f"{where}: person {pid} has no image in {missing}; "
                              f"{dataset_name} needs every person in both cameras")


def files_with_ext(d, exts):
    return sorted(f for f in os.listdir(d) if f.lower().endswith(exts) and not f.startswith("."))


def read_image_file(path):
    """HxWx3 uint8 BGR from a file; a clear error for a missing, unreadable or corrupt one."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise MtdnetError(f"{path}: cannot read the image file ({e.strerror})")
    if not raw:
        raise MtdnetError(f"{path}: the image file is empty")
    img = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise MtdnetError(f"{path}: cannot decode the image (corrupt, truncated or not an image)")
    return img


def load_image(rec):
    """The record's image as HxWx3 uint8 BGR."""
    src = rec.image
    if isinstance(src, str):
        img = read_image_file(src)
    elif hasattr(src, "load"):
        img = src.load()
    else:
        img = src
    if not (isinstance(img, np.ndarray) and img.dtype == np.uint8 and img.ndim == 3
            and img.shape[2] == 3 and img.shape[0] > 0 and img.shape[1] > 0):
        shape = getattr(img, "shape", None)
        dtype = getattr(img, "dtype", type(img).__name__)
        raise MtdnetError(f"{rec.name or src}: expected an HxWx3 uint8 image, got {dtype} {shape}")
    return img


def resize_chw(img, size):
    """Square resize as the authors (no aspect preservation), to 3 x size x size uint8."""
    out = cv2.resize(img, (size, size), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(out.transpose(2, 0, 1))


def remove_stale_partials(path):
    """Remove what fsutil.atomic_dir left beside `path` when a run was killed outright
    (SIGKILL, power loss); a normal error or Ctrl-C cleans up by itself."""
    base = os.path.basename(os.path.abspath(path))
    parent = os.path.dirname(os.path.abspath(path))
    for p in glob.glob(os.path.join(parent, f".{base}.partial-*")) + \
            glob.glob(os.path.join(parent, f".{base}.old-*")):
        shutil.rmtree(p, ignore_errors=True)
