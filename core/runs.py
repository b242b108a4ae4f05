"""Every path of an experiment, computed in one place from values.

  Project   where the repository, data/, runs/ and the venv's caffe are
  DataSpec  one prepared-data directory: data/<dataset>-<profile>[+data overrides]-<split>/
  Run       one training run and its evaluations:
              runs/<dataset>-<train variant>-<profile>[-<split>][+overrides][@tag]/
                train.prototxt, solver.prototxt, train.log, run.json, loss.png,
                snapshots/<dataset>_<train variant>_iter_<k>.{caffemodel,solverstate}
            results of a variant scored with another's model (trp) go to
              runs/<dataset>-<variant>-<profile>[-<split>][+overrides]/
Generated files a user runs by hand (committed for the paper and CPU profiles):
  prototxt/<profile>/<dataset>_<variant>_train.prototxt, prototxt/<profile>/<deploy>.prototxt,
  solvers/<profile>/<dataset>_<variant>_solver.prototxt
Paths written into nets and solvers are relative to the project root (Caffe
runs there) when they are inside it.
"""
import dataclasses
import os
import re
import shlex
import sys

from core.datasets import Dataset, get_dataset, names as dataset_names, source_dataset
from core.errors import REPO_ROOT, MtdnetError
from core.profiles import Profile, get_profile
from core.splits import PAPER, Split
from core.variants import Variant, get_variant

MEAN = "random-mean"     # results averaged over random<k> splits


def _default_venv():
    # The venv this Python runs in (the Makefile's VENV=), else the checkout's .venv.
    if sys.prefix != sys.base_prefix and os.path.isfile(os.path.join(sys.prefix, "bin", "caffe")):
        return sys.prefix
    return os.environ.get("MTDNET_VENV") or os.path.join(REPO_ROOT, ".venv")


@dataclasses.dataclass(frozen=True)
class Project:
    root: str = REPO_ROOT
    data_dir: str = None     # default $MTDNET_DATA_DIR, else <root>/data
    runs_dir: str = None     # default $MTDNET_RUNS_DIR, else <root>/runs
    venv: str = None         # default: the venv in use
    models_dir: str = None   # published models: default $MTDNET_MODELS_DIR, else <root>/models

    def __post_init__(self):
        root = os.path.abspath(self.root)
        data = self.data_dir or os.environ.get("MTDNET_DATA_DIR") or os.path.join(root, "data")
        runs = self.runs_dir or os.environ.get("MTDNET_RUNS_DIR") or os.path.join(root, "runs")
        object.__setattr__(self, "root", root)
        object.__setattr__(self, "data_dir", os.path.abspath(data))
        object.__setattr__(self, "runs_dir", os.path.abspath(runs))
        models = self.models_dir or os.environ.get("MTDNET_MODELS_DIR") or os.path.join(root, "models")
        object.__setattr__(self, "models_dir", os.path.abspath(models))
        object.__setattr__(self, "venv", os.path.abspath(self.venv or _default_venv()))

    @property
    def caffe(self):
        """The `caffe` wrapper of the venv (finds our Python layers); an error if setup has not run."""
        path = os.path.join(self.venv, "bin", "caffe")
        if not os.path.exists(path):
            raise MtdnetError(f"{path}: the caffe tool is missing; run `make setup`")
        return path

    def rel(self, path):
        """Relative to the project root when inside it (what nets, run.json and cmc.json record)."""
        p = os.path.abspath(path)
        return os.path.relpath(p, self.root) if p.startswith(self.root + os.sep) else p

    def abs(self, path):
        return path if os.path.isabs(path) else os.path.join(self.root, path)

    def synthetic_root(self):
        return os.path.join(self.data_dir, "raw", "synthetic")


@dataclasses.dataclass(frozen=True)
class DataFiles:
    """The file names inside a prepared-data directory (one place: builders write into a
    temporary directory by these names, readers read them)."""
    lmdb: str = "images.lmdb"            # Caffe Datum LMDB (its data.mdb)
    triplets: str = "train_triplets.npy"
    mix: str = "mix_triplets.npy"        # MTDnet-aug's mix
    images: str = "images.json"
    split: str = "split.json"
    manifest: str = "manifest.json"

    def all(self):
        return [os.path.join(self.lmdb, "data.mdb"), self.triplets, self.mix, self.images, self.split,
                self.manifest]


DATA_FILES = DataFiles()


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """One prepared-data directory (what `make data` writes for one concrete split)."""
    dataset: Dataset
    profile: Profile
    split: Split
    project: Project = dataclasses.field(default_factory=Project)

    def __post_init__(self):
        self.split.require_concrete("a prepared-data directory")

    @property
    def name(self):
        return f"{self.dataset.name}-{self.profile.name}{self.profile.data_tag}-{self.split.name}"

    @property
    def dir(self):
        return os.path.join(self.project.data_dir, self.name)

    @property
    def lmdb(self):
        return os.path.join(self.dir, DATA_FILES.lmdb)

    @property
    def triplets(self):
        return os.path.join(self.dir, DATA_FILES.triplets)

    @property
    def mix_triplets(self):
        """MTDnet-aug's triplets of this dataset (profile.aug_ / source_triplets_per_pair)."""
        return os.path.join(self.dir, DATA_FILES.mix)

    def exists(self):
        return os.path.exists(os.path.join(self.lmdb, "data.mdb"))

    def make_command(self):
        """The command that prepares it (named in errors)."""
        words = ["make", "data", f"DATASET={self.dataset.name}", f"PROFILE={self.profile.name}",
                 f"SPLIT={self.split.name}"]
        if self.profile.set_value(data_only=True):
            words.append(f"SET={self.profile.set_value(data_only=True)}")
        return " ".join(shlex.quote(w) for w in words)


@dataclasses.dataclass(frozen=True)
class Run:
    """One training run of (dataset, variant, profile, split) and the files around it.

    `variant` may be scored with another variant's model (trp: MTDnet's); the
    training files are then that variant's, the results this one's.
    """
    dataset: Dataset
    variant: Variant
    profile: Profile
    split: Split = PAPER
    source_split: Split = PAPER     # the source dataset's split (aug / cross)
    project: Project = dataclasses.field(default_factory=Project)
    # A label that keeps runs of one setting apart, e.g. "cuhk03" for the run fine-tuned from the
    # CUHK03 model beside the one trained from scratch: runs/<name>@<tag>/.
    tag: str = ""
    source_dataset: Dataset = None  # aug / cross: the source's images (default: the registry's source)

    def __post_init__(self):
        if self.tag and not re.fullmatch(r"[A-Za-z0-9_.-]+", self.tag):
            raise MtdnetError(f"TAG '{self.tag}': use letters, digits, '_', '.' and '-' only")
        self.split.require_concrete("a run")
        self.source_split.require_concrete("the source data of a run")
        if self.variant.source and self.dataset.spec.source:
            others = [d for d in dataset_names() if not get_dataset(d).spec.source]
            raise MtdnetError(f"variant '{self.variant.key}' needs a target dataset other than "
                              f"{self.dataset.key} (its source); valid datasets: {', '.join(others)}")

    @classmethod
    def create(cls, dataset, variant, profile, split="paper", source_split="paper", project=None,
               overrides=(), tag="", source_dataset=None, **dataset_options):
        """A Run from names (what the command line gives) or values."""
        return cls(get_dataset(dataset, **dataset_options), get_variant(variant),
                   get_profile(profile, overrides), Split.parse(split), Split.parse(source_split),
                   project or Project(), tag or "", get_dataset(source_dataset) if source_dataset else None)

    def with_split(self, split):
        return dataclasses.replace(self, split=Split.parse(split))

    def with_variant(self, variant):
        return dataclasses.replace(self, variant=get_variant(variant))

    # --- names
    @property
    def train_variant(self):
        """The variant whose net is trained (trp: mtdnet)."""
        return get_variant(self.variant.train_key)

    @property
    def seconds_per_iter(self):
        """Expected CPU training seconds per iteration: the profile's, scaled by the variant's cost."""
        return self.profile.seconds_per_iter * self.train_variant.relative_cost

    def _name(self, variant_key, split_name):
        split = "" if split_name == "paper" else f"-{split_name}"
        tag = f"@{self.tag}" if self.tag else ""
        return f"{self.dataset.name}-{variant_key}-{self.profile.name}{split}{self.profile.tag}{tag}"

    @property
    def name(self):
        """runs/<name>/: the training run (trp: MTDnet's run)."""
        return self._name(self.train_variant.key, self.split.name)

    @property
    def result_name(self):
        """runs/<result_name>/: where this variant's evaluations go."""
        return self._name(self.variant.key, self.split.name)

    @property
    def mean_result_name(self):
        """Where the mean over random<k> splits goes."""
        return self._name(self.variant.key, MEAN)

    @property
    def title(self):
        return f"{self.dataset.name} {self.variant.key} ({self.profile.name}{self.profile.tag}, {self.split} split)"

    # --- data
    @property
    def data(self):
        return DataSpec(self.dataset, self.profile, self.split, self.project)

    @property
    def source_data(self):
        """The source dataset's prepared data (aug / cross), else None."""
        if not self.train_variant.source:
            return None
        src = self.source_dataset or source_dataset()
        if not src.spec.source:
            raise MtdnetError(f"'{src.name}' is not a source dataset; the source is {source_dataset().key}")
        return DataSpec(src, self.profile, self.source_split, self.project)

    @property
    def all_data(self):
        return [d for d in (self.data, self.source_data) if d is not None]

    # --- run directory
    @property
    def dir(self):
        return os.path.join(self.project.runs_dir, self.name)

    @property
    def result_dir(self):
        return os.path.join(self.project.runs_dir, self.result_name)

    @property
    def mean_result_dir(self):
        return os.path.join(self.project.runs_dir, self.mean_result_name)

    @property
    def snapshot_dir(self):
        return os.path.join(self.dir, "snapshots")

    @property
    def snapshot_prefix(self):
        return os.path.join(self.snapshot_dir, f"{self.dataset.name}_{self.train_variant.key}")

    @property
    def train_net(self):
        return os.path.join(self.dir, "train.prototxt")

    @property
    def solver(self):
        return os.path.join(self.dir, "solver.prototxt")

    @property
    def log(self):
        return os.path.join(self.dir, "train.log")

    @property
    def info(self):
        return os.path.join(self.dir, "run.json")

    @property
    def loss_png(self):
        return os.path.join(self.dir, "loss.png")

    @property
    def init_model(self):
        return os.path.join(self.dir, "init.caffemodel")

    def result(self, protocol, what="cmc", ext="json", on="test", mean=False):
        """runs/<result>/<what>-<protocol>.<ext> (cmc, scores, ranked); evaluations on the
        validation identities: <what>-val-<protocol>.<ext>; mean=True: in the mean over
        random<k> splits' folder."""
        middle = "" if on == "test" else f"{on}-"
        return os.path.join(self.mean_result_dir if mean else self.result_dir, f"{what}-{middle}{protocol}.{ext}")

    def latest_result(self, mean=False):
        """runs/<result>/cmc.json: the newest test evaluation, whatever its protocol."""
        return os.path.join(self.mean_result_dir if mean else self.result_dir, "cmc.json")

    @property
    def selection(self):
        """runs/<result>/select-val.json: every snapshot's validation rank-1 and the one chosen."""
        return os.path.join(self.result_dir, "select-val.json")

    @property
    def selection_png(self):
        """runs/<result>/select-val.png: the validation rank-1 of every snapshot scored."""
        return os.path.join(self.result_dir, "select-val.png")

    # --- solver numbers that depend on the dataset
    def solver_settings(self):
        """(base_lr, max_iter) of this run's dataset and profile."""
        spec = dataclasses.asdict(self.dataset.spec)
        if self.profile.release_solver_exceptions:
            spec.update(self.train_variant.solver_exception(self.dataset.key))
        lr = self.profile.base_lr * spec["lr_scale"]
        it = self.profile.max_iter_cuhk03 if spec["long_schedule"] else self.profile.max_iter
        return lr, it

    # --- generated files a user runs by hand (committed for some profiles)
    @property
    def generated_net(self):
        return f"prototxt/{self.profile.name}/{self.dataset.name}_{self.train_variant.key}_train.prototxt"

    @property
    def generated_solver(self):
        return f"solvers/{self.profile.name}/{self.dataset.name}_{self.train_variant.key}_solver.prototxt"

    def generated_snapshot_prefix(self):
        """The snapshot prefix a generated (committed) solver writes to, project-relative."""
        return self.project.rel(self.snapshot_prefix)

    def commands(self, iters=None, weights=None, select=False, model=None):
        """make commands that train and evaluate this run (named in messages and records).

        iters: ITERS= where it is not the profile's; weights: the WEIGHTS= it started from
        (project-relative where inside the project); select: the eval chose the snapshot;
        model: the MODEL= it scored, where not one of the run's own snapshots."""
        def command(target, variant, extra):
            words = ["make", target, f"DATASET={self.dataset.name}", f"VARIANT={variant}",
                     f"PROFILE={self.profile.name}", *self.make_options(), *extra]
            return " ".join(shlex.quote(w) for w in words)
        train = []
        if iters is not None and iters != self.solver_settings()[1]:
            train.append(f"ITERS={iters}")
        if weights:
            train.append(f"WEIGHTS={self.project.rel(weights)}")
        if self.source_dataset is not None and self.train_variant.source:
            train.append(f"SOURCE={self.source_dataset.name}")
        return (command("train", self.train_variant.key, train),
                command("eval", self.variant.key, (["SELECT=1"] if select else [])
                        + ([f"MODEL={self.project.rel(model)}"] if model else [])))

    def identity(self):
        """What names this run in run.json and cmc.json: dataset (the registry name, e.g.
        cuhk03detected), variant, profile and its overrides, split, tag."""
        return dict(dataset=self.dataset.name, variant=self.variant.key, profile=self.profile.name,
                    overrides=dict(self.profile.overrides), split=self.split.name, tag=self.tag)

    def make_options(self):
        """The make variables beyond DATASET / VARIANT / PROFILE that name this run."""
        words = [] if self.split.is_paper else [f"SPLIT={self.split.name}"]
        if self.profile.overrides:
            words.append(f"SET={self.profile.set_value()}")
        if self.tag:
            words.append(f"TAG={self.tag}")
        return words
