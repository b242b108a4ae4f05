"""VIPeR: cam_a/NNN_AAA.bmp and cam_b/NNN_AAA.bmp, one image per person and camera.

NNN is the person id (632 ids between 000 and 873), AAA the viewing angle.
Camera A gives the probes, camera B the gallery.
"""
import os
import re

from core import MtdnetError
from data_prep.records import (Dataset, Facts, Record, check_both_cameras,
                               files_with_ext, paper_split, require_dir)

NAME = "VIPeR"
CAMERAS = ("cam_a", "cam_b")
PATTERN = re.compile(r"^(\d+)_(\d+)\.bmp$", re.IGNORECASE)
LAYOUT = "cam_a/ and cam_b/ holding NNN_AAA.bmp images (NNN = person id, AAA = angle)"


def read_layout(root, name):
    """Records of a VIPeR-style directory (also the synthetic dataset's layout)."""
    require_dir(root, f"{name} root")
    records, inputs = [], []
    for cam, sub in enumerate(CAMERAS):
        d = os.path.join(root, sub)
        if not os.path.isdir(d):
            raise MtdnetError(f"{d}: missing; a {name} directory holds {LAYOUT}")
        files = files_with_ext(d, (".bmp",))
        if not files:
            raise MtdnetError(f"{d}: no .bmp images; a {name} directory holds {LAYOUT}")
        seen = {}
        for f in files:
            m = PATTERN.match(f)
            path = os.path.join(d, f)
            if not m:
                raise MtdnetError(f"{path}: name does not match NNN_AAA.bmp ({name} layout)")
            pid = int(m.group(1))
            if pid in seen:
                raise MtdnetError(f"{path}: person {pid} already has {sub}/{seen[pid]}; "
                                  f"{name} has one image per person and camera")
            seen[pid] = f
            records.append(Record(path, pid, cam, f"{sub}/{f}"))
            inputs.append(path)
    check_both_cameras(records, name)
    return records, inputs


def read(root):
    records, inputs = read_layout(root, NAME)
    paper = paper_split("viper_test.json")
    facts = Facts(
        name=NAME, root=root, n_train=316, n_val=0, n_test=316,
        protocol="VIPeR: 316 train / 316 test identities; probe cam_a, gallery cam_b (one image each)",
        paper_test_ids=[int(r[0]) for r in paper["rows"]], paper_source="viper_test.json",
        paper_test_names=[f"{sub}/{stem}.bmp" for r in paper["rows"]
                          for sub, stem in (("cam_a", r[1]), ("cam_b", r[2]))],
        inputs=inputs)
    return Dataset(records, facts)
