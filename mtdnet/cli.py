"""The entry points' wrapper: a user-facing error is one line and exit status 1."""
import sys

from spec import PROFILES, MtdnetError, Project, Run, datasets, splits, variants


def cli_main(fn):
    """Run fn(); turn MtdnetError into a one-line message and exit status 1."""
    try:
        return fn()
    except MtdnetError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


def add_experiment_args(ap, *, variant=True, split_help=None):
    """The options every command names an experiment with (one definition for all tools)."""
    ap.add_argument("--dataset", default="synthetic",
                    help=f"one of {', '.join(datasets.names())} (default synthetic)")
    if variant:
        ap.add_argument("--variant", default="mtdnet", help=f"one of {', '.join(variants.names())}")
    ap.add_argument("--profile", default="cpu", help=f"one of {', '.join(PROFILES)} (default cpu)")
    ap.add_argument("--split", default="paper", help=split_help or splits.HELP)
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                    help="override a profile field (repeatable, or space-separated: "
                         "--set 'base_lr=0.005 shift=8'); recorded in run.json / cmc.json and in the "
                         "run's name")
    ap.add_argument("--data-dir", help="the prepared-data folder (default data/)")
    ap.add_argument("--runs-dir", help="the runs folder (default runs/)")


def overrides(a):
    return [x for item in a.overrides for x in item.split()]


def project(a):
    return Project(data_dir=a.data_dir, runs_dir=a.runs_dir)


def run_from_args(a, **extra):
    """The spec.Run the parsed options name."""
    return Run.create(a.dataset, a.variant, a.profile, a.split, project=project(a),
                      overrides=overrides(a), **extra)
