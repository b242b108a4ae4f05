"""Data preparation: dataset readers, splits, triplets, the image LMDB, the synthetic dataset.

Public API for the other parts:
  data_prep.build.prepare(dataset, profile, split, ...)  what `make data` runs
  data_prep.prepared.load_prepared(DataSpec or dir)      -> Prepared(dir, images, split, manifest, lmdb, triplets)
  data_prep.imagedb.ImageDB                              the image LMDB reader
Directory names come from core.runs.DataSpec.
"""
