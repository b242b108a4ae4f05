"""CUHK03: cuhk-03.mat (MATLAB v7.3), or the image folders torchreid extracts from it.

Two layouts, the .mat winning where both are present:
- cuhk-03.mat (in DATA_ROOT, DATA_ROOT/cuhk03_release/, or DATA_ROOT itself);
- images_labeled/ and images_detected/ in DATA_ROOT, one file per image named
  {pair}_{index:03d}_{view}_{column:02d}.png (or .jpg), torchreid's extraction.
The option `images` (labeled / detected) picks the variable or the folder.

The paper protocol tests on testsets{1} of the .mat and validates on the 100
identities the authors recorded (data_prep/splits/cuhk03_recorded_val.json). The
image folders carry no testsets: there the paper split is a documented
substitute, one genuine CUHK03 test set whose index among the 20 is unknown
(cuhk03_official_testset_index_unknown.json), with the recorded validation list
less the identities it shares with that test set, topped up with seeded ones.

The .mat:

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
import hashlib
import os
import re

import h5py
import numpy as np
import scipy.io

from core import MtdnetError
from data_prep.records import (SPLITS_DIR, Dataset, Facts, ImageProtocol, Record, check_both_cameras,
                               paper_split, require_dir)

NAME = "CUHK03"
MAT = "cuhk-03.mat"
IMAGE_SETS = ("labeled", "detected")
FOLDER_FILE = re.compile(r"^(\d)_(\d{3})_([12])_(\d{2})\.(png|jpg|jpeg)$", re.IGNORECASE)
RECORDED_VAL = "cuhk03_recorded_val.json"
UNKNOWN_TESTSET = "cuhk03_official_testset_index_unknown.json"
PROTOCOL_PAIRS = (1, 2, 3)
# The 767/700 protocol's configuration (data_prep/splits/cuhk03_new_protocol.md); a copy in
# DATA_ROOT under the same name is read instead (and is then one of the inputs).
NEW_PROTOCOL = "cuhk03_new_protocol_config_{images}.mat"
NEW_PROTOCOL_SHA256 = {
    "detected": "ef438e7775fce6d08ef6dff84d2235bd4bed63850dbbf7025f3251e45c7fa721",
    "labeled": "15627d0913d59ac61220cf311dbca8b936499265da86c0c036d3b8162a180b9c",
}
NEW_PROTOCOL_SIZES = {"train": 767, "test": 700}
MAT_CELL = re.compile(r"\{(\d)\}\((\d+),(\d+)\)$")
VIEWS = 10            # cells per person: 5 per camera


def person_id(pair, index):
    return int(pair) * 1000 + int(index)


def present(root, images="labeled"):
    """The .mat or torchreid's images_<images>/ folder is at root."""
    try:
        return mat_path(root, images) is not None or os.path.isdir(os.path.join(root, f"images_{images}"))
    except MtdnetError:
        return False


def mat_path(root, images="labeled"):
    """The .mat under root, or None when root holds torchreid's images_<images>/ folder instead."""
    if os.path.isfile(root):
        return root
    require_dir(root, f"{NAME} root")
    for p in (os.path.join(root, MAT), os.path.join(root, "cuhk03_release", MAT)):
        if os.path.isfile(p):
            return p
    if os.path.isdir(os.path.join(root, f"images_{images}")):
        return None
    others = [f"images_{x}/" for x in IMAGE_SETS if os.path.isdir(os.path.join(root, f"images_{x}"))]
    raise MtdnetError(f"{root}: no {MAT} here (nor in cuhk03_release/) and no images_{images}/ folder"
                      + (f" (it has {', '.join(others)}: choose that image set)" if others else "")
                      + f"; set DATA_ROOT to the directory holding {MAT} or torchreid's images_{images}/")


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
    path = mat_path(root, images)
    if path is None:
        data = read_folder(root, images)
    else:
        records, testsets = read_mat(path, images)
        data = _dataset(root, images, records, [path], testsets[0] if testsets else [], testsets, "", [])
    config = new_protocol_config(root if os.path.isdir(root) else os.path.dirname(root), images)
    if not config.startswith(SPLITS_DIR):
        data.facts.inputs.append(config)
    data.facts.image_protocols["new"] = lambda: new_protocol(data.records, config, images)
    return data


def new_protocol_config(root, images):
    """The 767/700 configuration: DATA_ROOT's copy, else the one shipped in data_prep/splits/."""
    name = NEW_PROTOCOL.format(images=images)
    mine = os.path.join(root, name)
    return mine if os.path.isfile(mine) else os.path.join(SPLITS_DIR, name)


def _cell(record):
    """(person id, column 1-10) of a record of either layout."""
    m = FOLDER_FILE.match(os.path.basename(record.name))
    if m:
        pair, index, _, col = (int(x) for x in m.groups()[:4])
        return person_id(pair, index), col
    m = MAT_CELL.search(record.name)
    if m:
        pair, index, col = (int(x) for x in m.groups())
        return person_id(pair, index), col
    raise MtdnetError(f"{record.name}: not a CUHK03 image name")


def new_protocol(records, config, images):
    """The 767/700 split (ImageProtocol) of these records, from its configuration .mat."""
    if config.startswith(SPLITS_DIR):
        with open(config, "rb") as f:
            if hashlib.sha256(f.read()).hexdigest() != NEW_PROTOCOL_SHA256[images]:
                raise MtdnetError(f"{config}: not the 767/700 protocol's published file (sha256 differs)")
    try:
        m = scipy.io.loadmat(config)
        names = [str(np.asarray(x).ravel()[0]) for x in m["filelist"].ravel()]
        idx = {k: m[f"{k}_idx"].ravel().astype(np.int64) - 1 for k in ("train", "query", "gallery")}
    except (OSError, ValueError, KeyError, IndexError) as e:
        raise MtdnetError(f"{config}: not a CUHK03 767/700 protocol configuration ({e})") from None
    by_cell = {_cell(r): r.name for r in records}
    cells = []
    for n in names:
        fm = FOLDER_FILE.match(n)
        if not fm:
            raise MtdnetError(f"{config}: file name '{n}' is not P_III_V_JJ.png")
        pair, index, _, col = (int(x) for x in fm.groups()[:4])
        cells.append((person_id(pair, index), col))
    missing = [names[i] for i, c in enumerate(cells) if c not in by_cell]
    if missing:
        raise MtdnetError(f"{config}: {len(missing)} of its {len(names)} images are not in this CUHK03 "
                          f"({images}), e.g. {missing[:3]}; split 'new' needs all of them")
    pick = {k: [cells[i] for i in v] for k, v in idx.items()}
    train_ids = sorted({c[0] for c in pick["train"]})
    test_ids = sorted({c[0] for c in pick["query"] + pick["gallery"]})
    if set(train_ids) & set(test_ids):
        raise MtdnetError(f"{config}: training and test identities overlap")
    return ImageProtocol(
        rule=(f"new: CUHK03's 767/700 protocol (Zhong et al., CVPR 2017; {os.path.basename(config)}): "
              f"{len(train_ids)} training / {len(test_ids)} test identities of all five camera pairs, "
              f"{len(pick['query'])} query and {len(pick['gallery'])} gallery images, each query ranked "
              "against the gallery images of the other camera"),
        train_ids=train_ids, test_ids=test_ids,
        query=[by_cell[c] for c in pick["query"]], gallery=[by_cell[c] for c in pick["gallery"]])


def _dataset(root, images, records, inputs, test_ids, testsets, test_source, notes, substitute=None):
    pool = sorted({r.person_id for r in records if r.person_id // 1000 in PROTOCOL_PAIRS})
    check_both_cameras(records, f"{NAME} ({images}, camera pairs 1-3)", ids=pool)
    val = paper_split(RECORDED_VAL)
    facts = Facts(
        name=NAME, root=root, n_train=1160, n_val=100, n_test=100,
        protocol=f"CUHK03 ({images}, camera pairs 1-3): 1160 train / 100 val / 100 test "
                 f"identities; probes camera A, gallery the first camera-B image",
        paper_test_ids=test_ids, paper_source=test_source,
        paper_val_ids=[person_id(p, i) for p, i in val["rows"]],
        cameras=("view 1 (columns 1-5)", "view 2 (columns 6-10)"),
        identities=pool, testsets=testsets, inputs=inputs, options={"images": images}, notes=notes,
        paper_rule=("paper: testsets{1} of cuhk-03.mat (the authors' test set)" if testsets else
                    f"paper (substitute): the official CUHK03 test set of data_prep/splits/{test_source}, "
                    f"index among the 20 unknown"),
        substitute=substitute)
    return Dataset(records, facts)


def read_folder(root, images):
    """torchreid's extraction: images_<images>/{pair}_{index:03d}_{view}_{column:02d}.<png|jpg>."""
    d = os.path.join(root, f"images_{images}")
    records, inputs = [], []
    for f in sorted(os.listdir(d)):
        if f.startswith("."):
            continue
        path = os.path.join(d, f)
        m = FOLDER_FILE.match(f)
        if not m:
            raise MtdnetError(f"{path}: name does not match {{pair}}_{{index:03d}}_{{view}}_{{column:02d}}.png "
                              f"(torchreid's CUHK03 image folders)")
        pair, index, view, col = (int(x) for x in m.groups()[:4])
        if not 1 <= pair <= 5 or not 1 <= col <= VIEWS or view != (1 if col <= 5 else 2):
            raise MtdnetError(f"{path}: camera pair {pair}, view {view}, column {col}: pairs are 1-5 and "
                              f"columns 01-05 are view 1, 06-10 view 2")
        records.append(Record(path, person_id(pair, index), view - 1, f"images_{images}/{f}"))
        inputs.append(path)
    if not records:
        raise MtdnetError(f"{d}: no images")
    unknown = paper_split(UNKNOWN_TESTSET)
    test = [person_id(p, i) for p, i in unknown["rows"]]
    note = (f"no {MAT}, so testsets{{1}} (the authors' test set) is unknown: the paper split is a "
            f"substitute that tests on one of the 20 official CUHK03 test sets, index unknown "
            f"(data_prep/splits/{UNKNOWN_TESTSET}), and validates on the authors' recorded validation "
            f"list without the identities it shares with that test set, topped up with seeded ones")
    return _dataset(root, images, records, inputs, test, None, UNKNOWN_TESTSET, [note], substitute=note)


def read_mat(path, images):
    """(records, testsets) of cuhk-03.mat's `images` variable."""
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
    testsets = []
    for k, tref in enumerate(_refs(f, f["testsets"], path, "'testsets'").ravel()):
        rows = np.asarray(f[tref][()]).T
        if rows.ndim != 2 or rows.shape[1] != 2:
            raise MtdnetError(f"{path}: testsets{{{k + 1}}} has shape {rows.shape[::-1]} on disk; "
                              f"expected k x 2 (camera pair, person)")
        testsets.append([person_id(p, i) for p, i in rows])
    return records, testsets
