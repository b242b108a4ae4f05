"""Small datasets written in the exact on-disk layouts of the real ones.

Only VIPeR is available here; the tests check the other readers against these
(few identities, small images). Each person gets its own colours, so the
images are distinguishable; sizes follow the real datasets' aspect.
"""
import os
import time

import cv2
import h5py
import numpy as np

MAT_HEADER = "MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: {} HDF5 schema 1.00 ."


def person_image(pid, cam, k=0, h=32, w=12):
    """HxWx3 uint8 BGR: the person's two colours (upper / lower) plus noise."""
    rng = np.random.default_rng([pid, cam, k])
    col = np.random.default_rng(pid).integers(0, 256, (2, 3))
    img = np.empty((h, w, 3), np.float32)
    img[: h // 2], img[h // 2:] = col[0], col[1]
    img += rng.normal(0, 12, img.shape) + (25 if cam else -25)
    return np.clip(img, 0, 255).astype(np.uint8)


def _write(path, img):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if not cv2.imwrite(path, img):
        raise OSError(f"{path}: cannot write")
    return path


def write_viper(root, ids, h=32, w=12):
    """cam_a/NNN_AAA.bmp, cam_b/NNN_AAA.bmp."""
    for pid in ids:
        _write(os.path.join(root, "cam_a", f"{pid:03d}_0.bmp"), person_image(pid, 0, 0, h, w))
        _write(os.path.join(root, "cam_b", f"{pid:03d}_90.bmp"), person_image(pid, 1, 0, h, w))
    return root


def write_cuhk01(root, ids, h=32, w=12):
    """campus/PPPPIII.png: III 001-002 camera A, 003-004 camera B."""
    for pid in ids:
        for n in range(1, 5):
            _write(os.path.join(root, "campus", f"{pid:04d}{n:03d}.png"),
                   person_image(pid, int(n > 2), n, h, w))
    return root


def write_ilids(root, counts, h=32, w=12):
    """i-LIDS_Pedestrian/Persons/PPPPIII.jpg; counts: person id -> number of images."""
    for pid, n in counts.items():
        for k in range(1, n + 1):
            _write(os.path.join(root, "i-LIDS_Pedestrian", "Persons", f"{pid:04d}{k:03d}.jpg"),
                   person_image(pid, int(k == 1), k, h, w))
    return root


def write_prid2011(root, cam_a_ids, cam_b_ids, h=32, w=12):
    """single_shot/cam_a/person_NNNN.png and single_shot/cam_b/person_NNNN.png."""
    for cam, ids in enumerate((cam_a_ids, cam_b_ids)):
        for pid in ids:
            _write(os.path.join(root, "single_shot", ("cam_a", "cam_b")[cam], f"person_{pid:04d}.png"),
                   person_image(pid, cam, 0, h, w))
    return root


def _mat_attrs(obj, cls, empty=False):
    obj.attrs["MATLAB_class"] = np.bytes_(cls)
    if empty:
        obj.attrs["MATLAB_empty"] = np.uint8(1)


def write_cuhk03_folder(root, persons, images="detected", views=None, h=8, w=4, ext=".png"):
    """torchreid's extraction of cuhk-03.mat: root/images_<images>/{pair}_{index:03d}_{view}_{col:02d}.png.

    persons / views as write_cuhk03 (default: columns 1 and 6, one image per view)."""
    views = views or (lambda pair, i, col: col in (1, 6))
    for pair, count in enumerate(persons, start=1):
        for i in range(1, count + 1):
            for col in range(1, 11):
                if views(pair, i, col):
                    view = 1 if col <= 5 else 2
                    _write(os.path.join(root, f"images_{images}", f"{pair}_{i:03d}_{view}_{col:02d}{ext}"),
                           person_image(pair * 1000 + i, view - 1, col, h, w))
    return root


def write_cuhk03(path, persons, views=None, testsets=(), h=24, w=10, detected=True):
    """cuhk-03.mat as MATLAB -v7.3 writes it: an HDF5 file behind a 512-byte MATLAB header.

    persons: the number of persons of each camera pair (1-based pairs in order).
    views(pair, person, col) -> bool: whether cell (person, col) holds an image
    (default: columns 1-2 and 6-7). testsets: lists of (pair, person) rows.
    Cells are HDF5 object references into '#refs#'; arrays are stored
    transposed (an H x W x 3 RGB image as 3 x W x H); an empty cell is a
    uint64 [0 0] dims array flagged MATLAB_empty. detected=False: `detected`
    refers to the `labeled` cells (a faster file for tests of the labeled set).
    """
    views = views or (lambda pair, i, col: col in (1, 2, 6, 7))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    n = [0]

    def new(data, cls, empty=False):
        n[0] += 1
        ds = refs.create_dataset(f"r{n[0]}", data=data)
        _mat_attrs(ds, cls, empty)
        return ds.ref

    with h5py.File(path, "w", userblock_size=512) as f:
        refs = f.create_group("#refs#")
        # MATLAB writes one empty marker per cell; one shared marker reads the same and is faster
        empty = new(np.zeros(2, np.uint64), "double", empty=True)
        for var in ("labeled", "detected"):
            if var == "detected" and not detected:
                f["detected"] = f["labeled"][()]
                _mat_attrs(f["detected"], "cell")
                continue
            pair_refs = []
            for pair, count in enumerate(persons, start=1):
                cells = np.empty((10, count), dtype=h5py.ref_dtype)
                for i in range(1, count + 1):
                    for col in range(1, 11):
                        if views(pair, i, col):
                            bgr = person_image(pair * 1000 + i, int(col > 5), col + (var == "detected"), h, w)
                            cells[col - 1, i - 1] = new(bgr[..., ::-1].T, "uint8")
                        else:
                            cells[col - 1, i - 1] = empty
                pair_refs.append(new(cells, "cell"))
            ds = f.create_dataset(var, data=np.array(pair_refs, dtype=h5py.ref_dtype).reshape(len(persons), 1))
            _mat_attrs(ds, "cell")
        sets = [new(np.asarray(rows, np.float64).reshape(-1, 2).T, "double") for rows in testsets]
        ds = f.create_dataset("testsets", data=np.array(sets, dtype=h5py.ref_dtype).reshape(len(sets), 1))
        _mat_attrs(ds, "cell")
    header = MAT_HEADER.format(time.strftime("%a %b %d %H:%M:%S %Y")).encode().ljust(116)
    with open(path, "r+b") as fh:
        fh.write(header + b"\0" * 8 + b"\x00\x02" + b"IM")
    return path


def write_mat_v5(path):
    """A MATLAB 5.0 MAT-file (what save() writes without -v7.3): not HDF5."""
    import scipy.io
    scipy.io.savemat(path, {"labeled": np.zeros((1, 5)), "testsets": np.zeros((1, 20))})
    return path
