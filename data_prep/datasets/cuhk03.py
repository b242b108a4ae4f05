"""CUHK03: cuhk-03.mat, a MATLAB v7.3 file (HDF5, read with h5py).

Variables: `labeled` and `detected`, 1x5 cells (one per camera pair), each a
persons x 10 cell of images (columns 1-5 camera A = view 1, 6-10 camera B =
view 2; an empty cell = no image); `testsets`, 20 cells of k x 2 doubles
(camera pair, person index), 1-based. MATLAB stores arrays transposed: an
image is (3, W, H) on disk, RGB. Person id = pair * 1000 + person index;
camera id = the view (0: columns 1-5, 1: columns 6-10) whatever the pair, so a
triplet's negative for a view-2 positive is a view-2 image of any pair.
The protocol (Li et al. 2014, the paper) uses camera pairs 1-3: 1360 persons,
1160 train / 100 val / 100 test.
"""
import os
import re

import h5py
import numpy as np

from spec import MtdnetError
from data_prep.records import (Dataset, Facts, Record, check_both_cameras,
                               paper_split, require_dir)

NAME = "CUHK03"
MAT = "cuhk-03.mat"
IMAGE_SETS = ("labeled", "detected")
PROTOCOL_PAIRS = (1, 2, 3)
VIEWS = 10            # cells per person: 5 per camera


def person_id(pair, index):
    return int(pair) * 1000 + int(index)


def mat_path(root):
    if os.path.isfile(root):
        return root
    require_dir(root, f"{NAME} root")
    for p in (os.path.join(root, MAT), os.path.join(root, "cuhk03_release", MAT)):
        if os.path.isfile(p):
            return p
    raise MtdnetError(f"{root}: no {MAT} here (nor in cuhk03_release/); set DATA_ROOT to the "
                      f"directory holding {MAT}")


def open_mat(path):
    """h5py.File of a v7.3 .mat; an older MAT-file is named as such."""
    try:
        with open(path, "rb") as f:
            head = f.read(128)
    except OSError as e:
        raise MtdnetError(f"{path}: cannot read ({e.strerror})")
    if not h5py.is_hdf5(path):
        m = re.match(rb"MATLAB [0-9.]+ MAT-file", head)
        if m:
            what = f"a pre-7.3 MAT-file ('{m.group().decode()}'), which is not HDF5"
        else:
            what = "not a MATLAB v7.3 (HDF5) file"
        raise MtdnetError(f"{path}: {what}; re-save it in MATLAB with "
                          f"save('{MAT}', 'labeled', 'detected', 'testsets', '-v7.3')")
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise MtdnetError(f"{path}: cannot open as HDF5 ({e})")


def _refs(f, obj, path, what):
    if not isinstance(obj, h5py.Dataset) or obj.dtype != h5py.ref_dtype:
        raise MtdnetError(f"{path}: {what} is not a cell array (expected HDF5 object references)")
    return obj[()]


class MatCell:
    """A lazily read image cell: the file stays open while the records live."""
    __slots__ = ("f", "ref", "where")

    def __init__(self, f, ref, where):
        self.f, self.ref, self.where = f, ref, where

    def load(self):
        obj = self.f[self.ref]
        if obj.dtype != np.uint8 or obj.ndim != 3 or obj.shape[0] != 3:
            raise MtdnetError(f"{self.where}: expected a uint8 colour image (3 x W x H on disk), "
                              f"got {obj.dtype} {obj.shape}")
        try:
            rgb = obj[()].T
        except OSError as e:
            raise MtdnetError(f"{self.where}: cannot read the image ({e})")
        return np.ascontiguousarray(rgb[..., ::-1])   # MATLAB's RGB -> BGR


def _is_empty(obj):
    # MATLAB writes an empty cell as a 2-element uint64 dims array flagged MATLAB_empty.
    if obj.ndim == 3:
        return False
    return obj.size == 0 or (obj.dtype == np.uint64 and obj.ndim <= 2) or obj.attrs.get("MATLAB_empty", 0)


def read(root, images="labeled"):
    if images not in IMAGE_SETS:
        raise MtdnetError(f"{NAME}: unknown image set '{images}'; valid: {', '.join(IMAGE_SETS)}")
    path = mat_path(root)
    f = open_mat(path)
    for var in (images, "testsets"):
        if var not in f:
            raise MtdnetError(f"{path}: no variable '{var}'; expected the CUHK03 release "
                              f"(labeled, detected, testsets)")
    records = []
    for pair, pref in enumerate(_refs(f, f[images], path, f"'{images}'").ravel(), start=1):
        cells = _refs(f, f[pref], path, f"{images}{{{pair}}}")
        if cells.ndim != 2 or VIEWS not in cells.shape:
            raise MtdnetError(f"{path}: {images}{{{pair}}} has shape {cells.shape}; "
                              f"expected persons x {VIEWS} (stored transposed)")
        if cells.shape[0] == VIEWS:
            cells = cells.T
        for i, row in enumerate(cells, start=1):
            pid = person_id(pair, i)
            for col, ref in enumerate(row, start=1):
                where = f"{path}:{images}{{{pair}}}({i},{col:02d})"
                if not ref:
                    continue
                obj = f[ref]
                if not isinstance(obj, h5py.Dataset):
                    raise MtdnetError(f"{where}: not an array")
                if _is_empty(obj):
                    continue
                records.append(Record(MatCell(f, ref, where), pid, 0 if col <= 5 else 1,
                                      f"{MAT}:{images}{{{pair}}}({i},{col:02d})"))
    if not records:
        raise MtdnetError(f"{path}: '{images}' holds no images")
    pool = sorted({r.person_id for r in records if r.person_id // 1000 in PROTOCOL_PAIRS})
    check_both_cameras(records, f"{NAME} ({images}, camera pairs 1-3)", ids=pool)
    testsets = []
    for k, tref in enumerate(_refs(f, f["testsets"], path, "'testsets'").ravel()):
        rows = np.asarray(f[tref][()]).T
        if rows.ndim != 2 or rows.shape[1] != 2:
            raise MtdnetError(f"{path}: testsets{{{k + 1}}} has shape {rows.shape[::-1]} on disk; "
                              f"expected k x 2 (camera pair, person)")
        testsets.append([person_id(p, i) for p, i in rows])
    paper = paper_split("cuhk03_test.json")
    facts = Facts(
        name=NAME, root=root, n_train=1160, n_val=100, n_test=100,
        protocol=f"CUHK03 ({images}, camera pairs 1-3): 1160 train / 100 val / 100 test "
                 f"identities; probes camera A, gallery the first camera-B image",
        paper_test_ids=[person_id(p, i) for p, i in paper["rows"]], paper_source="cuhk03_test.json",
        cameras=("view 1 (columns 1-5)", "view 2 (columns 6-10)"),
        identities=pool, testsets=testsets, inputs=[path], options={"images": images})
    return Dataset(records, facts)
