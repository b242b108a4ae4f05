"""i-LIDS (MCTS): i-LIDS_Pedestrian/Persons/PPPPIII.jpg, 476 images of 119 persons.

The dataset has no camera label. As the authors: a person's image 1 (lowest
III) is the gallery image (camera id 1), the others are probes (camera id 0).
Training pairs do not follow these assigned cameras: every two images of a
training person form a positive pair (Facts.cameras_known = False).
"""
import os
import re

from core import MtdnetError
from data_prep.records import (GALLERY_CAMERA, PROBE_CAMERA, Dataset, Facts, Record,
                               files_with_ext, find_image_dir, paper_split)

NAME = "i-LIDS"
PATTERN = re.compile(r"^(\d{4})(\d{3})\.jpg$", re.IGNORECASE)
LAYOUT = "i-LIDS_Pedestrian/Persons/ holding PPPPIII.jpg images (PPPP = person, III = image)"


def image_dir(root):
    return find_image_dir(root, NAME, [("i-LIDS_Pedestrian", "Persons"), ("Persons",)], PATTERN, LAYOUT)


def read(root):
    d = image_dir(root)
    by_person = {}
    for f in files_with_ext(d, (".jpg", ".jpeg")):
        path = os.path.join(d, f)
        m = PATTERN.match(f)
        if not m:
            raise MtdnetError(f"{path}: name does not match PPPPIII.jpg ({NAME} layout)")
        by_person.setdefault(int(m.group(1)), []).append((int(m.group(2)), path))
    records, inputs = [], []
    for pid, imgs in sorted(by_person.items()):
        imgs.sort()
        if len(imgs) < 2:
            raise MtdnetError(f"{imgs[0][1]}: person {pid} has only one image; {NAME} needs a "
                              f"gallery image and at least one probe per person")
        for k, (_, path) in enumerate(imgs):
            cam = GALLERY_CAMERA if k == 0 else PROBE_CAMERA
            records.append(Record(path, pid, cam, os.path.relpath(path, root)))
            inputs.append(path)
    paper = paper_split("ilids_test.json")
    notes = [f"person {pid}: {len(by_person[pid])} images here, {n} in the authors' record"
             for pid, n in paper["rows"] if pid in by_person and len(by_person[pid]) != n]
    facts = Facts(
        name=NAME, root=root, n_train=60, n_val=0, n_test=59,
        protocol="i-LIDS: 60 train / 59 test identities; gallery = each person's image 1, "
                 "probes = the other images",
        paper_test_ids=[int(r[0]) for r in paper["rows"]], paper_source="ilids_test.json",
        cameras=("probes (images 2..)", "gallery (image 1)"), cameras_known=False,
        inputs=inputs, notes=notes)
    return Dataset(records, facts)
