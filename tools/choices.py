#!/usr/bin/env python
"""The valid values of the make variables (for `make help`), from the registries."""

from mtdnet.cli import choices_text, cli_main

if __name__ == "__main__":
    cli_main(lambda: print(choices_text()))
