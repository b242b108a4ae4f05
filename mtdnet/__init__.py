"""MTDnet reproduction: shared library code (profiles, file helpers, evaluation, training).

Entry points live in tools/ and call into here, data_prep/ and prototxt/.
"""
import os

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class MtdnetError(Exception):
    """A user-facing error: the message names the file and what is wrong."""
