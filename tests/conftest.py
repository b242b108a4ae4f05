"""Shared pytest fixtures; shared plain helpers are in tests/helpers.py, dataset fixtures
(small copies of the real on-disk layouts) in tests/fixtures.py."""
import pytest

from core import Project


@pytest.fixture
def tmp_project(tmp_path):
    """A Project whose data/ and runs/ (and Caffe's working directory) are a fresh temp folder."""
    return Project(root=str(tmp_path))


@pytest.fixture
def quiet_log():
    """A log function that prints nothing."""
    return lambda *a, **k: None
