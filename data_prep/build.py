"""`make data`: read a dataset, split it, resize every image into one LMDB, make triplets.

Output (the prepared-data contract), one directory per dataset/profile/split,
data/<dataset>-<profile>-<split>/ (core.runs.DataSpec names it; CUHK03's
detected images: <dataset> = cuhk03detected):
  images.lmdb/        one Caffe Datum per image (3 x S x S uint8 BGR), key %08d
  train_triplets.npy  int32 (T, 3) image indices (anchor, positive, negative)
  mix_triplets.npy    the same for MTDnet-aug's 1:1 mix, as the release built it: a target
                      dataset's at profile.aug_triplets_per_pair, the source's (CUHK03) at
                      profile.source_triplets_per_pair
  images.json         one record per LMDB index
  split.json          identities per role, the rule and seed, the evaluation's image lists
  manifest.json       inputs (files, sizes, mtimes), profile, seed, counts, bytes, speed
Each directory is built under a temporary name and renamed at the end. A
directory whose manifest has the same key (inputs, profile, split, seed, code
version) is left alone. The splits of one dataset and profile hold the same
images in the same order, so they share one LMDB file (a hard link).
"""
import dataclasses
import glob
import hashlib
import json
import os
import shutil
import sys
import time

import numpy as np
from tqdm import tqdm

from core import REPO_ROOT, DataSpec, MtdnetError, Project, Split, get_dataset, get_profile
from core.fsutil import atomic_dir, atomic_write_json, free_bytes, read_json
from core.locks import exclusive
from core.profiles import check_seed
from core.runs import DATA_FILES
from data_prep import imagedb, splitting
from data_prep.datasets import default_root, get_reader, read_dataset
from data_prep.records import SPLITS_DIR, load_image, remove_stale_partials, resize_chw
from data_prep.triplets import make_triplets

DATA_VERSION = 2   # bump when the output of the same inputs changes: forces rebuilds
MIRRORING = ("not stored: the training data layer mirrors each image horizontally at random "
             "(p = 0.5, independently per image of a triplet), the paper's fourfold enlargement")
FILES = tuple(DATA_FILES.all())


@dataclasses.dataclass(frozen=True)
class SplitOptions:
    """How the identities are divided, beyond the split's name."""
    seed: int = None          # default: the profile's
    num_splits: int = 10      # how many random<k> 'random' stands for
    num_test: int = None      # random / val: test identities (default: the protocol's)
    num_val: int = None       # validation identities (default: the protocol's)

    def key(self):
        return {"num_test": self.num_test, "num_val": self.num_val}


def _sha(obj):
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def fingerprint(paths, root):
    """The inputs as (relative path, size, mtime_ns): any change means a rebuild."""
    base = root if os.path.isdir(root) else os.path.dirname(root)
    entries = []
    for p in sorted(paths):
        try:
            st = os.stat(p)
        except OSError as e:
            raise MtdnetError(f"{p}: cannot stat the input ({e.strerror})")
        entries.append([os.path.relpath(p, base), st.st_size, st.st_mtime_ns])
    return {"root": os.path.abspath(root), "files": len(entries),
            "bytes": sum(e[1] for e in entries), "sha256": _sha(entries), "list": entries}


def _up_to_date(out, key):
    if not all(os.path.exists(os.path.join(out, f)) for f in FILES):
        return None
    try:
        m = read_json(os.path.join(out, DATA_FILES.manifest))
    except MtdnetError:
        return None
    return m if m.get("key") == key else None


def _shared_lmdb(data, lmdb_key):
    """An LMDB with exactly these images built for a sibling split (same dataset and profile)."""
    out = data.dir
    prefix = data.name[:-len(data.split.name)]
    for m in sorted(glob.glob(os.path.join(glob.escape(os.path.dirname(out)), glob.escape(prefix) + "*",
                                           DATA_FILES.manifest))):
        if os.path.dirname(m) == out:
            continue
        try:
            if read_json(m).get("lmdb_key") == lmdb_key:
                data = os.path.join(os.path.dirname(m), DATA_FILES.lmdb, "data.mdb")
                if os.path.isfile(data):
                    return data
        except MtdnetError:
            continue
    return None


def made_here(out):
    """Whether `out` is a prepared-data folder written by this module (its manifest.json)."""
    try:
        m = read_json(os.path.join(out, DATA_FILES.manifest))
    except MtdnetError:
        return False
    return isinstance(m, dict) and "key" in m and "data_version" in m


def outdated(out):
    """Why the prepared-data folder `out` cannot be trained from as it is (a missing file, an
    older data version), or None."""
    missing = [f for f in FILES if not os.path.isfile(os.path.join(out, f))]
    if missing:
        return f"{', '.join(missing)} missing"
    version = read_json(os.path.join(out, DATA_FILES.manifest)).get("data_version")
    if version != DATA_VERSION:
        return f"prepared by an older version of make data (data version {version}, now {DATA_VERSION})"
    return None


def guard(out):
    """atomic_dir's guard: a prepared-data folder replaces only an empty folder or one made here."""
    return (made_here, "prepared data",
            "Move it away, or prepare into another folder (DATA_ARGS=--data-dir <new folder>).")


def _owner(data_mdb):
    """The split directory an LMDB file was first written for: .../<dir>/images.lmdb/data.mdb."""
    return os.path.basename(os.path.dirname(os.path.dirname(data_mdb)))


def _write_lmdb(lmdb_dir, recs, images, size, desc, progress, map_size, name):
    def items():
        for rec, im in zip(tqdm(recs, desc=desc, unit="img", disable=not progress,
                                dynamic_ncols=True, file=sys.stderr), images):
            yield resize_chw(load_image(rec), size), im["label"]
    t0 = time.perf_counter()
    n, nbytes = imagedb.write_image_lmdb(lmdb_dir, items(), map_size=map_size, count=len(images), name=name)
    return n, nbytes, time.perf_counter() - t0


def _check_room(out, images, size, shared):
    """Stop before writing when the images alone (3 x size x size bytes each) cannot fit."""
    need = 0 if shared else len(images) * 3 * size * size
    free = free_bytes(out)
    if free is not None and need > free:
        raise MtdnetError(f"{out}: needs at least {need / 1e6:.1f} MB ({len(images)} images at {size}x{size}); "
                          f"{free / 1e6:.1f} MB free on that file system. Free some space, or prepare into "
                          "another folder (DATA_ARGS=--data-dir <folder>)")


def build_split(ds, data, seed, fp, key, opts, *, progress=True, log=print, map_size=None, argv=None,
                share=True):
    """Build one prepared-data directory (data: a DataSpec) from the read dataset `ds`."""
    t0 = time.perf_counter()
    facts, prof, out, name = ds.facts, data.profile, data.dir, data.split.name
    split = splitting.make_split(ds, data.split, seed, opts.num_test, opts.num_val)
    recs, images = splitting.select_images(ds, split)
    split["eval"] = splitting.eval_sets(split, images)
    split.update(dataset=data.dataset.name, dataset_key=facts.key)   # one meaning of "dataset" everywhere
    spec = data.dataset.spec
    triplets, n_pairs = make_triplets(images, split["train"], prof.triplets_per_pair, seed,
                                      facts.cameras_known, spec.negatives)
    # Another random stream, so the mix's triplets are not a prefix of the training ones.
    mix_per_pair = prof.source_triplets_per_pair if spec.source else prof.aug_triplets_per_pair
    mix, _ = make_triplets(images, split["train"], mix_per_pair, [seed, 1], facts.cameras_known, spec.negatives)
    lmdb_key = _sha([DATA_VERSION, fp["sha256"], prof.input_size,
                     [(im["path"], im["label"]) for im in images]])
    remove_stale_partials(out)
    tag = os.path.basename(out)
    _check_room(out, images, prof.input_size, share and _shared_lmdb(data, lmdb_key))
    try:
        with atomic_dir(out, guard(out)) as tmp:
            lmdb_dir = os.path.join(tmp, DATA_FILES.lmdb)
            shared, rate, lmdb_written = share and _shared_lmdb(data, lmdb_key), None, 0
            if shared:
                try:
                    os.makedirs(lmdb_dir)
                    os.link(shared, os.path.join(lmdb_dir, "data.mdb"))
                    n, lmdb_bytes = len(images), imagedb.dir_bytes(lmdb_dir)
                except OSError:   # no hard links here (another file system): write it
                    shutil.rmtree(lmdb_dir, ignore_errors=True)
                    shared = None
            if not shared:
                n, lmdb_bytes, secs = _write_lmdb(lmdb_dir, recs, images, prof.input_size,
                                                  tag, progress, map_size, os.path.join(out, DATA_FILES.lmdb))
                rate, lmdb_written = n / max(secs, 1e-9), lmdb_bytes
            np.save(os.path.join(tmp, DATA_FILES.triplets), triplets)
            np.save(os.path.join(tmp, DATA_FILES.mix), mix)
            atomic_write_json(os.path.join(tmp, DATA_FILES.images), images)
            atomic_write_json(os.path.join(tmp, DATA_FILES.split), split)
            count = lambda role: sum(im["role"] == role for im in images)
            other = sum(os.path.getsize(os.path.join(tmp, f))
                        for f in (DATA_FILES.triplets, DATA_FILES.mix, DATA_FILES.images, DATA_FILES.split))
            manifest = {
                "dataset": data.dataset.name, "dataset_key": facts.key, "dataset_title": facts.name,
                "options": facts.options,
                "split": name, "seed": seed, "profile": prof.to_dict(), "input_size": prof.input_size,
                "data_version": DATA_VERSION, "key": key, "lmdb_key": lmdb_key,
                "inputs": fp, "protocol": facts.protocol, "rule": split["rule"],
                "counts": {
                    "identities": dict(split["sizes"], total=len({im["person_id"] for im in images})),
                    "images": {"train": count("train"), "val": count("val"), "test": count("test"),
                               "total": len(images)},
                    "pairs": n_pairs, "triplets": int(len(triplets)),
                    "triplets_per_pair": prof.triplets_per_pair, "negatives": spec.negatives,
                    "mix_triplets": int(len(mix)), "mix_triplets_per_pair": mix_per_pair,
                },
                "bytes": {"images_lmdb": lmdb_bytes, "per_image": round(lmdb_bytes / max(n, 1), 1),
                          "other_files": other, "written": lmdb_written + other},
                "lmdb_shared_with": _owner(shared) if shared else None,
                "images_per_second": None if rate is None else round(rate, 1),
                "seconds": round(time.perf_counter() - t0, 2),
                "mirroring": MIRRORING,
                "image_format": "3 x S x S uint8 BGR (cv2), square resize with INTER_LINEAR, "
                                "Datum label = images.json label",
                "warnings": split["warnings"], "command": argv,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            atomic_write_json(os.path.join(tmp, DATA_FILES.manifest), manifest)
    except OSError as e:
        raise MtdnetError(f"{e.filename or out}: {e.strerror or e} while building {out} "
                          f"(nothing was left under that name; fix it and re-run)")
    for w in split["warnings"]:
        log(f"warning: {tag}: {w}")
    log(summary_line(out, manifest))
    return manifest


def summary_line(out, m):
    c, b = m["counts"], m["bytes"]
    ids = c["identities"]
    dis = f" + {ids['distractors']} distractors" if ids["distractors"] else ""
    speed = f"{m['images_per_second']:.0f} images/s" if m["images_per_second"] else \
        f"LMDB shared with {m['lmdb_shared_with']}"
    return (f"{os.path.basename(out)}: {ids['total']} identities ({ids['train']} train / {ids['val']} val / "
            f"{ids['test']} test{dis}), {c['images']['total']} images, {c['pairs']} pairs, "
            f"{c['triplets']} triplets, {b['written'] / 1e6:.1f} MB written "
            f"(LMDB {b['per_image'] / 1e3:.1f} kB/image), {speed} -> {out}")


def prepare(dataset, profile, split, opts=SplitOptions(), *, project=None, root=None, force=False,
            progress=True, log=print, map_size=None, synthetic_params=None, argv=None):
    """Build the prepared-data directories `split` stands for ('random': every random<k>).

    dataset / profile / split: values or names (core); root: the raw data (default:
    the registry's folder). Returns their manifests.
    """
    dataset, prof, split = get_dataset(dataset), get_profile(profile), Split.parse(split)
    project = project or Project()
    seed = prof.seed if opts.seed is None else check_seed(opts.seed)
    root = root or default_root(dataset, project)
    reader = get_reader(dataset)
    if hasattr(reader, "ensure"):     # a generated dataset: draw it first
        reader.ensure(root, progress=progress, log=log, **(synthetic_params or {}))
    ds = read_dataset(dataset, root)
    names = splitting.split_names(ds.facts, split, opts.num_splits)
    fp = fingerprint(ds.facts.inputs, ds.facts.root)
    recorded = os.path.join(SPLITS_DIR, ds.facts.paper_source)
    if os.path.isfile(recorded):   # an edited recorded split is a changed input too
        with open(recorded, "rb") as f:
            fp["recorded_split"] = [os.path.relpath(recorded, REPO_ROOT),
                                    hashlib.sha256(f.read()).hexdigest()]
    results = []
    for s in names:
        data = DataSpec(dataset, prof, s, project)
        out = data.dir
        key = _sha({"version": DATA_VERSION, "dataset": dataset.key, "options": dataset.option_dict,
                    "split": s.name, "seed": seed, **opts.key(),
                    "input_size": prof.input_size, "triplets_per_pair": prof.triplets_per_pair,
                    "mix_per_pair": [prof.aug_triplets_per_pair, prof.source_triplets_per_pair],
                    "negatives": dataset.spec.negatives,
                    "inputs": fp["sha256"], "root": fp["root"], "recorded": fp.get("recorded_split")})
        have = None if force else _up_to_date(out, key)
        if have:
            log(f"{os.path.basename(out)}: up to date (same inputs, profile, split and seed): "
                f"nothing to do -> {out}")
            results.append(dict(have, status="up to date"))
            continue
        # One command per output folder: a second would delete the first one's work folder.
        with exclusive(out, "make data"):
            have = None if force else _up_to_date(out, key)   # built by the previous holder
            if have:
                log(f"{os.path.basename(out)}: up to date: nothing to do -> {out}")
                results.append(dict(have, status="up to date"))
                continue
            # --force rebuilds the LMDB too (no hard link to a sibling's, which may be the suspect)
            m = build_split(ds, data, seed, fp, key, opts, progress=progress, log=log, map_size=map_size, argv=argv,
                            share=not force)
        results.append(dict(m, status="built"))
    return results
