"""Single-shot re-ID evaluation math: CMC, mAP and result summaries.

Pure numpy over a (P, G) score matrix (P probes, G gallery images) and the
person id of every probe and gallery image; no Caffe here. `higher_is_better`
says what a score is: True for a similarity (the mean softmax P(same) of the
cls-type models), False for a distance (squared Euclidean of trp / rnk).

Tie rule (pessimistic, never inflates a number): a gallery image that scores
exactly as well as a true match is ranked ahead of it. So a probe whose true
match ties with t wrong images and is beaten by b others gets rank b + t + 1;
a constant score matrix gives every probe rank G. For AP, several true
matches of one probe that tie with each other sit consecutively, after every
wrong image of the same score.

Ranks are 1-based. CMC[k] (k = 0 .. G-1) is the fraction of probes whose first
true match is within the top k+1 (the first true match in the ranking counts;
the others only matter for AP). Rank-k for k > G is CMC[G-1]: the whole
gallery is shown, so it is 1.0 when every probe has a true match; results
record `gallery_size` so a reader can tell.

Fractions internally (`Evaluation`); the result dicts for cmc.json
(`trial_summary`, `protocol_result`, `combine_splits`) are in percent.
"""
import dataclasses

import numpy as np

from core import MtdnetError

RANKS = (1, 5, 10, 20)
METRICS = tuple(f"rank{k}" for k in RANKS) + ("mAP",)
TIE_RULE = "pessimistic: a gallery image scoring equal to the true match ranks ahead of it"
_CHUNK_ROWS = 1024        # bounds temporary memory to about chunk x G x 8 bytes


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """One trial's per-probe results (fractions, not percent).

    ranks[i]    1-based rank of the first true match of probe kept[i]
    ap[i]       its average precision (0..1]
    kept        positions (into the probe list given) that were evaluated
    excluded    positions dropped because their identity is not in the gallery
                (only with exclude_missing=True; otherwise that is an error)
    gallery_size  G
    """
    ranks: np.ndarray
    ap: np.ndarray
    kept: np.ndarray
    excluded: np.ndarray
    gallery_size: int

    @property
    def n_probes(self):
        return int(self.ranks.size)

    @property
    def cmc(self):
        """Fractions, length gallery_size; cmc[k] = share of probes with rank <= k+1."""
        return cmc_curve(self.ranks, self.gallery_size)

    def rank(self, k):
        """Rank-k accuracy as a fraction; k beyond the gallery is read at the gallery size."""
        return cmc_at(self.cmc, k)

    @property
    def mAP(self):
        return float(self.ap.mean())


def _as_ids(name, ids):
    a = np.asarray(ids)
    if a.ndim != 1:
        raise MtdnetError(f"{name} must be a 1-D list of person ids, got shape {a.shape}")
    return a


def check_scores(scores, probe_ids, gallery_ids):
    """Validated (scores, probe_ids, gallery_ids) arrays: shapes agree, scores finite."""
    s = np.asarray(scores)
    p = _as_ids("probe_ids", probe_ids)
    g = _as_ids("gallery_ids", gallery_ids)
    if s.ndim != 2:
        raise MtdnetError(f"scores must be a (probes, gallery) matrix, got shape {s.shape}")
    if s.shape != (p.size, g.size):
        raise MtdnetError(f"scores have shape {s.shape} but there are {p.size} probe ids "
                          f"and {g.size} gallery ids")
    if p.size == 0 or g.size == 0:
        raise MtdnetError(f"nothing to evaluate: {p.size} probes, {g.size} gallery images")
    if not np.issubdtype(s.dtype, np.number) or np.issubdtype(s.dtype, np.complexfloating):
        raise MtdnetError(f"scores must be real numbers, got dtype {s.dtype}")
    if np.issubdtype(s.dtype, np.floating):
        bad = ~np.isfinite(s)
        if bad.any():
            r, c = np.argwhere(bad)[0]
            raise MtdnetError(f"scores hold {int(bad.sum())} non-finite value(s) (NaN or inf), "
                              f"first at probe {r}, gallery {c}: {s[r, c]!r}")
    return s, p, g


def _match_table(s, p, g, higher_is_better, pc=None, gc=None):
    """Every (probe, true-match) entry with its pessimistic position in the ranking.

    Returns (probe, k, position), each of length T = number of true-match pairs,
    sorted by probe then by worsening score: k is 1 for a probe's best true
    match, 2 for its next, ...; position is where that match sits in the ranked
    gallery = k + (wrong gallery images scoring at least as well). With cameras
    (pc, gc), a probe's own identity's gallery images from its own camera are left
    out of its ranking (neither a match nor ahead of one).
    """
    probes, values, ahead = [], [], []
    for start in range(0, p.size, _CHUNK_ROWS):
        # Work in "higher is better" floats; negation is exact, so ties survive.
        sc = s[start:start + _CHUNK_ROWS].astype(np.float64, copy=False)
        if not higher_is_better:
            sc = -sc
        match = p[start:start + _CHUNK_ROWS, None] == g[None, :]
        left_out = match & (pc[start:start + _CHUNK_ROWS, None] == gc[None, :]) if pc is not None else None
        if left_out is not None:
            match &= ~left_out
        pi, gj = np.nonzero(match)
        v = sc[pi, gj]
        wrong = np.where(match, -np.inf, sc)   # scores are finite, so -inf never counts
        if left_out is not None:
            wrong[left_out] = -np.inf
        n_ahead = np.empty(pi.size, dtype=np.int64)
        if pi.size == wrong.shape[0] and np.array_equal(pi, np.arange(pi.size)):
            n_ahead[:] = np.count_nonzero(wrong >= v[:, None], axis=1)  # one match per probe
        else:
            for e in range(0, pi.size, _CHUNK_ROWS):
                sl = slice(e, e + _CHUNK_ROWS)
                n_ahead[sl] = np.count_nonzero(wrong[pi[sl]] >= v[sl, None], axis=1)
        probes.append(pi + start)
        values.append(v)
        ahead.append(n_ahead)
    probe = np.concatenate(probes)
    v = np.concatenate(values)
    n_ahead = np.concatenate(ahead)
    order = np.lexsort((-v, probe))
    probe, n_ahead = probe[order], n_ahead[order]
    first = np.ones(probe.size, dtype=bool)
    first[1:] = probe[1:] != probe[:-1]
    starts = np.flatnonzero(first)
    k = np.arange(probe.size) - np.repeat(starts, np.diff(np.append(starts, probe.size))) + 1
    return probe, k, k + n_ahead


def evaluate(scores, probe_ids, gallery_ids, *, higher_is_better, exclude_missing=False,
             probe_cams=None, gallery_cams=None):
    """CMC ranks and AP of every probe of one trial -> `Evaluation`.

    scores: (P, G) array, scores[i, j] compares probe i with gallery image j.
    probe_ids, gallery_ids: person ids (ints or strings), length P and G.
    probe_cams, gallery_cams (both or neither): camera ids; a probe is then ranked
    against every gallery image except its own identity's from its own camera (the
    cross-camera rule of CUHK03's 767/700 and Market-1501 protocols).
    A probe whose identity has no gallery image is an error unless
    exclude_missing=True, which drops it and lists it in `excluded`.
    Vectorised: a 10000 x 10000 matrix takes a few passes over the scores.
    """
    s, p, g = check_scores(scores, probe_ids, gallery_ids)
    pc = gc = None
    if (probe_cams is None) != (gallery_cams is None):
        raise MtdnetError("probe_cams and gallery_cams go together")
    if probe_cams is not None:
        pc, gc = np.asarray(probe_cams), np.asarray(gallery_cams)
        if pc.shape != p.shape or gc.shape != g.shape:
            raise MtdnetError(f"cameras: {pc.shape} probe and {gc.shape} gallery, for {p.size} probes and "
                              f"{g.size} gallery images")
    probe, k, pos = _match_table(s, p, g, higher_is_better, pc, gc)
    n_matches = np.bincount(probe, minlength=p.size)
    missing = np.flatnonzero(n_matches == 0)
    if missing.size and not exclude_missing:
        ids = ", ".join(str(x) for x in p[missing][:5]) + (", ..." if missing.size > 5 else "")
        raise MtdnetError(f"{missing.size} of {p.size} probes have no true match in the gallery "
                          f"(person ids {ids}); the gallery must hold every probe identity "
                          f"(or exclude those probes explicitly)")
    kept = np.flatnonzero(n_matches > 0)
    if kept.size == 0:
        raise MtdnetError("no probe has a true match in the gallery: nothing to evaluate")
    first = np.ones(probe.size, dtype=bool)
    first[1:] = probe[1:] != probe[:-1]
    ranks = pos[first]                        # the probe's best true match
    ap_sum = np.bincount(probe, weights=k / pos, minlength=p.size)
    ap = ap_sum[kept] / n_matches[kept]
    return Evaluation(ranks=ranks.astype(np.int64), ap=ap, kept=kept, excluded=missing,
                      gallery_size=int(g.size))


def cmc_curve(ranks, gallery_size):
    """CMC fractions of length gallery_size from 1-based first-match ranks."""
    r = np.asarray(ranks, dtype=np.int64)
    if r.size == 0:
        raise MtdnetError("no ranks: nothing to evaluate")
    if r.min() < 1 or r.max() > gallery_size:
        raise MtdnetError(f"ranks must lie in 1..{gallery_size}, got {r.min()}..{r.max()}")
    return np.cumsum(np.bincount(r - 1, minlength=gallery_size)) / r.size


def cmc_at(cmc, k):
    """Rank-k accuracy from a CMC curve (any unit); k beyond its length reads the last value."""
    if k < 1:
        raise MtdnetError(f"rank must be >= 1, got {k}")
    return float(cmc[min(k, len(cmc)) - 1])


def ranked_gallery(score_row, gallery_ids, probe_id, *, higher_is_better, top=None):
    """The ranked gallery of one probe, with the same tie rule as `evaluate`.

    Returns (order, is_match, first_match_rank): order = gallery positions,
    best first (wrong images ahead of equal-scoring true matches, then by
    position), truncated to `top` if given; is_match flags order's entries;
    first_match_rank is 1-based over the whole gallery (None if no true match).
    """
    s = np.asarray(score_row, dtype=np.float64)
    g = _as_ids("gallery_ids", gallery_ids)
    if s.shape != g.shape:
        raise MtdnetError(f"score row has {s.size} entries but there are {g.size} gallery ids")
    if not np.isfinite(s).all():
        raise MtdnetError("score row holds NaN or inf")
    key = -s if higher_is_better else s
    match = g == probe_id
    order = np.lexsort((np.arange(s.size), match, key))
    hits = np.flatnonzero(match[order])
    first = int(hits[0]) + 1 if hits.size else None
    if top is not None:
        order = order[:top]
    return order, match[order], first


def squared_euclidean_distances(probe_feats, gallery_feats):
    """(P, G) squared Euclidean distances between feature rows, in float64, clipped at 0."""
    a = np.asarray(probe_feats, dtype=np.float64)
    b = np.asarray(gallery_feats, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise MtdnetError(f"features must be (N, D) matrices of the same D, got {a.shape} "
                          f"and {b.shape}")
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    return np.maximum(d, 0.0)


# ---- result dicts (percent) -------------------------------------------------

def _pct(x):
    return round(100.0 * float(x), 4)


def trial_summary(ev, ranks=RANKS):
    """One trial as a dict in percent: rank<k> for k in ranks, mAP, sizes."""
    out = {f"rank{k}": _pct(ev.rank(k)) for k in ranks}
    out["mAP"] = _pct(ev.mAP)
    out["n_probes"] = ev.n_probes
    out["gallery_size"] = ev.gallery_size
    out["n_excluded"] = int(ev.excluded.size)
    return out


def _std(values):
    v = np.asarray(values, dtype=np.float64)
    return float(v.std(ddof=1)) if v.size > 1 else 0.0


def _mean_curve(curves):
    """Mean of CMC curves; shorter ones are extended with their last value (see cmc_at)."""
    n = max(len(c) for c in curves)
    m = np.array([np.concatenate([c, np.full(n - len(c), c[-1])]) for c in curves], dtype=float)
    return m.mean(0), (m.std(0, ddof=1) if len(curves) > 1 else np.zeros(n))


def _same_or_mean(values):
    v = list(values)
    return v[0] if all(x == v[0] for x in v) else round(float(np.mean(v)), 4)


def protocol_result(evaluations, protocol, *, higher_is_better, seed=None, ranks=RANKS):
    """The cmc.json body for one split: metrics averaged over the trials, in percent.

    evaluations: the `Evaluation` of each trial (one for `paper`, several for
    `random`). Keys: protocol, trials, rank<k> and mAP (means), rank<k>_std and
    mAP_std (sample std over trials, 0 for one trial), cmc (mean curve, percent,
    rank 1..G), cmc_std, per_trial (each trial's summary), n_probes,
    gallery_size (per trial; a mean if trials differ), score ("similarity" or
    "distance"), tie_rule, seed (of the trial draws; None for fixed galleries).
    The caller adds model, profile, iterations.
    """
    evs = list(evaluations)
    if not evs:
        raise MtdnetError("no trials to summarise")
    per_trial = [trial_summary(ev, ranks) for ev in evs]
    out = {"protocol": protocol, "trials": len(evs)}
    for m in [f"rank{k}" for k in ranks] + ["mAP"]:
        vals = [t[m] for t in per_trial]
        out[m] = round(float(np.mean(vals)), 4)
        out[m + "_std"] = round(_std(vals), 4)
    mean, std = _mean_curve([ev.cmc for ev in evs])
    out["cmc"] = [round(100.0 * x, 4) for x in mean]
    out["cmc_std"] = [round(100.0 * x, 4) for x in std]
    out["per_trial"] = per_trial
    out["n_probes"] = _same_or_mean(t["n_probes"] for t in per_trial)
    out["gallery_size"] = _same_or_mean(t["gallery_size"] for t in per_trial)
    out["score"] = "similarity" if higher_is_better else "distance"
    out["tie_rule"] = TIE_RULE
    out["seed"] = seed
    return out


def combine_splits(results, names=None):
    """Mean over several splits' `protocol_result` dicts (e.g. the random<k> splits).

    Each metric is the mean of the splits' means; <metric>_std is the sample
    std across the split means; trials is the total number of trials;
    per_split keeps each split's headline numbers (named by `names` if given).
    """
    res = list(results)
    if not res:
        raise MtdnetError("no split results to combine")
    if names is not None and len(names) != len(res):
        raise MtdnetError(f"{len(names)} names for {len(res)} split results")
    protocols = sorted({r["protocol"] for r in res})
    if len(protocols) != 1:
        raise MtdnetError(f"cannot combine results of different protocols: {protocols}")
    scores = sorted({r.get("score") for r in res})
    if len(scores) != 1:
        raise MtdnetError(f"cannot combine similarity and distance results: {scores}")
    metrics = [m for m in res[0] if (m.startswith("rank") and not m.endswith("_std")) or m == "mAP"]
    for i, r in enumerate(res):
        lacking = [m for m in metrics if m not in r]
        if lacking:
            raise MtdnetError(f"split result {names[i] if names else i} lacks {lacking}")
    out = {"protocol": protocols[0], "splits": len(res),
           "trials": int(sum(r["trials"] for r in res))}
    for m in metrics:
        vals = [r[m] for r in res]
        out[m] = round(float(np.mean(vals)), 4)
        out[m + "_std"] = round(_std(vals), 4)
    mean, std = _mean_curve([np.asarray(r["cmc"], dtype=float) for r in res])
    out["cmc"] = [round(x, 4) for x in mean]
    out["cmc_std"] = [round(x, 4) for x in std]
    out["per_split"] = [dict({m: r[m] for m in metrics}, trials=r["trials"],
                             **({"name": names[i]} if names else {}))
                        for i, r in enumerate(res)]
    out["score"] = scores[0]
    out["tie_rule"] = TIE_RULE
    return out


def loop_rank_ap(scores, probe_ids, gallery_ids, higher_is_better):
    """The slow, obvious reference of `evaluate` (checked against it by tests and `make bench`):
    sort each probe's gallery (ties: wrong images first), read the ranks."""
    ranks, aps = [], []
    for i, pid in enumerate(probe_ids):
        row = [float(x) if higher_is_better else -float(x) for x in scores[i]]
        match = [gid == pid for gid in gallery_ids]
        order = sorted(range(len(row)), key=lambda j: (-row[j], match[j]))
        hits = [pos + 1 for pos, j in enumerate(order) if match[j]]
        if not hits:
            continue
        ranks.append(hits[0])
        aps.append(sum((h + 1) / pos for h, pos in enumerate(hits)) / len(hits))
    return np.array(ranks), np.array(aps)
