"""Fixtures of the orchestration tests: a persistent Dagster instance and the stack's MongoDB."""

from collections.abc import Callable, Iterator

import pytest
from dagster import (
    DagsterEvent,
    DagsterEventType,
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
    instance_for_test,
)
from dagster._core.remote_origin import (
    InProcessCodeLocationOrigin,
    RemoteJobOrigin,
    RemoteRepositoryOrigin,
)
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
from pymongo.database import Database

from ordertrack_dagster.devstack.stack import EmbeddedStack
from ordertrack_dagster.resources.mongo import MongoResource

AddRun = Callable[[DagsterRunStatus, dict[str, str]], DagsterRun]

# Where a queued run would be launched from; Dagster requires one for a run to be QUEUED.
_ORIGIN = RemoteJobOrigin(
    RemoteRepositoryOrigin(
        InProcessCodeLocationOrigin(
            LoadableTargetOrigin(module_name="ordertrack_dagster.definitions"),
            location_name="ordertrack",
        ),
        "__repository__",
    ),
    "tracking_job",
)

# The run event that moves a run into each status, as the coordinator and launcher report them.
_STATUS_EVENT = {
    DagsterRunStatus.QUEUED: DagsterEventType.RUN_ENQUEUED,
    DagsterRunStatus.STARTING: DagsterEventType.RUN_STARTING,
    DagsterRunStatus.STARTED: DagsterEventType.RUN_START,
    DagsterRunStatus.CANCELING: DagsterEventType.RUN_CANCELING,
    DagsterRunStatus.SUCCESS: DagsterEventType.RUN_SUCCESS,
    DagsterRunStatus.FAILURE: DagsterEventType.RUN_FAILURE,
}


@pytest.fixture(scope="session")
def _session_instance() -> Iterator[DagsterInstance]:
    with instance_for_test() as test_instance:
        yield test_instance


@pytest.fixture
def instance(_session_instance: DagsterInstance) -> DagsterInstance:
    """An instance on disk (schedule contexts need a persistent one), emptied for each test:
    a fresh one costs seconds, emptying it a fraction of that."""
    _session_instance.wipe()
    _session_instance.wipe_daemon_heartbeats()
    return _session_instance


@pytest.fixture
def add_run(instance: DagsterInstance) -> AddRun:
    """Store a run record in a status, as the run coordinator or the UI would leave it."""

    def _add(status: DagsterRunStatus, tags: dict[str, str]) -> DagsterRun:
        run = DagsterRun(job_name="tracking_job", tags=tags, remote_job_origin=_ORIGIN)
        run = instance.add_run(run)
        if status in _STATUS_EVENT:
            event = DagsterEvent(_STATUS_EVENT[status].value, job_name=run.job_name)
            instance.report_dagster_event(event, run.run_id)
        stored = instance.get_run_by_id(run.run_id)
        assert stored is not None and stored.status == status
        return stored

    return _add


@pytest.fixture
def mongo(stack: EmbeddedStack, db: Database) -> MongoResource:
    return MongoResource(uri=stack.env["MONGODB_URI"], database=db.name)
