"""Each analytics test gets its own bucket on the stack's S3, named in AWS_S3_BUCKET."""

import uuid
from collections.abc import Iterator
from datetime import date

import pyarrow.fs as pafs
import pytest

from ordertrack_dagster.analytics.history import HistoryStore
from ordertrack_dagster.analytics.models import s3_filesystem
from ordertrack_dagster.devstack.stack import AWS_REGION, EmbeddedStack
from ordertrack_dagster_tests.analytics import scenario

LAST_DAY = date(2024, 9, 22)


@pytest.fixture
def bucket(stack: EmbeddedStack, stack_env: dict, monkeypatch: pytest.MonkeyPatch) -> str:
    name = f"t-{uuid.uuid4().hex[:16]}"
    stack.s3_client().create_bucket(
        Bucket=name, CreateBucketConfiguration={"LocationConstraint": AWS_REGION}
    )
    monkeypatch.setenv("AWS_S3_BUCKET", name)
    return name


@pytest.fixture
def store(stack: EmbeddedStack, bucket: str) -> HistoryStore:
    return HistoryStore(stack.s3_client(), bucket)


@pytest.fixture(scope="session")
def filesystem(stack: EmbeddedStack) -> Iterator[pafs.S3FileSystem]:
    yield s3_filesystem(stack.url("s3"), AWS_REGION, "devstack", "devstack")


@pytest.fixture
def history(store: HistoryStore) -> scenario.Scenario:
    """The scenario's four runs, stored on fixed days ending 2024-09-22."""
    written = scenario.build(LAST_DAY)
    scenario.write(store, written)
    return written
