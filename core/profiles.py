"""The one place for settings: profiles (paper / cpu / scratch / tiny).

`paper` is the authors' net and solver. `cpu` keeps the topology and scales
widths and input for a 2-core CPU; `scratch` and `tiny` derive from it. A
profile derives from another with `dataclasses.replace`, naming only what
differs. An experiment may override any field from the command line
(`SET="base_lr=0.005 shift=8"`): the overridden profile keeps its name, lists
the overrides and tags the run (and, for fields that change the prepared data,
the data directory) with them, so tuning needs no profile of its own.
"""
import dataclasses

from core.errors import MtdnetError

# Fields that change what `make data` writes (image size, triplets, split seed):
# overriding one gives the data directory its own name.
DATA_FIELDS = ("input_size", "triplets_per_pair", "aug_triplets_per_pair", "source_triplets_per_pair", "seed")
BIASES = ("release", "caffenet", "zero")
PAIR_REGROUPS = ("python", "caffe")
NOT_OVERRIDABLE = ("name", "overrides")


@dataclasses.dataclass(frozen=True)
class Profile:
    name: str
    input_size: int          # images are resized to input_size x input_size (BGR, raw 0..255)
    conv1: int               # CaffeNet widths, in network order
    conv2: int
    conv3: int
    conv4: int
    conv5: int
    fc6: int
    fc7: int
    feat: int                # triplet feature (ranking branch) dimension
    batch_triplets: int      # triplets per iteration; the classifier sees 2x pairs
    base_lr: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 0.0005
    margin: float = 1.0      # triplet-loss margin on L2-normalised features
    contrastive_margin: float = 1.0
    max_iter: int = 20000    # small datasets; CUHK03 (a long-schedule dataset) uses max_iter_cuhk03
    # lr_policy: "fixed" (the authors') unless lr_steps lists fractions of max_iter
    # where the rate is multiplied by lr_gamma ("multistep"; they follow ITERS).
    lr_steps: tuple = ()
    lr_gamma: float = 0.1
    max_iter_cuhk03: int = 200000
    snapshot: int = 500
    display: int = 20
    triplets_per_pair: int = 10   # per positive pair and direction
    # MTDnet-aug's data, as the release built it: the target's triplets at this many per
    # positive pair and direction (BuildAugData_*.py: 50), mixed 1:1 with CUHK03's, drawn at
    # this many per pair and cut to the target's count (the release drew 1 per pair for
    # VIPeR, i-LIDS and PRID2011, 7 for CUHK01: 7 leaves enough for every target).
    aug_triplets_per_pair: int = 50
    source_triplets_per_pair: int = 7
    # The release's per-variant solver exceptions (core/variants.py: MTDnet-rnk trains
    # PRID2011 at lr 1e-3 and VIPeR for the long schedule); kept where the profile is the paper's.
    release_solver_exceptions: bool = True
    seed: int = 1701              # solver random_seed, data shuffling, negatives
    # From-scratch training aids (the paper profile keeps the authors' net: raw
    # 0..255 input, Gaussian fillers, which they only ever trained from ImageNet
    # conv1/conv2). input_scale multiplies the input inside the net (a Power
    # layer before conv1, in train and deploy nets alike); weight_filler
    # "gaussian" = the authors' std (fan-in scaled outside paper), "msra" = He.
    input_scale: float = 1.0
    weight_filler: str = "gaussian"
    # fc8_std > 0: the 2-way pair classifier (fc8) starts from Gaussian(fc8_std)
    # whatever weight_filler says, so the softmax does not start saturated.
    fc8_std: float = 0.0
    # Bias fillers: "release" = the authors' (MTDnet: 0, the ranking feature 0.1; MTDnet-rnk:
    # AlexNet's 0.1 on conv2, conv4, conv5, fc6-fc8), "caffenet" = CaffeNet's constants (1
    # before most ReLUs), "zero" = 0 everywhere (the zero-mean assumption of He fillers).
    biases: str = "release"
    # Training-time augmentation: each image is mirrored at random (as the
    # authors) and, with shift > 0, translated by up to `shift` pixels.
    shift: int = 0
    # Forward + backward of the MTDnet train net per iteration on the project's 2-core
    # machine with our Caffe build's CPU fast path (README, "How fast it trains"): what
    # `make train` and `make table1 DRY_RUN=1` estimate times with. paper: the fast
    # path's forward + backward in `make bench BENCH_ARGS="--parts caffe"` (8.94 s; the
    # data layer adds little at this size; the VM's own speed drifts by up to 1.6x
    # between runs).
    seconds_per_iter: float = 9.0
    # The data path (README, "GPU"): TripletDataLayer worker processes building batches
    # ahead of the solver (0: in the solver's thread; the batch sequence is the same for
    # any count), and how pairs are regrouped: "python" (PairRegroupLayer, host memory)
    # or "caffe" (Concat/Reshape/DummyData, stays on the GPU; identical rows and gradients).
    prefetch_workers: int = 2
    pair_regroup: str = "python"
    # ((field, value), ...) set from the command line on top of the named profile.
    overrides: tuple = ()

    def to_dict(self):
        d = dataclasses.asdict(self)
        d["overrides"] = dict(self.overrides)
        return d

    @property
    def tag(self):
        """'' or '+field=value,...': what the overrides add to a run's name."""
        return _tag(self.overrides)

    @property
    def data_tag(self):
        """The part of `tag` that changes the prepared data."""
        return _tag(self._data_overrides())

    def set_value(self, data_only=False):
        """The overrides as `make ... SET=` takes them ('base_lr=0.005 shift=8'; '' for none)."""
        return " ".join(_assignments(self._data_overrides() if data_only else self.overrides))

    def _data_overrides(self):
        return tuple(kv for kv in self.overrides if kv[0] in DATA_FIELDS)

    def override(self, assignments):
        """A copy with `field=value` strings (or (field, value) pairs) applied and recorded."""
        changes = dict(self.overrides)
        for item in assignments:
            key, value = item if isinstance(item, tuple) else _split_assignment(item)
            changes[key] = _convert(key, value)
        if not changes:
            return self
        new = dataclasses.replace(self, overrides=tuple(sorted(changes.items())), **changes)
        check_ranges(new)
        return new


INT32_MAX = 2 ** 31 - 1     # Caffe's int fields (max_iter, snapshot, widths)
SEED_MAX = 2 ** 32 - 1      # Caffe's and numpy's seeds are unsigned 32-bit
MIN_INPUT = 63              # the smallest input the nets are built and tested at (tiny: pool5 1x1)


def _between(lo, hi):
    return (lambda v: lo <= v <= hi), f"must be {lo}..{hi}"


# What each numeric field may hold; a value outside is one clear error, not a failure
# deep inside OpenCV, numpy or Caffe.
RANGES = {
    "input_size": _between(MIN_INPUT, 4096),
    **{k: _between(1, INT32_MAX) for k in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "feat",
                                           "batch_triplets", "max_iter", "max_iter_cuhk03", "snapshot",
                                           "display", "triplets_per_pair", "aug_triplets_per_pair",
                                           "source_triplets_per_pair")},
    "seed": _between(0, SEED_MAX),
    "base_lr": ((lambda v: v > 0), "must be > 0"),
    "momentum": ((lambda v: 0 <= v < 1), "must be in [0, 1)"),
    "weight_decay": ((lambda v: v >= 0), "must be >= 0"),
    "margin": ((lambda v: v >= 0), "must be >= 0"),
    "contrastive_margin": ((lambda v: v >= 0), "must be >= 0"),
    "lr_gamma": ((lambda v: v > 0), "must be > 0"),
    "lr_steps": ((lambda v: all(0 < x < 1 for x in v) and list(v) == sorted(set(v))),
                 "must be increasing fractions between 0 and 1 (e.g. 0.5:0.75)"),
    "input_scale": ((lambda v: v > 0), "must be > 0"),
    "fc8_std": ((lambda v: v >= 0), "must be >= 0"),
    "shift": _between(0, 64),
    "seconds_per_iter": ((lambda v: v > 0), "must be > 0"),
    "prefetch_workers": _between(0, 64),
}


def check_seed(seed, name="SEED"):
    """A seed as an int in 0..SEED_MAX, else one clear error."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= SEED_MAX:
        raise MtdnetError(f"{name} must be an integer 0..{SEED_MAX}, got {seed!r}")
    return seed


def check_ranges(profile):
    """MtdnetError for the first field of `profile` outside RANGES."""
    for key, (ok, rule) in RANGES.items():
        value = getattr(profile, key)
        if not ok(value):
            where = "SET: " if key in dict(profile.overrides) else f"profile '{profile.name}': "
            raise MtdnetError(f"{where}{key}={_show(value)} {rule}")


def _show(v):
    return ":".join(f"{x:g}" for x in v) if isinstance(v, tuple) else f"{v:g}" if isinstance(v, float) else str(v)


def _split_assignment(text):
    key, sep, value = str(text).partition("=")
    if not sep or not key.strip():
        raise MtdnetError(f"SET: '{text}' is not field=value (e.g. base_lr=0.005)")
    return key.strip(), value.strip()


FIELDS = {f.name: f for f in dataclasses.fields(Profile)}


def _convert(key, value):
    """A command-line string as the field's type; a clear error for a bad name or value."""
    if key not in FIELDS or key in NOT_OVERRIDABLE:
        valid = ", ".join(k for k in FIELDS if k not in NOT_OVERRIDABLE)
        raise MtdnetError(f"SET: unknown profile field '{key}'; valid: {valid}")
    default = getattr(PROFILES["paper"], key)
    if not isinstance(value, str):
        return value
    if key == "biases" and value not in BIASES:
        raise MtdnetError(f"SET: biases={value}; valid: {', '.join(BIASES)}")
    if key == "pair_regroup" and value not in PAIR_REGROUPS:
        raise MtdnetError(f"SET: pair_regroup={value}; valid: {', '.join(PAIR_REGROUPS)}")
    try:
        if isinstance(default, bool):
            if value.lower() not in ("0", "1", "true", "false"):
                raise ValueError
            return value.lower() in ("1", "true")
        if isinstance(default, int):
            return int(value)
        if isinstance(default, float):
            return float(value)
        if isinstance(default, tuple):
            return tuple(float(x) for x in value.split(":") if x)
    except ValueError:
        raise MtdnetError(f"SET: {key}={value}: expected {type(default).__name__}"
                          + (" (fractions separated by ':', e.g. 0.5:0.75)" if isinstance(default, tuple)
                             else "")) from None
    return value


def _assignments(pairs):
    """field=value strings, written so that override() reads them back."""
    return [f"{k}={_show(v)}" for k, v in pairs]


def _tag(pairs):
    return "+" + ",".join(_assignments(pairs)) if pairs else ""


_PAPER = Profile(
    name="paper", input_size=227,
    conv1=96, conv2=256, conv3=384, conv4=384, conv5=256, fc6=4096, fc7=4096,
    feat=512, batch_triplets=128)
# Paper: norm2 13x13, pool5 6x6; ~24 s per iteration here (caffe time, 4.5 GB).
# cpu: 1/4 of the widths at 127x127 input (norm2 7x7 instead of 13x13, pool5 3x3),
# and the paper's batch of 128 triplets, so its solver numbers (lr 0.001 for
# 128 triplets) still apply. `caffe time` of the mtdnet train net on the 2-core
# machine: 0.89-0.99 s forward+backward per 128-triplet iteration (32: 0.23-0.38 s,
# 64: 0.56 s; half widths at 32 / 64 triplets: 0.56 / 1.17 s). From scratch the
# authors' raw 0..255 input with Gaussian fillers never learns here (triplet loss
# pinned at margin/2, the classifier at chance, at any lr tried): the input is
# scaled by 1/256 and the fillers are He's.
_CPU = dataclasses.replace(
    _PAPER, name="cpu", input_size=127,
    conv1=24, conv2=64, conv3=96, conv4=96, conv5=64, fc6=1024, fc7=1024, feat=128,
    max_iter=5000, max_iter_cuhk03=50000, input_scale=1 / 256, weight_filler="msra", biases="caffenet",
    # make train, CUHK03 detected, scratch MTDnet, oneDNN fast path, 2 threads: 0.36 s per
    # iteration over thousands of iterations (data layer, solver and snapshots included)
    release_solver_exceptions=False, seconds_per_iter=0.36)
# scratch: cpu's net, tuned for training from scratch on a small set within 45
# minutes on 2 cores (docs/viper_scratch.md). Chosen on VIPeR's `val` split only
# (100 of the paper split's training identities held out, 216 trained on): with
# CaffeNet's bias constants (1 before most ReLUs) and He weights every ReLU
# starts open and the pair classifier stays at chance for ~1400 iterations; zero
# biases let it learn within ~300, and lr 0.003 (x3) speeds both losses (val
# rank-1 at 500 iterations, pair score / triplet feature: cpu 1 / 17, zero
# biases 7 / 21, zero biases + lr 0.003 10 / 24).
# CUHK03 (its long schedule): 30000 iterations at the fixed rate (the authors' policy), where
# MTDnet's validation rank-1 stopped rising (~48-50 from 21000 on; docs/cuhk03_scratch.md);
# ~3 h on the 2 cores.
_SCRATCH = dataclasses.replace(_CPU, name="scratch", base_lr=0.003, max_iter=1600, max_iter_cuhk03=30000,
                               biases="zero")
# Tests and `make demo`: norm2 3x3, pool5 1x1; 16 triplets, fc6/fc7 128. Its default
# iterations are ones that learn: on the synthetic set's 100 test people (chance 1%)
# MTDnet's pair score ranks rank-1 1% at 300 iterations, 18% at 1500, 24% at 3000
# (triplet features: 20%, 36%, 47%); 3000 iterations take 35 s on 2 idle cores,
# 96 s with one of them busy.
_TINY = dataclasses.replace(
    _CPU, name="tiny", input_size=63,
    conv1=8, conv2=16, conv3=24, conv4=24, conv5=16, fc6=128, fc7=128, feat=32,
    batch_triplets=16, max_iter=3000, max_iter_cuhk03=3000, snapshot=100, display=10,
    aug_triplets_per_pair=10,   # the small test sets' aug mix stays within the source's triplets
    seconds_per_iter=0.015,
    prefetch_workers=0)         # tests build many small nets: no worker processes per net

PROFILES = {p.name: p for p in (_PAPER, _CPU, _SCRATCH, _TINY)}
# What a user trains real data with on a CPU (its generated files are committed, as paper's).
CPU_DEFAULT = "scratch"


def unknown(kind, name, valid):
    return MtdnetError(f"unknown {kind} '{name}'; valid: {', '.join(valid)}")


def get_profile(name, overrides=()):
    """The named profile, with `field=value` overrides applied (see Profile.override)."""
    if isinstance(name, Profile):
        return name.override(overrides)
    try:
        prof = PROFILES[name]
    except KeyError:
        raise unknown("profile", name, PROFILES) from None
    return prof.override(overrides)
