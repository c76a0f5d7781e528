"""Fixtures of the effects tests."""

from collections.abc import Iterator

import pytest
from dagster import DagsterInstance


@pytest.fixture
def instance() -> Iterator[DagsterInstance]:
    """The test's Dagster instance, shared by its runs as production's is, and entered so
    that definitions load against it rather than whatever an earlier test left current."""
    with DagsterInstance.ephemeral() as entered:
        yield entered
