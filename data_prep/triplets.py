"""Training triplets as the authors built them (their BuildData_*.py; README, Fidelity).

For each positive cross-camera pair (A, B) of a training identity:
`per_pair` triplets (anchor A, positive B, negative = a random image of
another training identity from B's camera), and as many with the anchor from
camera B (A, B swapped, negative from A's camera); the list is shuffled.
Where a dataset has no camera labels (i-LIDS), every two images of a person
form a pair and negatives come from any camera. With negatives="every_other"
(the release's PRID2011, BuildData_PRID.py:54-71) each positive pair and
direction gets one triplet per other training identity instead, its negative
a random image of that identity from the positive's camera.
Mirroring is not stored: the data layer flips each image at random at
training time (the paper's "fourfold": each image of a pair original or mirrored).
"""
import numpy as np

from core import MtdnetError

NEGATIVES = ("random", "every_other")


def positive_pairs(images, train_ids, cameras_known=True):
    """(P, 2) image indices: (camera-0 image, camera-1 image) of each training identity."""
    train_ids = set(train_ids)
    by_person = {}
    for im in images:
        if im["person_id"] in train_ids:
            by_person.setdefault(im["person_id"], []).append(im)
    pairs = []
    for pid in sorted(by_person):
        ims = by_person[pid]
        if cameras_known:
            a = [im["index"] for im in ims if im["camera_id"] == 0]
            b = [im["index"] for im in ims if im["camera_id"] == 1]
            pairs.extend((i, j) for i in a for j in b)
        else:
            idx = [im["index"] for im in ims]
            pairs.extend((idx[i], idx[j]) for i in range(len(idx)) for j in range(i + 1, len(idx)))
    return np.asarray(pairs, np.int64).reshape(-1, 2)


def make_triplets(images, train_ids, per_pair, seed, cameras_known=True, negatives="random"):
    """(triplets int32 (T, 3) shuffled, number of positive pairs)."""
    if negatives not in NEGATIVES:
        raise MtdnetError(f"unknown negatives rule '{negatives}'; valid: {', '.join(NEGATIVES)}")
    if per_pair < 1:
        raise MtdnetError(f"triplets_per_pair must be >= 1, got {per_pair}")
    pairs = positive_pairs(images, train_ids, cameras_known)
    if len(pairs) == 0:
        raise MtdnetError("no positive cross-camera pair among the training identities")
    train_ids = set(train_ids)
    pid = np.array([im["person_id"] for im in images])
    cam = np.array([im["camera_id"] for im in images]) if cameras_known else np.zeros(len(images), int)
    is_train = np.array([p in train_ids for p in pid])
    pools = {}
    for c in np.unique(cam[is_train]):
        pool = np.flatnonzero(is_train & (cam == c))
        if len(np.unique(pid[pool])) < 2:
            raise MtdnetError(f"camera {c} holds images of fewer than 2 training identities: "
                              f"no negative for a triplet")
        pools[c] = pool
    rng = np.random.default_rng(seed)
    parts = []
    for anchor_col in (0, 1):   # anchor from camera A, then from camera B
        if negatives == "every_other":
            parts.append(_every_other(pairs, anchor_col, pid, cam, pools, rng))
            continue
        anchor = np.repeat(pairs[:, anchor_col], per_pair)
        positive = np.repeat(pairs[:, 1 - anchor_col], per_pair)
        negative = np.empty_like(positive)
        for c, pool in pools.items():
            sel = np.flatnonzero(cam[positive] == c)
            todo = sel
            while len(todo):   # redraw the few that hit the anchor's own identity
                negative[todo] = pool[rng.integers(len(pool), size=len(todo))]
                todo = todo[pid[negative[todo]] == pid[positive[todo]]]
        parts.append(np.stack([anchor, positive, negative], axis=1))
    trip = np.concatenate(parts)
    trip = trip[rng.permutation(len(trip))]
    return trip.astype(np.int32), len(pairs)


def _every_other(pairs, anchor_col, pid, cam, pools, rng):
    """One triplet per positive pair and other training identity: a random image of that
    identity from the positive's camera (identities without one there are skipped)."""
    rows = []
    for c, pool in pools.items():
        ids = np.unique(pid[pool])
        by_id = {p: pool[pid[pool] == p] for p in ids}
        for a, p in pairs[cam[pairs[:, 1 - anchor_col]] == c][:, [anchor_col, 1 - anchor_col]]:
            others = ids[ids != pid[p]]
            neg = np.array([rng.choice(by_id[o]) for o in others])
            rows.append(np.stack([np.full(len(neg), a), np.full(len(neg), p), neg], axis=1))
    return np.concatenate(rows)
