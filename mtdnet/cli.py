"""The entry points' wrapper: a user-facing error is one line and exit status 1."""
import argparse
import sys

from core import PROFILES, MtdnetError, Project, Run, datasets, get_profile, splits, variants
from core.fsutil import os_error
from core.profiles import CPU_DEFAULT
from mtdnet.trials import PROTOCOLS


def _tell(text):
    # After a hangup the terminal is gone: the exit status still tells.
    try:
        print(text, file=sys.stderr)
    except OSError:
        pass


def cli_main(fn):
    """Run fn(); turn MtdnetError (and a file-system error: a full disk, a read-only folder)
    into a one-line message naming the file and exit status 1."""
    try:
        return fn()
    except MtdnetError as e:
        _tell(f"error: {e}")
        sys.exit(1)
    except OSError as e:
        if e.filename is None:
            raise
        _tell(f"error: {os_error(e)}")
        sys.exit(1)
    except KeyboardInterrupt:
        _tell("interrupted")
        sys.exit(130)


YES = ("1", "yes", "y", "true", "on")
NO = ("0", "no", "n", "false", "off", "")


def yes_no(text):
    """A make yes/no value (RESTART=1, GPU=off) as a bool; anything else is an error, not 'on'."""
    t = str(text).strip().lower()
    if t in YES:
        return True
    if t in NO:
        return False
    raise argparse.ArgumentTypeError(f"'{text}' is neither yes ({', '.join(YES)}) nor no ({', '.join(NO[:-1])})")


def add_flag(ap, name, help):
    """--name, --name=yes / --name=no (make passes what the user typed: RESTART=off is off)."""
    ap.add_argument(name, type=yes_no, nargs="?", const=True, default=False, metavar="yes|no", help=help)


def bars(a):
    """Progress bars only on a terminal: redirected to a file they are pages of redraws."""
    return not getattr(a, "no_progress", False) and sys.stderr.isatty()


def choices_text():
    """The valid values of the experiment's names, one variable a line (`make help`)."""
    profs = ", ".join(f"{p} ({get_profile(p).max_iter} iterations)" for p in PROFILES)
    return "\n".join([
        "Valid values (defaults: " + " ".join(f"{k}={v}" for k, v in DEFAULTS.items()) + "):",
        f"  DATASET   {', '.join(datasets.names())}",
        f"  VARIANT   {', '.join(variants.names())}",
        f"  PROFILE   {profs}",
        f"  SPLIT     {splits.HELP}",
        f"  PROTOCOL  {', '.join(PROTOCOLS)} (random: TRIALS gallery draws)",
        "  DATA_ROOT the dataset as distributed (default ../shared/datasets/<Name>; synthetic: "
        "data/raw/synthetic, generated there)",
    ])


# The one set of defaults of every command (the Makefile passes only what a user gives):
# the built-in synthetic data, MTDnet, and the CPU profile recommended for real data.
DEFAULTS = {"DATASET": "synthetic", "VARIANT": "mtdnet", "PROFILE": CPU_DEFAULT, "SPLIT": "paper"}


def add_experiment_args(ap, *, variant=True, split_help=None):
    """The options every command names an experiment with (one definition for all tools)."""
    ap.add_argument("--dataset", default=DEFAULTS["DATASET"],
                    help=f"one of {', '.join(datasets.names())} (default {DEFAULTS['DATASET']})")
    if variant:
        ap.add_argument("--variant", default=DEFAULTS["VARIANT"], help=f"one of {', '.join(variants.names())}")
    ap.add_argument("--profile", default=DEFAULTS["PROFILE"],
                    help=f"one of {', '.join(PROFILES)} (default {DEFAULTS['PROFILE']})")
    ap.add_argument("--split", default=DEFAULTS["SPLIT"], help=split_help or splits.HELP)
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                    help="override a profile field (repeatable, or space-separated: "
                         "--set 'base_lr=0.005 shift=8'); recorded in run.json / cmc.json and in the "
                         "run's name")
    ap.add_argument("--data-dir", help="the prepared-data folder (default data/)")
    ap.add_argument("--runs-dir", help="the runs folder (default runs/)")
    if variant:
        ap.add_argument("--tag", default="", help="a label keeping this run apart from others of the same "
                        "setting, e.g. its initialisation: runs/<run>@<tag>/")
        ap.add_argument("--source", help="aug / cross: the source dataset's images, e.g. cuhk03detected "
                        "(default: CUHK03's labeled images)")


def overrides(a):
    return [x for item in a.overrides for x in item.split()]


def project(a):
    return Project(data_dir=a.data_dir, runs_dir=a.runs_dir)


def run_from_args(a, **extra):
    """The spec.Run the parsed options name."""
    return Run.create(a.dataset, a.variant, a.profile, a.split, project=project(a),
                      overrides=overrides(a), tag=getattr(a, "tag", ""),
                      source_dataset=getattr(a, "source", None), **extra)
