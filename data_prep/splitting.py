"""Splits (which identities train, validate, test) and the evaluation's image lists.

Splits (core.splits.Split): `paper` (the authors' recorded test identities, shipped in
data_prep/splits/), `random<k>` (seeded random splits of the protocol's
sizes), `testsets<k>` (CUHK03: the k-th of the 20 test sets in cuhk-03.mat),
`val` (for tuning: the paper split's test identities are left out entirely and
a seeded third of its training identities is held out as the test set, so a
setting can be chosen without ever looking at the paper's test identities).
Validation identities, where the protocol has them (CUHK03: 100), are drawn
from the non-test identities with the recorded seed.
"""
import numpy as np

from core import MtdnetError, Split

ROLES = ("train", "val", "test")


def split_names(facts, split, num_splits=10):
    """The concrete Splits `split` stands for: 'random' -> random0..random{n-1}."""
    split = Split.parse(split)
    if split.kind == "testsets":
        if not facts.testsets:
            raise MtdnetError(f"{facts.name} has no recorded test sets; 'testsets' is CUHK03's "
                              f"(the 20 splits in cuhk-03.mat)")
        return split.expand(len(facts.testsets))
    if split.kind == "random" and num_splits < 1:
        raise MtdnetError(f"--num-splits must be >= 1, got {num_splits}")
    return split.expand(num_splits)


def identity_pool(dataset):
    """The identities a split divides: the protocol's pool, else every person found."""
    return sorted(dataset.facts.identities) if dataset.facts.identities is not None \
        else dataset.person_ids()


def make_split(dataset, split, seed, num_test=None, num_val=None):
    facts = dataset.facts
    split = Split.parse(split).require_concrete("a split's identities")
    name, kind, k = split.name, split.kind, split.index or 0
    if kind == "new":
        return _image_protocol_split(dataset, name, seed, num_test, num_val)
    ids = identity_pool(dataset)
    present = set(ids)
    n_val = facts.n_val if num_val is None else int(num_val)
    if n_val < 0 or (num_test is not None and num_test < 1):
        raise MtdnetError(f"--num-test must be >= 1 and --num-val >= 0, got {num_test}, {num_val}")
    rng = np.random.default_rng([seed, k])
    if kind == "random":
        n_test = facts.n_test if num_test is None else int(num_test)
        if len(ids) < n_test + n_val + 2:
            raise MtdnetError(f"{facts.root}: {len(ids)} identities, too few for {n_test} test + "
                              f"{n_val} val + 2 train")
        perm = [int(p) for p in rng.permutation(ids)]
        test = perm[:n_test]
        rule = f"random split {k}: identities permuted with seed [{seed}, {k}]; first {n_test} test"
    elif kind == "val":
        if not facts.paper_test_ids:
            raise MtdnetError(f"{facts.name} has no recorded paper split to hold validation identities out of")
        paper_test = {int(p) for p in facts.paper_test_ids}
        pool = [p for p in ids if p not in paper_test]
        n_test = len(pool) // 3 if num_test is None else int(num_test)
        if len(pool) < n_test + n_val + 2:
            raise MtdnetError(f"{facts.root}: {len(pool)} training identities of the paper split, too few "
                              f"to hold out {n_test} + {n_val} val and keep 2 for training")
        test = sorted(int(p) for p in rng.choice(pool, n_test, replace=False))
        ids = pool                  # the paper's test identities take no part at all
        rule = (f"val: the paper split's {len(paper_test)} test identities left out; {n_test} of its "
                f"{len(pool)} training identities held out as the test set with seed [{seed}, {k}]")
    else:
        if num_test is not None:
            raise MtdnetError(f"--num-test applies to random and val splits; split '{name}' uses recorded "
                              f"test identities")
        if kind == "paper":
            source = f"data_prep/splits/{facts.paper_source}" if facts.paper_source else facts.paper_rule
            test = facts.paper_test_ids
            if not test:
                raise MtdnetError(f"{facts.root}: {facts.name} has no paper test identities here ({source})")
            rule = facts.paper_rule or f"paper: the authors' recorded test identities ({source})"
        else:
            test, source = facts.testsets[k], f"testsets{{{k + 1}}} of {facts.inputs[0]}"
            rule = f"CUHK03 testsets{{{k + 1}}} (1-based in MATLAB) of cuhk-03.mat"
        test = [int(p) for p in test]
        missing = [p for p in test if p not in present]
        if missing:
            raise MtdnetError(f"{facts.root}: {len(missing)} recorded test identities of {source} "
                              f"are not in the dataset's pool, e.g. {missing[:5]}")
        if len(set(test)) != len(test):
            raise MtdnetError(f"{source}: test identities repeat")
        if kind == "paper" and facts.paper_test_names:
            names = {r.name for r in dataset.records}
            gone = [n for n in facts.paper_test_names if n not in names]
            if gone:
                raise MtdnetError(f"{facts.root}: {len(gone)} recorded test images of {source} are "
                                  f"missing, e.g. {gone[:3]}")
    test_set = set(test)
    rest = [p for p in ids if p not in test_set]
    if len(rest) < n_val + 2:
        raise MtdnetError(f"{facts.root}: {len(rest)} non-test identities, too few for {n_val} val + 2 train")
    recorded = [int(p) for p in (facts.paper_val_ids or []) if p in present and p not in test_set] \
        if kind == "paper" else []
    recorded = recorded[:n_val]
    others = [p for p in rest if p not in set(recorded)]
    drawn = [int(p) for p in rng.choice(others, n_val - len(recorded), replace=False)] if n_val > len(recorded) else []
    val = sorted(recorded + drawn)
    if recorded:
        rule += (f"; val: the authors' {len(facts.paper_val_ids)} recorded validation identities"
                 + (f" less {len(facts.paper_val_ids) - len(recorded)} that are test identities here, "
                    f"{len(drawn)} drawn from the rest with seed [{seed}, {k}]" if drawn else ""))
    elif val:
        rule += f"; {n_val} val drawn from the rest with seed [{seed}, {k}]"
    val_set = set(val)
    train = [p for p in rest if p not in val_set]
    warnings = list(facts.notes)
    sizes = {"train": len(train), "val": len(val), "test": len(test)}
    paper_sizes = {"train": facts.n_train, "val": facts.n_val, "test": facts.n_test}
    if sizes != paper_sizes:
        warnings.append(f"sizes {sizes} differ from the paper protocol's {paper_sizes}")
    distractors = sorted(int(p) for p in (facts.distractor_ids or []))
    return _split_record(facts, name, seed, facts.protocol, rule, train, val, sorted(test), distractors,
                         warnings, facts.substitute if kind == "paper" else None)


def _split_record(facts, name, seed, protocol, rule, train, val, test, distractors, warnings, substitute):
    """split.json's body (eval_sets adds the evaluation's image lists)."""
    return {
        "dataset": facts.key, "dataset_title": facts.name, "split": name, "seed": seed,
        "protocol": protocol, "rule": rule, "options": facts.options,
        "train": train, "val": val, "test": test, "distractors": distractors,
        "sizes": {"train": len(train), "val": len(val), "test": len(test), "distractors": len(distractors)},
        "cameras": list(facts.cameras), "probe_camera": facts.probe_camera,
        "gallery_camera": facts.gallery_camera, "cameras_known": facts.cameras_known,
        "warnings": warnings, "substitute": substitute,
    }


def _image_protocol_split(dataset, name, seed, num_test, num_val):
    """A split fixed image by image (Facts.image_protocols): its identities, no validation
    identities (the protocol has none), and its query / gallery images (record names, turned
    into image indices by eval_sets)."""
    facts = dataset.facts
    make = facts.image_protocols.get(name)
    if make is None:
        raise MtdnetError(f"split '{name}' is CUHK03's 767/700 protocol; {facts.name} has no such split")
    if num_test is not None or num_val:
        raise MtdnetError(f"--num-test / --num-val do not apply to split '{name}': its images are fixed")
    proto = make()
    return dict(_split_record(facts, name, seed, proto.rule, proto.rule, list(proto.train_ids), [],
                              list(proto.test_ids), [], [], None),
                image_protocol={"query": list(proto.query), "gallery": list(proto.gallery)})


def roles(split):
    """person id -> role; distractors are part of the test gallery."""
    out = {p: r for r in ROLES for p in split[r]}
    out.update({p: "test" for p in split["distractors"]})
    return out


def select_images(dataset, split):
    """images.json records: the images of every identity with a role, in a fixed order.

    The order (person, camera, name) and the labels (the person's rank among all
    selected persons) do not depend on the split, so every split of a dataset
    shares one LMDB.
    """
    role_of = roles(split)
    recs = sorted((r for r in dataset.records if r.person_id in role_of),
                  key=lambda r: (r.person_id, r.camera_id, r.name))
    label = {p: i for i, p in enumerate(sorted({r.person_id for r in recs}))}
    images = [{"index": i, "path": r.name, "person_id": r.person_id, "camera_id": r.camera_id,
               "role": role_of[r.person_id], "label": label[r.person_id]}
              for i, r in enumerate(recs)]
    return recs, images


def fixed_gallery(candidates):
    """The gallery rule of the paper protocol: each identity's first gallery-camera image
    (the lowest image index: CUHK03's first view-2 image, i-LIDS's image 1).

    candidates: (image_index, person_id) pairs -> one pair per identity, in identity order
    of first appearance."""
    first = {}
    for idx, pid in sorted(candidates):
        first.setdefault(pid, (idx, pid))
    return list(first.values())


def eval_sets(split, images):
    """Per test (and val) identity: probe indices (probe camera), the fixed gallery image
    (the first gallery-camera image) and all its gallery-camera images; PRID2011's
    distractor gallery images."""
    by_person = {}
    for im in images:
        by_person.setdefault(im["person_id"], []).append(im)
    pc, gc = split["probe_camera"], split["gallery_camera"]

    def entry(pid):
        ims = by_person[pid]
        gallery_all = [im["index"] for im in ims if im["camera_id"] == gc]
        return {"person_id": pid, "probe": [im["index"] for im in ims if im["camera_id"] == pc],
                "gallery": [i for i, _ in fixed_gallery((i, pid) for i in gallery_all)],
                "gallery_all": gallery_all}

    distractors = [im["index"] for p in split["distractors"] for im in by_person.get(p, [])
                   if im["camera_id"] == gc]
    out = {"test": {"identities": [entry(p) for p in split["test"]], "distractors": distractors},
           "val": {"identities": [entry(p) for p in split["val"]], "distractors": []}}
    fixed = split.pop("image_protocol", None)
    if fixed:   # the protocol's own queries and gallery, ranked across cameras
        index = {im["path"]: im["index"] for im in images}
        out["test"].update(query=[index[n] for n in fixed["query"]], gallery=[index[n] for n in fixed["gallery"]],
                           cross_camera=True)
    return out
