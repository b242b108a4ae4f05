"""PRID2011 single-shot: single_shot/cam_a/person_NNNN.png (385), cam_b/person_NNNN.png (749).

Persons 1..200 are seen by both cameras: the protocol's identity pool. cam_b
persons above 200 are gallery distractors (549); cam_a persons above 200 are
other people (person id 10000 + N here) and not used by the protocol.
"""
import os
import re

from core import MtdnetError
from data_prep.records import (Dataset, Facts, Record, check_both_cameras,
                               files_with_ext, paper_split, require_dir)

NAME = "PRID2011"
PAIRED = 200
CAM_A_ONLY = 10000   # person id offset of the cam_a-only persons (201..385 -> 10201..10385)
PATTERN = re.compile(r"^person_(\d{4})\.png$", re.IGNORECASE)
LAYOUT = "single_shot/cam_a/ and single_shot/cam_b/ holding person_NNNN.png images"


def camera_dirs(root):
    require_dir(root, f"{NAME} root")
    for d in (os.path.join(root, "single_shot"), root):
        if os.path.isdir(os.path.join(d, "cam_a")) or os.path.isdir(os.path.join(d, "cam_b")):
            out = []
            for sub in ("cam_a", "cam_b"):
                p = os.path.join(d, sub)
                if not os.path.isdir(p):
                    raise MtdnetError(f"{p}: missing; a {NAME} directory holds {LAYOUT}")
                out.append(p)
            return out
    raise MtdnetError(f"{root}: not a {NAME} directory; expected {LAYOUT}")


def read(root):
    records, inputs, ids = [], [], ({}, {})
    for cam, d in enumerate(camera_dirs(root)):
        files = files_with_ext(d, (".png",))
        if not files:
            raise MtdnetError(f"{d}: no .png images; a {NAME} directory holds {LAYOUT}")
        for f in files:
            path = os.path.join(d, f)
            m = PATTERN.match(f)
            if not m:
                raise MtdnetError(f"{path}: name does not match person_NNNN.png ({NAME} layout)")
            pid = int(m.group(1))
            if cam == 0 and pid > PAIRED:   # a different person than cam_b's of that number
                pid += CAM_A_ONLY
            ids[cam][pid] = path
            records.append(Record(path, pid, cam, os.path.relpath(path, root)))
            inputs.append(path)
    check_both_cameras(records, f"{NAME} (persons 1..{PAIRED})", ids=range(1, PAIRED + 1))
    distractors = sorted(p for p in ids[1] if p > PAIRED)
    notes = [] if len(distractors) == 549 else [
        f"{len(distractors)} cam_b distractors (persons > {PAIRED}); the paper's gallery has 549"]
    paper = paper_split("prid_test.json")
    facts = Facts(
        name=NAME, root=root, n_train=100, n_val=0, n_test=100,
        protocol="PRID2011 single-shot: 100 train / 100 test of the 200 persons seen by both "
                 "cameras; probes cam_a, gallery the test persons' cam_b images plus the "
                 "cam_b-only persons 201..749 (549 distractors)",
        paper_test_ids=[int(p) for p in paper["person_ids"]], paper_source="prid_test.json",
        identities=list(range(1, PAIRED + 1)), distractor_ids=distractors,
        inputs=inputs, notes=notes)
    return Dataset(records, facts)
