"""Shared fixtures: tiny models built once per session, and the MPI launcher (tests/helpers.py) that can never
hang a test. pytest puts this folder on the import path (its default "prepend" mode), so tests import the
helpers of tests/ by name."""

from __future__ import annotations

import pytest
from helpers import launch


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, str]:
    from tiny_models import build_tiny_models

    return build_tiny_models(tmp_path_factory.mktemp("tiny_models"))


@pytest.fixture
def run_mpi():
    return launch
