"""Evaluation protocols: which images are probes and which form the gallery.

Plain inputs, no file formats: every image is an (image_index, person_id)
pair, image_index being its index in the prepared images.json / LMDB.

- `paper_trial(probes, gallery, distractors)`: the authors' fixed gallery
  (README, Evaluation: Protocols), one trial.
- `random_trials(probes, candidates, n_trials, seed, distractors)`: each trial
  draws one gallery image per identity from `candidates` (seeded RNG), so
  results are a mean and spread over trials.
- `trials_from_records(records, protocol, ...)`: both, from images.json records.

Shared rules:
- An image never serves as its own probe: an image that is in the gallery of
  a trial is dropped from that trial's probes. So for a camera-less dataset
  (i-LIDS) pass every test image as both probe and candidate: each trial puts
  one image per identity in the gallery and probes with the rest, several
  probes per identity.
- Distractors (PRID2011's 549 cam_b persons without a cam_a test image) are in
  every trial's gallery; their person ids must not be a probe identity.
- Every probe identity needs a gallery image, else it is an error here (the
  evaluation could not rank it).

Scoring: `score_layout(trials)` gives the probe and gallery image indices to
score once (the union over trials); `evaluate_protocol` slices each trial
out of that one matrix, evaluates it and returns the cmc.json body.
"""
import dataclasses

import numpy as np

from core import MtdnetError
from data_prep.splitting import fixed_gallery
from mtdnet import cmc

PROTOCOLS = ("paper", "random")


@dataclasses.dataclass(frozen=True)
class Trial:
    """One probe set against one gallery (image indices and their person ids).

    The gallery lists the identity images first, then the distractors
    (the last n_distractors entries).
    """
    probe: np.ndarray
    probe_ids: np.ndarray
    gallery: np.ndarray
    gallery_ids: np.ndarray
    n_distractors: int = 0
    # Cross-camera trials (cross_camera_trial): the cameras of probe and gallery images; a
    # probe's own identity's gallery images from its own camera are left out of its ranking.
    probe_cams: np.ndarray = None
    gallery_cams: np.ndarray = None

    def to_dict(self):
        """JSON-ready form (e.g. to record the trials beside cmc.json)."""
        d = {"probe": self.probe.tolist(), "probe_ids": self.probe_ids.tolist(),
             "gallery": self.gallery.tolist(), "gallery_ids": self.gallery_ids.tolist(),
             "n_distractors": self.n_distractors}
        if self.probe_cams is not None:
            d.update(probe_cams=self.probe_cams.tolist(), gallery_cams=self.gallery_cams.tolist())
        return d


def check_protocol(name):
    if name not in PROTOCOLS:
        raise MtdnetError(f"unknown protocol '{name}'; valid: {', '.join(PROTOCOLS)}")
    return name


def _pairs(what, items, allow_empty=False):
    """(image_index, person_id) pairs -> (int64 indices, ids); duplicates are an error."""
    items = list(items)
    if not items:
        if allow_empty:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        raise MtdnetError(f"{what}: empty list of (image_index, person_id) pairs")
    try:
        idx = [i for i, _ in items]
        ids = [p for _, p in items]
    except (TypeError, ValueError):
        raise MtdnetError(f"{what}: expected (image_index, person_id) pairs, got e.g. "
                          f"{items[0]!r}") from None
    bad = [i for i in idx
           if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or i < 0]
    if bad:
        raise MtdnetError(f"{what}: image indices must be non-negative integers, got {bad[0]!r}")
    idx = np.asarray(idx, dtype=np.int64)
    uniq, counts = np.unique(idx, return_counts=True)
    if (counts > 1).any():
        raise MtdnetError(f"{what}: image index {uniq[counts > 1][0]} is listed twice")
    return idx, np.asarray(ids)


def _check_distractors(d_idx, d_ids, probe_ids, gallery_idx):
    clash = np.intersect1d(d_ids, probe_ids) if d_ids.size else []
    if len(clash):
        raise MtdnetError(f"distractors: person id {clash[0]} is also a probe identity "
                          f"(a distractor must have no probe)")
    both = np.intersect1d(d_idx, gallery_idx)
    if both.size:
        raise MtdnetError(f"distractors: image index {both[0]} is also a gallery image")


def _make_trial(p_idx, p_ids, g_idx, g_ids, d_idx, d_ids, what):
    keep = ~np.isin(p_idx, g_idx)             # an image is never its own probe
    p_idx, p_ids = p_idx[keep], p_ids[keep]
    if p_idx.size == 0:
        raise MtdnetError(f"{what}: no probe left once the gallery images are taken out")
    missing = np.setdiff1d(p_ids, g_ids)
    if missing.size:
        ids = ", ".join(str(x) for x in missing[:5]) + (", ..." if missing.size > 5 else "")
        raise MtdnetError(f"{what}: {missing.size} probe identit"
                          f"{'y has' if missing.size == 1 else 'ies have'} no gallery image "
                          f"(person ids {ids})")
    _check_distractors(d_idx, d_ids, p_ids, g_idx)
    return Trial(probe=p_idx, probe_ids=p_ids,
                 gallery=np.concatenate([g_idx, d_idx]),
                 gallery_ids=np.concatenate([g_ids, d_ids]) if d_ids.size else g_ids,
                 n_distractors=int(d_idx.size))


def paper_trial(probes, gallery, distractors=()):
    """The authors' fixed protocol: one Trial with exactly this gallery.

    probes, gallery, distractors: (image_index, person_id) pairs. The gallery
    may hold several images of an identity (the first true match in the
    ranking counts for CMC, all of them for mAP).
    """
    p_idx, p_ids = _pairs("probes", probes)
    g_idx, g_ids = _pairs("gallery", gallery)
    d_idx, d_ids = _pairs("distractors", distractors, allow_empty=True)
    return _make_trial(p_idx, p_ids, g_idx, g_ids, d_idx, d_ids, "paper protocol")


def cross_camera_trial(probes, gallery, cameras):
    """A protocol's fixed query / gallery images ranked across cameras (CUHK03's 767/700):
    one Trial; cameras: {image_index: camera id}. Every query needs a gallery image of its
    identity from another camera."""
    p_idx, p_ids = _pairs("queries", probes)
    g_idx, g_ids = _pairs("gallery", gallery)
    t = _make_trial(p_idx, p_ids, g_idx, g_ids, np.zeros(0, np.int64), np.zeros(0, np.int64),
                    "cross-camera protocol")
    try:
        pc = np.array([cameras[int(i)] for i in t.probe])
        gc = np.array([cameras[int(i)] for i in t.gallery])
    except KeyError as e:
        raise MtdnetError(f"cross-camera protocol: no camera for image {e}") from None
    return dataclasses.replace(t, probe_cams=pc, gallery_cams=gc)


def random_trials(probes, candidates, n_trials, seed, distractors=(), probes_per_identity=None):
    """`n_trials` Trials, each with one gallery image per identity drawn from `candidates`.

    probes, candidates, distractors: (image_index, person_id) pairs; an image
    may be both a probe and a candidate (camera-less datasets). Identities
    are visited in sorted order and drawn from np.random.default_rng(seed),
    so the trials are a function of (inputs, n_trials, seed).
    probes_per_identity: None keeps every probe image (minus the gallery
    ones); 1 draws a single probe per identity per trial (single-shot on both
    sides).
    """
    if not isinstance(n_trials, (int, np.integer)) or n_trials < 1:
        raise MtdnetError(f"random protocol: trials must be a positive integer, got {n_trials!r}")
    if probes_per_identity not in (None, 1):
        raise MtdnetError(f"random protocol: probes_per_identity must be None or 1, "
                          f"got {probes_per_identity!r}")
    p_idx, p_ids = _pairs("probes", probes)
    c_idx, c_ids = _pairs("gallery candidates", candidates)
    d_idx, d_ids = _pairs("distractors", distractors, allow_empty=True)
    ids, inverse, counts = np.unique(c_ids, return_inverse=True, return_counts=True)
    by_id = np.argsort(inverse, kind="stable")        # candidates grouped by identity
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rng = np.random.default_rng(seed)
    trials = []
    for t in range(n_trials):
        pick = by_id[starts + rng.integers(0, counts)]
        g_idx, g_ids = c_idx[pick], c_ids[pick]
        tp_idx, tp_ids = p_idx, p_ids
        if probes_per_identity == 1:
            keep = ~np.isin(p_idx, g_idx)
            tp_idx, tp_ids = _one_per_identity(p_idx[keep], p_ids[keep], rng)
        trials.append(_make_trial(tp_idx, tp_ids, g_idx, g_ids, d_idx, d_ids,
                                  f"random protocol, trial {t}"))
    return trials


def _one_per_identity(idx, ids, rng):
    if idx.size == 0:
        return idx, ids
    uniq, inverse, counts = np.unique(ids, return_inverse=True, return_counts=True)
    by_id = np.argsort(inverse, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    pick = np.sort(by_id[starts + rng.integers(0, counts)])
    return idx[pick], ids[pick]


def pairs_from_records(records, role=None, camera=None, person_ids=None):
    """(image_index, person_id) pairs of images.json records, filtered.

    records: dicts with at least "index", "person_id" (and "role",
    "camera_id" when filtering on them); role / camera / person_ids, when
    given, keep only records whose value equals it (or is in person_ids).
    """
    wanted = None if person_ids is None else set(person_ids)
    out = []
    for n, r in enumerate(records):
        try:
            if role is not None and r["role"] != role:
                continue
            if camera is not None and r["camera_id"] != camera:
                continue
            if wanted is not None and r["person_id"] not in wanted:
                continue
            out.append((int(r["index"]), r["person_id"]))
        except KeyError as e:
            raise MtdnetError(f"images.json record {n} lacks the field {e}") from None
    return out


def trials_from_records(records, protocol, *, n_trials=10, seed=0, probe_camera=0,
                        gallery_camera=1, distractor_ids=(), pool=False, role="test"):
    """The trials of `protocol` from images.json records (thin adapter over the above).

    Probes: `role` records from probe_camera; gallery candidates: `role`
    records from gallery_camera; distractors: gallery_camera records (any
    role) of the persons in distractor_ids, who are neither probes nor
    candidates. `paper`: the gallery is each identity's first candidate (the
    lowest image index: CUHK03's first camera-B image, i-LIDS's image 1).
    `random`: n_trials draws with `seed`; pool=True (camera-less i-LIDS)
    lets every test image be a probe or a candidate.
    """
    check_protocol(protocol)
    distract = set(distractor_ids)
    probes = [x for x in pairs_from_records(records, role=role, camera=probe_camera)
              if x[1] not in distract]
    candidates = [x for x in pairs_from_records(records, role=role, camera=gallery_camera)
                  if x[1] not in distract]
    distractors = (pairs_from_records(records, camera=gallery_camera, person_ids=distract)
                   if distract else [])
    if not probes or not candidates:
        raise MtdnetError(f"images.json: {len(probes)} '{role}' images in the probe camera "
                          f"{probe_camera} and {len(candidates)} in the gallery camera "
                          f"{gallery_camera}: nothing to evaluate")
    if protocol == "paper":
        return [paper_trial(probes, fixed_gallery(candidates), distractors)]
    if pool:
        probes = candidates = sorted(probes + candidates)
    return random_trials(probes, candidates, n_trials, seed, distractors)


def score_layout(trials):
    """(rows, cols): sorted unique probe and gallery image indices over all trials.

    Score the matrix rows x cols once (scores[i, j] compares image rows[i]
    as probe with image cols[j] as gallery); `trial_scores` slices it.
    """
    trials = list(trials)
    if not trials:
        raise MtdnetError("no trials")
    rows = np.unique(np.concatenate([t.probe for t in trials]))
    cols = np.unique(np.concatenate([t.gallery for t in trials]))
    return rows, cols


def trial_scores(scores, rows, cols, trial):
    """The (len(trial.probe), len(trial.gallery)) block of a rows x cols score matrix."""
    s = np.asarray(scores)
    rows, cols = np.asarray(rows), np.asarray(cols)
    if s.shape != (rows.size, cols.size):
        raise MtdnetError(f"score matrix has shape {s.shape}, expected {(rows.size, cols.size)} "
                          f"(rows x cols of score_layout)")
    r = _positions(rows, trial.probe, "probe")
    c = _positions(cols, trial.gallery, "gallery")
    return s[np.ix_(r, c)]


def _positions(sorted_idx, wanted, what):
    pos = np.searchsorted(sorted_idx, wanted)
    pos_c = np.minimum(pos, sorted_idx.size - 1)
    bad = sorted_idx[pos_c] != wanted
    if bad.any():
        raise MtdnetError(f"{what} image {wanted[bad][0]} is not in the scored layout")
    return pos_c


def evaluate_protocol(scores, rows, cols, trials, *, protocol, higher_is_better, seed=None):
    """Evaluate every trial on one rows x cols score matrix -> cmc.json body (percent).

    See cmc.protocol_result for the keys; `seed` is the one the random
    trials were drawn with (None for `paper`).
    """
    check_protocol(protocol)
    evs = [cmc.evaluate(trial_scores(scores, rows, cols, t), t.probe_ids, t.gallery_ids,
                        higher_is_better=higher_is_better, probe_cams=t.probe_cams, gallery_cams=t.gallery_cams)
           for t in trials]
    return cmc.protocol_result(evs, protocol, higher_is_better=higher_is_better, seed=seed)
