"""The dataset registry: every dataset the experiment knows, once.

An entry names the reader module (data_prep/datasets/<key>.py: read(root,
**options) -> records + facts), where the raw data lives by default, its
options and what the solver and the report need to know about it. A reader
option (CUHK03's labeled / detected images) is part of a dataset's identity:
`Dataset.name` carries its non-default values ('cuhk03detected'), and that
name is what DATASET=, data directories and run names use.

Adding a dataset = its reader file + one `register(DatasetSpec(...))` here.
"""
import dataclasses
import itertools
import os

from core.errors import REPO_ROOT, MtdnetError
from core.profiles import unknown


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    key: str                 # registry name, e.g. "viper"
    title: str               # the dataset's own name, e.g. "VIPeR" (Table 1's column)
    reader: str              # importable module with read(root, **options)
    dirname: str = ""        # default raw-data folder under the datasets directory ('' = generated)
    # ((option, (default, other values...)), ...): reader options, part of the identity
    options: tuple = ()
    table1: int = 0          # its column in the paper's Table 1 (1 = first; 0 = not there)
    lr_scale: float = 1.0    # base_lr multiplier (the authors used 1e-4 on PRID2011)
    long_schedule: bool = False   # trains profile.max_iter_cuhk03 iterations (CUHK03)
    source: bool = False     # the cross-domain source (aug / cross read it; it has no aug / cross)
    # Triplet negatives: "random" = per_pair random other identities per positive pair and
    # direction; "every_other" = each other training identity once (the release's PRID2011).
    negatives: str = "random"
    # Paper-protocol gallery of the feature-ranked variants (trp, rnk): "first" = each test
    # identity's first camera-B image, as the pair score; "all" = all its camera-B images
    # (the release's CUHK03 and CUHK01 feature scripts: ExtractFeature2Mat_cuhk03.py:109-113,
    # ExtractFeature2Mat_CUHK01.py:108-140 with GetAccuracyfromFeatures.py:22-24).
    feature_gallery: str = "first"


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A dataset with its option values: what data directories and runs are named after."""
    spec: DatasetSpec
    options: tuple = ()      # ((option, value), ...) sorted, non-default values only

    @property
    def key(self):
        return self.spec.key

    @property
    def name(self):
        return self.spec.key + "".join(v for _, v in self.options)

    @property
    def title(self):
        extra = ", ".join(v for _, v in self.options)
        return f"{self.spec.title} ({extra})" if extra else self.spec.title

    @property
    def option_dict(self):
        return dict(self.options)

    def __str__(self):
        return self.name


REGISTRY = {}
# Where raw datasets are looked for by default (DATA_ROOT overrides per dataset).
DATASETS_DIR = os.environ.get("MTDNET_DATASETS") or os.path.normpath(
    os.path.join(REPO_ROOT, "..", "shared", "datasets"))


def register(spec):
    if spec.key in REGISTRY:
        raise MtdnetError(f"dataset '{spec.key}' is registered twice")
    REGISTRY[spec.key] = spec
    return spec


def unregister(key):
    REGISTRY.pop(key, None)


def _names():
    """{name: Dataset} for every dataset and combination of its option values."""
    out = {}
    for spec in REGISTRY.values():
        opts = [[(k, v) for v in values] for k, values in spec.options]
        for combo in itertools.product(*opts) if opts else [()]:
            d = Dataset(spec, tuple(sorted((k, v) for k, v in combo
                                           if v != dict(spec.options)[k][0])))
            out[d.name] = d
    return out


def names():
    return list(_names())


def get_dataset(name, **options):
    """The Dataset called `name` ('viper', 'cuhk03detected'), with options (images='detected')."""
    if isinstance(name, Dataset):
        base = name
    else:
        try:
            base = _names()[name]
        except KeyError:
            raise unknown("dataset", name, _names()) from None
    if not options:
        return base
    allowed = dict(base.spec.options)
    chosen = dict(base.options)
    for k, v in options.items():
        if v is None:
            continue
        if k not in allowed:
            raise MtdnetError(f"dataset '{base.key}' has no option '{k}'"
                              + (f"; options: {', '.join(allowed)}" if allowed else ""))
        if v not in allowed[k]:
            raise MtdnetError(f"dataset '{base.key}': option {k}='{v}'; valid: {', '.join(allowed[k])}")
        chosen[k] = v
    return Dataset(base.spec, tuple(sorted((k, v) for k, v in chosen.items() if v != allowed[k][0])))


def table1_datasets():
    """Table 1's dataset columns, in its order."""
    return [s.key for s in sorted(REGISTRY.values(), key=lambda s: s.table1) if s.table1]


def source_dataset():
    """The cross-domain source dataset (CUHK03)."""
    return get_dataset(next(s.key for s in REGISTRY.values() if s.source))


for _spec in (
    DatasetSpec("synthetic", "synthetic", "data_prep.datasets.synthetic"),
    DatasetSpec("viper", "VIPeR", "data_prep.datasets.viper", "VIPeR", table1=3),
    # protocol: "100" test identities (Table 1's) or "half" (486, the release's CUHK01half).
    DatasetSpec("cuhk01", "CUHK01", "data_prep.datasets.cuhk01", "CUHK01", options=(("protocol", ("100", "half")),),
                table1=2, feature_gallery="all"),
    DatasetSpec("cuhk03", "CUHK03", "data_prep.datasets.cuhk03", "CUHK03",
                options=(("images", ("labeled", "detected")),), table1=1, long_schedule=True,
                source=True, feature_gallery="all"),
    DatasetSpec("ilids", "i-LIDS", "data_prep.datasets.ilids", "i-LIDS", table1=4),
    DatasetSpec("prid2011", "PRID2011", "data_prep.datasets.prid2011", "PRID2011", table1=5,
                lr_scale=0.1, negatives="every_other"),
):
    register(_spec)
