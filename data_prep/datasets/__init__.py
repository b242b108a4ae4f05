"""Dataset readers: one module per dataset, registered here.

A reader module has KEY, NAME and read(root=None, **options) -> records.Dataset;
`root` defaults to ../shared/datasets/<DIRNAME> beside the repository (the
synthetic dataset: data/raw/synthetic). Adding a dataset = one module + one line.
"""
from mtdnet import MtdnetError
from mtdnet.profiles import check_dataset
from data_prep.datasets import cuhk01, cuhk03, ilids, prid2011, synthetic, viper

READERS = {m.KEY: m for m in (synthetic, viper, cuhk01, cuhk03, ilids, prid2011)}
OPTIONS = {"cuhk03": {"images": cuhk03.IMAGE_SETS}}   # reader options and their values


def get_reader(name):
    check_dataset(name)
    try:
        return READERS[name]
    except KeyError:
        raise MtdnetError(f"dataset '{name}' has no reader; readers: {', '.join(READERS)}") from None


def default_root(name):
    m = get_reader(name)
    if m is synthetic:
        return synthetic.default_root()
    from data_prep.records import default_root as shared_root
    return shared_root(m.DIRNAME)


def read_dataset(name, root=None, **options):
    m = get_reader(name)
    allowed = OPTIONS.get(name, {})
    for k, v in options.items():
        if k not in allowed:
            raise MtdnetError(f"dataset '{name}' has no option '{k}'")
        if v not in allowed[k]:
            raise MtdnetError(f"dataset '{name}': option {k}='{v}'; valid: {', '.join(allowed[k])}")
    return m.read(root or default_root(name), **options)
