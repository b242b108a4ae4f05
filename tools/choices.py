#!/usr/bin/env python
"""The valid values of the make variables (for `make help`), from the registries."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mtdnet.cli import choices_text, cli_main  # noqa: E402

if __name__ == "__main__":
    cli_main(lambda: print(choices_text()))
