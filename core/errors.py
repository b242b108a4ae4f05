"""The user-facing error type and the repository's location."""
import os

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class MtdnetError(Exception):
    """A user-facing error: the message names the file and what is wrong."""
