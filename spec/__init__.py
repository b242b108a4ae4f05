"""The experiment's vocabulary, defined once: profiles, datasets, variants, splits, runs.

The bottom layer of the project. The packages import downward only:

  spec  <-  data_prep  <-  layers  <-  prototxt  <-  mtdnet  <-  tools
  (vocabulary,  (readers,     (Caffe     (nets,       (training,
   paths,        splits,       Python     solvers,     scoring,
   errors,       LMDBs)        layers)    weights)     evaluation,
   files)                                              report, bench)

spec imports nothing else of ours; tests/ sit on top and nothing imports them.
"""
from spec.datasets import Dataset, DatasetSpec, get_dataset
from spec.errors import REPO_ROOT, MtdnetError
from spec.profiles import PROFILES, Profile, get_profile
from spec.runs import DataSpec, Project, Run
from spec.splits import PAPER, Split
from spec.variants import Variant, get_variant

__all__ = ["Dataset", "DatasetSpec", "DataSpec", "MtdnetError", "PAPER", "PROFILES", "Profile", "Project",
           "REPO_ROOT", "Run", "Split", "Variant", "get_dataset", "get_profile", "get_variant"]
