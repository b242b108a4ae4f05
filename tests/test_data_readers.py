"""Dataset readers: the real VIPeR, and fixtures in the exact layouts of the other four."""
import hashlib
import os
import shutil

import h5py
import numpy as np
import pytest

from core import REPO_ROOT, MtdnetError, datasets
from data_prep.datasets import default_root, get_reader, read_dataset
from data_prep.records import SPLITS_DIR, load_image, paper_split
from tests import fixtures as F
from tests.helpers import VIPER, needs_real

needs_viper = needs_real("viper")


def by_person(ds):
    out = {}
    for r in ds.records:
        out.setdefault(r.person_id, []).append(r)
    return out


def test_registry_covers_every_dataset():
    for name in datasets.names():
        reader = get_reader(name)
        assert callable(reader.read) and reader.NAME, name
    assert default_root("viper") == VIPER
    assert default_root("synthetic") == os.path.join(REPO_ROOT, "data", "raw", "synthetic")


@needs_viper
def test_viper_real_632_identities_two_cameras():
    ds = read_dataset("viper")
    people = by_person(ds)
    assert len(people) == 632 and len(ds.records) == 1264
    assert all(sorted(r.camera_id for r in rs) == [0, 1] for rs in people.values())
    assert all(r.name.startswith(("cam_a/", "cam_b/")[r.camera_id]) for r in ds.records)
    assert ds.facts.n_train == 316 and ds.facts.n_test == 316
    assert sorted(ds.facts.paper_test_ids) == sorted(r[0] for r in paper_split("viper_test.json")["rows"])
    img = load_image(ds.records[0])
    assert img.shape == (128, 48, 3) and img.dtype == np.uint8


# sha256 of the shipped splits, checked byte for byte against the copies they were taken from
# when they were added: the identities the authors recorded (Recorded*data*.npy of their release,
# as JSON), and one official CUHK03 test set whose index among the 20 is unknown (each file says
# where it comes from).
RECORDED = {
    "cuhk01_test.json": "a4c83eefcc61c6ee25940f17291bb9b8806b209092a637a3a0cba93564fa963f",
    "cuhk01half_test.json": "9cd5dcb25f7377bd1c955e482a397672cac6c2bb33ba4c0b992156971d144c5a",
    "cuhk03_recorded_val.json": "7d85d71caaae35a5c2df9a3cd72ac697b452bf27bc4e3f72323a48c271ff2f7a",
    "cuhk03_official_testset_index_unknown.json": "60899596ba359d0969c4bfd757d686c3fc2a85f73d6a29888cee57e315ce64ef",
    "ilids_test.json": "f298c0f333178b1e33fd68dee25fbe94c8abfcbfb0d71ac983f6e9b978ab46c8",
    "prid_test.json": "0ad91256a0bbfad516ac41d59485e2ab8348f07276acfb8b9d877e37c1c49a58",
    "viper_test.json": "8e5abd3fa3d2ce9a3827756ba1595115307369ec121303f496d4394137b3d66a",
    # CUHK03's 767/700 protocol (zhunzhong07/person-re-ranking), unchanged, and its provenance.
    "cuhk03_new_protocol_config_detected.mat": "ef438e7775fce6d08ef6dff84d2235bd4bed63850dbbf7025f3251e45c7fa721",
    "cuhk03_new_protocol_config_labeled.mat": "15627d0913d59ac61220cf311dbca8b936499265da86c0c036d3b8162a180b9c",
    "cuhk03_new_protocol.md": "152ff5ba2aa59af9b8dd8ed09b2ec84480ecec9ababaaa1972797b88f38cf681",
}


def test_shipped_paper_splits_are_the_recorded_ones():
    assert sorted(os.listdir(SPLITS_DIR)) == sorted(RECORDED)
    for name, digest in RECORDED.items():
        with open(os.path.join(SPLITS_DIR, name), "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == digest, name


def test_cuhk03_image_folders(tmp_path):
    """torchreid's extraction: images_<set>/{pair}_{index:03d}_{view}_{column:02d}.png, png or jpg."""
    F.write_cuhk03_folder(str(tmp_path), [3, 2, 1, 1, 1], images="detected",
                          views=lambda pair, i, col: col in (1, 2, 7))
    F.write_cuhk03_folder(str(tmp_path), [3, 2, 1, 1, 1], images="labeled", ext=".jpg")
    det = read_dataset("cuhk03detected", str(tmp_path))
    assert len(det.records) == 8 * 3 and det.person_ids() == [1001, 1002, 1003, 2001, 2002, 3001, 4001, 5001]
    assert sorted({(r.name.split("_")[-2], r.camera_id) for r in det.records}) == [("1", 0), ("2", 1)]
    assert det.facts.identities == [1001, 1002, 1003, 2001, 2002, 3001]   # camera pairs 1-3
    assert det.facts.testsets is None and det.facts.substitute
    assert det.facts.options == {"images": "detected"} and det.facts.key == "cuhk03"
    lab = read_dataset("cuhk03", str(tmp_path))
    assert len(lab.records) == 16 and lab.records[0].name.startswith("images_labeled/")
    assert load_image(lab.records[0]).shape == (8, 4, 3)


@pytest.mark.parametrize("name,msg", [
    ("1_001_1_07.png", "columns 01-05 are view 1"), ("6_001_1_01.png", "camera pair 6"),
    ("1_1_1_01.png", "does not match"),
])
def test_cuhk03_image_folder_bad_names(tmp_path, name, msg):
    F.write_cuhk03_folder(str(tmp_path), [1, 1, 1, 0, 0])
    F._write(str(tmp_path / "images_detected" / name), F.person_image(1, 0))
    with pytest.raises(MtdnetError, match=msg):
        read_dataset("cuhk03detected", str(tmp_path))


def test_cuhk03_layouts_missing_or_other_set(tmp_path):
    F.write_cuhk03_folder(str(tmp_path), [1, 1, 1, 0, 0], images="detected")
    with pytest.raises(MtdnetError, match="no images_labeled/ folder \\(it has images_detected/: choose"):
        read_dataset("cuhk03", str(tmp_path))
    # Where both are present, the .mat (with its testsets) wins.
    F.write_cuhk03(str(tmp_path / "cuhk-03.mat"), [2, 1, 1, 0, 0], testsets=[[(1, 1)]])
    ds = read_dataset("cuhk03detected", str(tmp_path))
    assert ds.facts.testsets == [[1001]] and ds.records[0].name.startswith("cuhk-03.mat:")


@needs_real("cuhk03detected")
def test_cuhk03_real_detected_folder():
    ds = read_dataset("cuhk03detected")
    assert len(ds.records) == 14097 and len(ds.person_ids()) == 1467
    assert len(ds.facts.identities) == 1360
    assert load_image(ds.records[0]).shape == (128, 64, 3)


@needs_real("cuhk01")
def test_cuhk01_real_3884_images_both_protocols():
    for name, (train, test) in (("cuhk01", (871, 100)), ("cuhk01half", (485, 486))):
        ds = read_dataset(name)
        assert len(ds.records) == 3884 and len(ds.person_ids()) == 971
        assert (ds.facts.n_train, ds.facts.n_test, len(ds.facts.paper_test_ids)) == (train, test, test)
        assert set(ds.facts.paper_test_ids) <= set(ds.person_ids())
    assert load_image(ds.records[0]).shape == (160, 60, 3)


def test_cuhk01_protocols(tmp_path):
    F.write_cuhk01(tmp_path, [1, 2])
    assert read_dataset("cuhk01", str(tmp_path)).facts.paper_source == "cuhk01_test.json"
    half = read_dataset("cuhk01half", str(tmp_path)).facts
    assert (half.paper_source, half.n_test, half.options) == ("cuhk01half_test.json", 486, {"protocol": "half"})


def test_cuhk01_fixture(tmp_path):
    F.write_cuhk01(tmp_path, [1, 2, 971])
    ds = read_dataset("cuhk01", str(tmp_path))
    assert len(ds.records) == 12 and ds.person_ids() == [1, 2, 971]
    cams = {r.name: r.camera_id for r in ds.records}
    assert cams["campus/0971001.png"] == 0 and cams["campus/0971002.png"] == 0
    assert cams["campus/0971003.png"] == 1 and cams["campus/0971004.png"] == 1
    rec = next(r for r in ds.records if r.name == "campus/0002003.png")
    assert np.array_equal(load_image(rec), F.person_image(2, 1, 3))   # PNG is lossless
    assert len(ds.facts.paper_test_ids) == 100 and ds.facts.n_train == 871


def test_cuhk03_v73_fixture_labeled_and_detected(tmp_path):
    # person 3 of pair 2 has images only in columns 1 and 10; pair 1 person 2 in 1-5 and 6-10
    def views(pair, i, col):
        if (pair, i) == (2, 3):
            return col in (1, 10)
        if (pair, i) == (1, 2):
            return True
        return col in (1, 2, 6, 7)
    path = F.write_cuhk03(str(tmp_path / "cuhk-03.mat"), [3, 3, 2, 2, 1], views,
                          testsets=[[(1, 1), (2, 3)], [(3, 2), (1, 3)]])
    with open(path, "rb") as f:
        assert f.read(19) == b"MATLAB 7.3 MAT-file"
    assert h5py.is_hdf5(path)
    ds = read_dataset("cuhk03", str(tmp_path))
    people = by_person(ds)
    assert sorted(people) == [1001, 1002, 1003, 2001, 2002, 2003, 3001, 3002, 4001, 4002, 5001]
    assert len(people[1002]) == 10 and len(people[2003]) == 2 and len(people[1001]) == 4
    assert {r.camera_id for r in people[2003]} == {0, 1}
    assert [r.camera_id for r in sorted(people[1002], key=lambda r: r.name)] == [0] * 5 + [1] * 5
    assert ds.facts.identities == [1001, 1002, 1003, 2001, 2002, 2003, 3001, 3002]   # pairs 1-3
    assert ds.facts.testsets == [[1001, 2003], [3002, 1003]]
    assert ds.facts.n_train == 1160 and ds.facts.n_val == 100 and ds.facts.n_test == 100
    rec = next(r for r in ds.records if r.name == "cuhk-03.mat:labeled{2}(3,10)")
    img = load_image(rec)   # transposed on disk and RGB: back to H x W x 3 BGR
    assert img.shape == (24, 10, 3)
    assert np.array_equal(img, F.person_image(2003, 1, 10, 24, 10))
    det = read_dataset("cuhk03", path, images="detected")   # DATA_ROOT may name the file
    rec = next(r for r in det.records if r.name == "cuhk-03.mat:detected{2}(3,10)")
    assert np.array_equal(load_image(rec), F.person_image(2003, 1, 11, 24, 10))
    assert det.facts.options == {"images": "detected"}


def test_ilids_fixture_cameras_assigned(tmp_path):
    F.write_ilids(tmp_path, {1: 4, 3: 3, 35: 2, 119: 2})
    ds = read_dataset("ilids", str(tmp_path))
    people = by_person(ds)
    assert sorted(people) == [1, 3, 35, 119] and len(ds.records) == 11
    for rs in people.values():
        rs = sorted(rs, key=lambda r: r.name)
        assert rs[0].camera_id == 1 and all(r.camera_id == 0 for r in rs[1:])   # image 1 = gallery
    assert ds.facts.cameras_known is False
    # the authors recorded 4 images of person 1, 3 of person 3 (as here) and 7 of person 35
    assert ds.facts.notes == ["person 35: 2 images here, 7 in the authors' record"]


def test_prid2011_fixture_pool_and_distractors(tmp_path):
    F.write_prid2011(tmp_path, list(range(1, 206)), list(range(1, 216)), h=16, w=8)
    ds = read_dataset("prid2011", str(tmp_path))
    assert ds.facts.identities == list(range(1, 201))
    assert ds.facts.distractor_ids == list(range(201, 216))
    assert any("549" in n for n in ds.facts.notes)
    cams = {(r.person_id, r.camera_id) for r in ds.records}
    # above 200 the same number is a different person in each camera
    assert (10203, 0) in cams and (203, 1) in cams and (203, 0) not in cams and (210, 1) in cams


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("name", ["viper", "cuhk01", "cuhk03", "ilids", "prid2011"])
def test_missing_root_names_the_path(tmp_path, name):
    missing = str(tmp_path / "nowhere")
    with pytest.raises(MtdnetError, match=f"{missing}: .*not found"):
        read_dataset(name, missing)


@pytest.mark.parametrize("name,expect", [
    ("viper", "cam_a: missing"), ("cuhk01", "not a CUHK01 directory"),
    ("cuhk03", "no cuhk-03.mat here .nor in cuhk03_release/. and no images_labeled/"), ("ilids", "not an i-LIDS directory"),
    ("prid2011", "not a PRID2011 directory")])
def test_wrong_layout(tmp_path, name, expect):
    F.write_cuhk01(tmp_path / "x", [1]) if name != "cuhk01" else F.write_viper(tmp_path / "x", [1])
    with pytest.raises(MtdnetError, match=expect):
        read_dataset(name, str(tmp_path / "x"))


def test_bad_file_names(tmp_path):
    F.write_viper(tmp_path / "v", [1, 2])
    shutil.copy(tmp_path / "v" / "cam_a" / "001_0.bmp", tmp_path / "v" / "cam_a" / "person1.bmp")
    with pytest.raises(MtdnetError, match=r"cam_a/person1.bmp: name does not match NNN_AAA.bmp"):
        read_dataset("viper", str(tmp_path / "v"))
    F.write_cuhk01(tmp_path / "c", [1])
    shutil.copy(tmp_path / "c" / "campus" / "0001001.png", tmp_path / "c" / "campus" / "0001005.png")
    with pytest.raises(MtdnetError, match=r"0001005.png: image number 005 outside 001..004"):
        read_dataset("cuhk01", str(tmp_path / "c"))


def test_one_camera_only(tmp_path):
    F.write_viper(tmp_path / "v", [1, 2, 3])
    os.remove(tmp_path / "v" / "cam_b" / "002_90.bmp")
    with pytest.raises(MtdnetError, match=r"cam_a/002_0.bmp: person 2 has no image in camera B"):
        read_dataset("viper", str(tmp_path / "v"))
    F.write_cuhk01(tmp_path / "c", [5, 6])
    for n in (1, 2):
        os.remove(tmp_path / "c" / "campus" / f"0006{n:03d}.png")
    with pytest.raises(MtdnetError, match=r"person 6 has no image in camera A"):
        read_dataset("cuhk01", str(tmp_path / "c"))
    F.write_prid2011(tmp_path / "p", [p for p in range(1, 201) if p != 150], range(1, 201), h=8, w=4)
    with pytest.raises(MtdnetError, match=r"person_0150.png: person 150 has no image in camera A"):
        read_dataset("prid2011", str(tmp_path / "p"))
    F.write_ilids(tmp_path / "i", {1: 3, 2: 1})
    with pytest.raises(MtdnetError, match=r"0002001.jpg: person 2 has only one image"):
        read_dataset("ilids", str(tmp_path / "i"))
    F.write_cuhk03(str(tmp_path / "m" / "cuhk-03.mat"), [2, 1, 1, 1, 1],
                   lambda pair, i, col: col <= 5 if (pair, i) == (1, 2) else col in (1, 6))
    with pytest.raises(MtdnetError, match=r"labeled\{1\}\(2,01\): person 1002 has no image in camera B"):
        read_dataset("cuhk03", str(tmp_path / "m"))


def test_mat_of_the_wrong_version(tmp_path):
    v5 = F.write_mat_v5(str(tmp_path / "cuhk-03.mat"))
    with pytest.raises(MtdnetError, match=r"cuhk-03.mat: a pre-7.3 MAT-file \('MATLAB 5.0 MAT-file'\).*-v7.3"):
        read_dataset("cuhk03", v5)
    with open(tmp_path / "junk.mat", "wb") as f:
        f.write(b"\x00" * 300)
    with pytest.raises(MtdnetError, match=r"junk.mat: not a MATLAB v7.3 \(HDF5\) file"):
        read_dataset("cuhk03", str(tmp_path / "junk.mat"))
    with h5py.File(tmp_path / "other.mat", "w") as f:
        f["labeled"] = np.zeros((5, 1))
    with pytest.raises(MtdnetError, match=r"other.mat: no variable 'testsets'"):
        read_dataset("cuhk03", str(tmp_path / "other.mat"))
    with h5py.File(tmp_path / "other.mat", "a") as f:
        f["testsets"] = np.zeros((20, 1))
    with pytest.raises(MtdnetError, match=r"other.mat: 'labeled' is not a cell array"):
        read_dataset("cuhk03", str(tmp_path / "other.mat"))


def test_corrupt_or_unreadable_image(tmp_path):
    F.write_viper(tmp_path / "v", [1, 2])
    ds = read_dataset("viper", str(tmp_path / "v"))
    bad = ds.records[0].image
    with open(bad, "r+b") as f:   # truncated: half a BMP
        data = f.read()
        f.seek(0)
        f.truncate()
        f.write(data[: len(data) // 2])
    with pytest.raises(MtdnetError, match=f"{bad}: cannot decode the image"):
        load_image(ds.records[0])
    with open(bad, "wb"):
        pass
    with pytest.raises(MtdnetError, match=f"{bad}: the image file is empty"):
        load_image(ds.records[0])
    os.remove(bad)
    os.mkdir(bad)   # a directory where the image should be: the read itself fails
    with pytest.raises(MtdnetError, match=f"{bad}: cannot read the image file"):
        load_image(ds.records[0])


def test_unknown_option_and_dataset():
    with pytest.raises(MtdnetError, match="option images='raw'"):
        read_dataset("cuhk03", "/x", images="raw")
    with pytest.raises(MtdnetError, match="no option 'images'"):
        read_dataset("viper", "/x", images="labeled")
    with pytest.raises(MtdnetError, match="unknown dataset 'market'"):
        read_dataset("market")
