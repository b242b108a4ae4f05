#!/usr/bin/env python
"""Run a command with the words of one of make's *_ARGS values appended.

    python tools/with_args.py TRAIN_ARGS python tools/train.py --dataset viper ...

appends the value of $ARG_TRAIN_ARGS (the Makefile puts make's TRAIN_ARGS
there, as typed), split into words as a shell splits them: quotes group words
('--data-dir "/my data"'), and nothing in it is expanded or run. The command
then replaces this process (same pid, signals and exit status). NAME `-` appends
nothing. Started by make (MTDNET_MAKE_PID), the command dies with make: see core/proc.py.
"""
import os
import shlex
import sys

from core.proc import die_with_make


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    name, cmd = sys.argv[1], sys.argv[2:]
    try:
        extra = [] if name == "-" else shlex.split(os.environ.get("ARG_" + name, ""))
    except ValueError as e:
        print(f"error: {name}: {e} (quote words with ' or \")", file=sys.stderr)
        sys.exit(2)
    die_with_make()
    os.execvp(cmd[0], cmd + extra)


if __name__ == "__main__":
    main()
