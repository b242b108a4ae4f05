"""Data preparation: dataset readers, splits, triplets, the image LMDB, the synthetic dataset.

Public API for the other parts:
  prepared_dir(dataset, profile, split)  -> data/<dataset>-<profile>-<split>
  load_prepared(dir)                     -> Prepared(dir, images, split, manifest, lmdb, triplets)
  prepare(...)                           -> what `make data` runs (data_prep.build)
"""


def prepared_dir(*args, **kw):
    from data_prep.build import prepared_dir as f
    return f(*args, **kw)


def prepare(*args, **kw):
    from data_prep.build import prepare as f
    return f(*args, **kw)


def load_prepared(d):
    from data_prep.prepared import load_prepared as f
    return f(d)
