"""Dataset readers, one module per dataset, found through core's dataset registry.

A reader module has NAME and read(root, **options) -> records.Dataset; its
registry entry (core/datasets.py) names the module, the default folder and the
options. Adding a dataset = its reader module + one registry entry.
"""
import importlib
import os

from core import MtdnetError, Project, get_dataset
from core.datasets import DATASETS_DIR


def get_reader(dataset):
    """The reader module of a Dataset (or dataset name)."""
    spec = get_dataset(dataset).spec
    try:
        return importlib.import_module(spec.reader)
    except ImportError as e:
        raise MtdnetError(f"dataset '{spec.key}': its reader {spec.reader} cannot be imported ({e})") from None


def default_root(dataset, project=None):
    """Where the raw data is looked for unless DATA_ROOT says: <datasets dir>/<dirname>,
    or for a generated dataset (no dirname) data/raw/<key> of the project."""
    spec = get_dataset(dataset).spec
    if not spec.dirname:
        return os.path.join((project or Project()).data_dir, "raw", spec.key)
    return os.path.join(DATASETS_DIR, spec.dirname)


def raw_present(dataset, root=None, project=None):
    """Whether the dataset's raw data is at root (default: its default folder): the reader's
    present(root, **options) where it has one, else the folder's existence."""
    ds = get_dataset(dataset)
    root = root or default_root(ds, project)
    reader = get_reader(ds)
    if hasattr(reader, "present"):
        return reader.present(root, **ds.option_dict)
    return os.path.isdir(root)


def read_dataset(dataset, root=None, project=None, **options):
    """Records and facts of a dataset; `dataset` is a Dataset or a name, options as get_dataset's."""
    ds = get_dataset(dataset, **options)
    data = get_reader(ds).read(root or default_root(ds, project), **ds.option_dict)
    data.facts.key = ds.key
    data.facts.options = dict(data.facts.options, **ds.option_dict)
    return data
