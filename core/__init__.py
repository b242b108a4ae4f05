"""The experiment's vocabulary, defined once: profiles, datasets, variants, splits, runs.

The bottom layer of the project. The packages import downward only:

  core  <-  data_prep  <-  layers  <-  prototxt  <-  mtdnet  <-  tools
  (vocabulary,  (readers,     (Caffe     (nets,       (training,
   paths,        splits,       Python     solvers,     scoring,
   errors,       LMDBs)        layers)    weights)     evaluation,
   files)                                              report, bench)

core imports nothing else of ours; tests/ sit on top and nothing imports them.
"""
from core.datasets import Dataset, DatasetSpec, get_dataset
from core.errors import REPO_ROOT, MtdnetError
from core.profiles import PROFILES, Profile, get_profile
from core.runs import DataSpec, Project, Run
from core.splits import PAPER, Split
from core.variants import Variant, get_variant

__all__ = ["Dataset", "DatasetSpec", "DataSpec", "MtdnetError", "PAPER", "PROFILES", "Profile", "Project",
           "REPO_ROOT", "Run", "Split", "Variant", "get_dataset", "get_profile", "get_variant"]
