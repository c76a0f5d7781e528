"""What the tests ask the webserver's GraphQL API: the calls the UI itself makes."""

from dataclasses import dataclass
from typing import Any

from ordertrack_dagster.orchestration.guards import PARTITION_TAG
from ordertrack_dagster.orchestration.jobs import tracking_job
from ordertrack_dagster_tests.deploy.local_deployment import LOCATION, REPOSITORY, Deployment

_REPOSITORY = {"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY}


@dataclass(frozen=True)
class Run:
    run_id: str
    status: str
    tags: dict[str, str]


def _schedule_selector(name: str) -> dict[str, str]:
    return {**_REPOSITORY, "scheduleName": name}


def _expect(result: dict[str, Any], typename: str) -> dict[str, Any]:
    assert result["__typename"] == typename, result
    return result


def start_schedule(deployment: Deployment, name: str) -> str:
    """Turn a schedule on, as its toggle in the UI does; its new status."""
    data = deployment.graphql(
        """mutation Start($selector: ScheduleSelector!) {
          startSchedule(scheduleSelector: $selector) {
            __typename
            ... on ScheduleStateResult { scheduleState { status } }
            ... on PythonError { message }
          }
        }""",
        selector=_schedule_selector(name),
    )
    return str(_expect(data["startSchedule"], "ScheduleStateResult")["scheduleState"]["status"])


def schedule_ticks(deployment: Deployment, name: str) -> list[dict[str, Any]]:
    data = deployment.graphql(
        """query Ticks($selector: ScheduleSelector!) {
          scheduleOrError(scheduleSelector: $selector) {
            __typename
            ... on Schedule { scheduleState { ticks(limit: 20) { status runIds } } }
          }
        }""",
        selector=_schedule_selector(name),
    )
    return list(_expect(data["scheduleOrError"], "Schedule")["scheduleState"]["ticks"])


def flow_runs(deployment: Deployment, tags: dict[str, str]) -> list[Run]:
    """Runs carrying all `tags`, oldest first."""
    data = deployment.graphql(
        """query Runs($filter: RunsFilter!) {
          runsOrError(filter: $filter) {
            __typename
            ... on Runs { results { runId status tags { key value } } }
          }
        }""",
        filter={"tags": [{"key": key, "value": value} for key, value in tags.items()]},
    )
    results = _expect(data["runsOrError"], "Runs")["results"]
    runs = [
        Run(r["runId"], r["status"], {t["key"]: t["value"] for t in r["tags"]}) for r in results
    ]
    return runs[::-1]


def run_status(deployment: Deployment, run_id: str) -> str:
    data = deployment.graphql(
        """query Status($runId: ID!) {
          runOrError(runId: $runId) { __typename ... on Run { status } }
        }""",
        runId=run_id,
    )
    return str(_expect(data["runOrError"], "Run")["status"])


def partition_tags(deployment: Deployment, job_name: str, partition: str) -> dict[str, str]:
    """The tags the Launchpad asks the code server for when a partition is chosen."""
    data = deployment.graphql(
        """query Tags($selector: RepositorySelector!, $set: String!, $partition: String!) {
          partitionSetOrError(repositorySelector: $selector, partitionSetName: $set) {
            __typename
            ... on PartitionSet {
              partition(partitionName: $partition) {
                tagsOrError {
                  __typename
                  ... on PartitionTags { results { key value } }
                  ... on PythonError { message }
                }
              }
            }
            ... on PythonError { message }
          }
        }""",
        selector=_REPOSITORY,
        set=f"{job_name}_partition_set",
        partition=partition,
    )
    found = _expect(data["partitionSetOrError"], "PartitionSet")["partition"]
    tags = _expect(found["tagsOrError"], "PartitionTags")["results"]
    return {tag["key"]: tag["value"] for tag in tags}


def launch_flow_run(deployment: Deployment, flow: str) -> str:
    """Launch the tracking job for one flow's partition, as the UI's Launchpad does: with
    the partition's tags from the code server (the flow tag the queue limits among them)."""
    tags = partition_tags(deployment, tracking_job.name, flow)
    assert tags[PARTITION_TAG] == flow
    data = deployment.graphql(
        """mutation Launch($params: ExecutionParams!) {
          launchRun(executionParams: $params) {
            __typename
            ... on LaunchRunSuccess { run { runId } }
            ... on PythonError { message }
            ... on RunConfigValidationInvalid { errors { message } }
          }
        }""",
        params={
            "selector": {**_REPOSITORY, "jobName": tracking_job.name},
            "runConfigData": {},
            "executionMetadata": {
                "tags": [{"key": key, "value": value} for key, value in tags.items()]
            },
        },
    )
    return str(_expect(data["launchRun"], "LaunchRunSuccess")["run"]["runId"])
