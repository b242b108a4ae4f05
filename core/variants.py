"""The variant registry: MTDnet and its Table 1 variants, each defined once.

An entry says which train net builds it (`net`: a key of prototxt.nets.TRAIN_NETS, whose
builders are called as f(profile, batch, seed, target, source=None)) and which deploy net
scores it (`deploy`: a key of prototxt.nets.DEPLOY_NETS), which model it is scored with
(its own, or another variant's: MTDnet-trp ranks the MTDnet model), how it scores
pairs, whether it reads the cross-domain source data, how it is initialised, and its row
of the paper's Table 1.

Adding a variant = its net builder in prototxt/nets.py's TRAIN_NETS (or
nets.register_train_net) + one `register(Variant(...))` here.
"""
import dataclasses

from core.errors import MtdnetError
from core.profiles import unknown

SCORE_KINDS = {
    "pair": "mean softmax P(same) over 8 passes (probe, gallery each original or mirrored; "
            "both input orders)",
    "feature": "squared Euclidean distance of the L2-normalised features, mean over the 4 "
               "mirror combinations",
}
# How a variant reads the source dataset (CUHK03) beside the target's data.
SOURCE_USES = (None, "mixed", "separate")
# Initialisation rules: "finetune" = the fillers, or WEIGHTS (an ImageNet model:
# conv1/conv2 copied; a model of ours: fine-tuned by layer name); "two_copies" =
# WEIGHTS (an MTDnet model) is required and fills both copies of the net.
INIT_RULES = ("finetune", "two_copies")


@dataclasses.dataclass(frozen=True)
class Variant:
    key: str
    title: str               # Table 1's name, e.g. "MTDnet-cls"
    table_type: str          # Table 1's "Type" column
    table1: int              # its row in Table 1 (1 = first)
    score: str               # "pair" or "feature" (SCORE_KINDS)
    deploy: str              # the deploy net it is scored with (a key of prototxt.nets.DEPLOY_NETS)
    net: str = ""            # its train-net builder (prototxt.nets.TRAIN_NETS); '' = scored with `trains`'s model
    trains: str = ""         # the variant whose run (model) it uses; '' = its own
    source: str = None       # SOURCE_USES: None, "mixed" (one data layer) or "separate" (a second stream)
    init: str = "finetune"   # INIT_RULES
    min_batch: int = 1       # fewest triplets per batch its net works with
    # Training seconds per iteration relative to MTDnet's (the time estimates scale the
    # profile's seconds_per_iter by it): cross runs two copies of the net, aug reads two
    # data layers, rnk is a three-stream AlexNet. Measured at `scratch` on the 2-core CPU over
    # whole 1600-iteration runs, two at a time (docs/table1.md): MTDnet and cls 1.0, rnk 1.2,
    # aug 1.4, cross 1.8 s per iteration (the machine's speed varies by up to 1.6x).
    relative_cost: float = 1.0
    # Layers copied by name from an ImageNet CaffeNet / AlexNet model (WEIGHTS=imagenet model).
    imagenet_layers: tuple = ("conv1", "conv2")
    # The release's solver exceptions, per dataset key: (("prid2011", (("lr_scale", 1.0),)), ...);
    # applied where the profile keeps them (Profile.release_solver_exceptions).
    solver_exceptions: tuple = ()

    @property
    def train_key(self):
        return self.trains or self.key

    @property
    def higher_is_better(self):
        return self.score == "pair"

    def paper_row(self):
        """{dataset key: (rank-1, rank-5, rank-10)} of its Table 1 row (PAPER_TABLE1)."""
        return {d: nums for (v, d), nums in PAPER_TABLE1.items() if v == self.key}

    def solver_exception(self, dataset_key):
        return dict(dict(self.solver_exceptions).get(dataset_key, ()))


REGISTRY = {}


def register(variant):
    if variant.key in REGISTRY:
        raise MtdnetError(f"variant '{variant.key}' is registered twice")
    if variant.score not in SCORE_KINDS:
        raise MtdnetError(f"variant '{variant.key}': score '{variant.score}'; valid: {', '.join(SCORE_KINDS)}")
    if variant.source not in SOURCE_USES or variant.init not in INIT_RULES:
        raise MtdnetError(f"variant '{variant.key}': source {variant.source!r} / init {variant.init!r}")
    if not variant.net and not variant.trains:
        raise MtdnetError(f"variant '{variant.key}' needs a train net or another variant's model")
    if not variant.relative_cost > 0:
        raise MtdnetError(f"variant '{variant.key}': relative_cost {variant.relative_cost!r} must be > 0")
    REGISTRY[variant.key] = variant
    return variant


def unregister(key):
    REGISTRY.pop(key, None)


def get_variant(name):
    if isinstance(name, Variant):
        return name
    try:
        return REGISTRY[name]
    except KeyError:
        raise unknown("variant", name, REGISTRY) from None


def names():
    return list(REGISTRY)


def trained_variants():
    """Variants with a train net of their own."""
    return [v for v in REGISTRY.values() if v.net]


def scored_with(key):
    """The variants scored with the model `key` trains: itself, then those ranking its model
    (MTDnet: MTDnet, MTDnet-trp)."""
    own = get_variant(key)
    return [own] + [v for v in REGISTRY.values() if v.trains == own.key and v is not own]


def table1_rows():
    return sorted(REGISTRY.values(), key=lambda v: v.table1)


for _v in (
    Variant("mtdnet", "MTDnet", "Cls+Rnk", 4, "pair", "pair_score", net="mtdnet"),
    # MTDnet with the triplet loss weight 0.
    Variant("cls", "MTDnet-cls", "Cls", 2, "pair", "pair_score", net="cls"),
    # A three-stream AlexNet with the triplet loss only, initialised from the whole ImageNet model
    # below fc8 (Nets/MTDnet-rnk/train_finetune_cuhk03.sh:4); its PRID2011 solver keeps lr 1e-3
    # (solver_PRID.prototxt:4), its VIPeR solver 200000 iterations (solver_VIPeR.prototxt:8).
    Variant("rnk", "MTDnet-rnk", "Rnk", 1, "feature", "rnk_feature", net="rnk",
            imagenet_layers=("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7"), relative_cost=1.2,
            solver_exceptions=(("prid2011", (("lr_scale", 1.0),)), ("viper", (("long_schedule", True),)))),
    # MTDnet's model ranked by its triplet features.
    Variant("trp", "MTDnet-trp", "Cls+Rnk", 3, "feature", "feature", trains="mtdnet"),
    # MTDnet on the target's and CUHK03's triplets together.
    Variant("aug", "MTDnet-aug", "Cls+Rnk", 5, "pair", "pair_score", net="mtdnet",
            source="mixed", relative_cost=1.4),
    # Target copy + frozen CUHK03 copy with a contrastive loss between their fc7.
    # With one triplet both pair orders coincide and the XNOR label is constant.
    Variant("cross", "MTDnet-cross", "Cls+Rnk", 6, "pair", "pair_score", net="cross",
            source="separate", init="two_copies", min_batch=2, relative_cost=1.8),
):
    register(_v)


# Table 1 of the paper (rank-1 / 5 / 10 %), per (variant, dataset key): the one place its
# numbers live (the report's "paper" rows). aug and cross have no CUHK03 entry (CUHK03 is
# their source).
PAPER_TABLE1 = {
    ("mtdnet", "cuhk03"): (74.68, 95.99, 97.47),
    ("mtdnet", "cuhk01"): (77.50, 95.00, 97.50),
    ("mtdnet", "viper"): (45.89, 71.84, 83.23),
    ("mtdnet", "ilids"): (57.80, 78.61, 87.28),
    ("mtdnet", "prid2011"): (32.00, 51.00, 62.00),
    ("cls", "cuhk03"): (68.35, 93.46, 97.47),
    ("cls", "cuhk01"): (76.50, 94.00, 97.00),
    ("cls", "viper"): (44.30, 69.94, 81.96),
    ("cls", "ilids"): (54.34, 73.41, 86.13),
    ("cls", "prid2011"): (28.00, 50.00, 60.00),
    ("rnk", "cuhk03"): (60.13, 90.51, 95.15),
    ("rnk", "cuhk01"): (63.50, 80.00, 89.50),
    ("rnk", "viper"): (28.16, 52.22, 65.19),
    ("rnk", "ilids"): (41.04, 69.94, 78.61),
    ("rnk", "prid2011"): (22.00, 41.00, 48.00),
    ("trp", "cuhk03"): (66.03, 84.81, 89.87),
    ("trp", "cuhk01"): (66.00, 84.00, 91.50),
    ("trp", "viper"): (34.81, 60.13, 72.78),
    ("trp", "ilids"): (46.82, 72.83, 81.50),
    ("trp", "prid2011"): (26.00, 49.00, 57.00),
    ("aug", "cuhk01"): (75.50, 93.50, 97.00),
    ("aug", "viper"): (43.35, 70.25, 78.48),
    ("aug", "ilids"): (54.91, 74.57, 84.97),
    ("aug", "prid2011"): (27.00, 46.00, 59.00),
    ("cross", "cuhk01"): (78.50, 96.50, 97.50),
    ("cross", "viper"): (47.47, 73.10, 82.59),
    ("cross", "ilids"): (58.38, 80.35, 87.28),
    ("cross", "prid2011"): (31.00, 54.00, 61.00),
}
