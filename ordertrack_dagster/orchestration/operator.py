"""Operator jobs launched from the UI: clearing a courier pause without a MongoDB shell.

A pause is stored per budget scope (flows sharing a courier account share it). Launch
`clear_courier_pause` with run config `ops: {clear_courier_pause: {config: {scopes: [...]}}}`
(an empty list clears every stored pause); the run's metadata lists what was cleared.
"""

from dagster import Config, OpExecutionContext, job, op
from pydantic import Field

from ordertrack_dagster.couriers.state import CourierState
from ordertrack_dagster.flows import FLOWS
from ordertrack_dagster.resources.mongo import MongoResource

SCOPES = sorted({flow.budget_scope for flow in FLOWS.values()})


class ClearPauseConfig(Config):
    scopes: list[str] = Field(
        default_factory=list,
        description=f"budget scopes to resume ({', '.join(SCOPES)}); empty: every stored pause",
    )


@op(name="clear_courier_pause", description="Delete stored courier pauses (ordertrack_state).")
def clear_courier_pause(
    context: OpExecutionContext, config: ClearPauseConfig, mongo: MongoResource
) -> list[str]:
    unknown = sorted(set(config.scopes) - set(SCOPES))
    if unknown:
        raise ValueError(f"unknown scope(s) {unknown}; known: {SCOPES}")
    state = CourierState(mongo.get_database())
    stored = {str(doc["_id"]).removeprefix("pause:"): doc for doc in state.pauses()}
    chosen = config.scopes or sorted(stored)
    cleared = [scope for scope in chosen if state.clear_pause(scope)]
    for scope in cleared:
        doc = stored.get(scope, {})
        context.log.info(
            f"cleared the pause of {scope} (resume_at {doc.get('resume_at')}, "
            f"reason {doc.get('reason')!r})"
        )
    context.log.info(f"cleared {len(cleared)} pause(s): {cleared or 'none was stored'}")
    return cleared


@job(name="clear_courier_pause_job", description=__doc__.splitlines()[0])
def clear_courier_pause_job() -> None:
    clear_courier_pause()
