#!/usr/bin/env python3
"""Generate the nets and solvers (`make prototxt`); see prototxt/generate.py and --help."""
from mtdnet.cli import cli_main
from prototxt.generate import main

if __name__ == "__main__":
    cli_main(main)
