"""CUHK01: campus/PPPPIII.png, 971 persons x 4 images.

PPPP is the person id (1-based); III 001-002 are camera A (probes), 003-004
camera B (gallery). Two protocols, the option `protocol`: "100" (871 train /
100 test identities, Table 1's) and "half" (485 / 486, the release's
CUHK01half), each with the test identities the authors recorded.
"""
import os
import re

from core import MtdnetError
from data_prep.records import (Dataset, Facts, Record, check_both_cameras,
                               files_with_ext, find_image_dir, paper_split)

NAME = "CUHK01"
PATTERN = re.compile(r"^(\d{4})(\d{3})\.png$", re.IGNORECASE)
LAYOUT = "campus/ holding PPPPIII.png images (PPPP = person, III = 001..004)"
# protocol -> (recorded test identities, train, test)
PROTOCOLS = {"100": ("cuhk01_test.json", 871, 100), "half": ("cuhk01half_test.json", 485, 486)}


def image_dir(root):
    return find_image_dir(root, NAME, [("campus",)], PATTERN, LAYOUT)


def read(root, protocol="100"):
    if protocol not in PROTOCOLS:
        raise MtdnetError(f"{NAME}: unknown protocol '{protocol}'; valid: {', '.join(PROTOCOLS)}")
    source, n_train, n_test = PROTOCOLS[protocol]
    d = image_dir(root)
    records, inputs = [], []
    for f in files_with_ext(d, (".png",)):
        path = os.path.join(d, f)
        m = PATTERN.match(f)
        if not m:
            raise MtdnetError(f"{path}: name does not match PPPPIII.png ({NAME} layout)")
        pid, num = int(m.group(1)), int(m.group(2))
        if not 1 <= num <= 4:
            raise MtdnetError(f"{path}: image number {num:03d} outside 001..004 ({NAME} layout)")
        records.append(Record(path, pid, 0 if num <= 2 else 1, os.path.relpath(path, root)))
        inputs.append(path)
    check_both_cameras(records, NAME)
    paper = paper_split(source)
    facts = Facts(
        name=NAME, root=root, n_train=n_train, n_val=0, n_test=n_test,
        protocol=f"CUHK01: {n_train} train / {n_test} test identities; probes camera A (001-002), "
                 "gallery the first camera-B image (003)",
        paper_test_ids=[int(p) for p in paper["person_ids"]], paper_source=source,
        cameras=("camera A (001-002)", "camera B (003-004)"), inputs=inputs, options={"protocol": protocol})
    return Dataset(records, facts)
