"""Operator jobs launched from the UI: routine actions without a MongoDB shell.

Each takes typed run config (the launchpad shows its fields and their descriptions) and
records in the run's metadata what was asked and what changed (the op's output metadata).

- `clear_courier_pause_job`: a pause is stored per budget scope (flows sharing a courier
  account share it); `scopes: [...]` names them, an empty list clears every stored pause.
- `requeue_dead_letters_job`: deliveries given up on go back in the outbox with a fresh retry
  budget, by flow, effect and when they were given up on; the flow's next run sends them.
- `repoll_orders_job` (in `jobs.py`): chosen orders of one flow polled now.
"""

from datetime import UTC, datetime, timedelta
from typing import Any

from dagster import Config, MetadataValue, OpExecutionContext, job, op
from pydantic import Field

from ordertrack_dagster.effects import EFFECTS, EffectsSettings, Outbox, dead_letter_filter
from ordertrack_dagster.flows import FLOWS
from ordertrack_dagster.resources.mongo import MongoResource
from ordertrack_dagster.resources.state import SharedState

SCOPES = sorted({flow.budget_scope for flow in FLOWS.values()})
EFFECT_KINDS = {effect.name: effect.kinds for effect in EFFECTS}
#: How many re-queued deliveries the run's metadata names one by one (the count is exact).
LISTED = 100


def _known(kind: str, asked: list[str], known: list[str]) -> None:
    """Config naming something that does not exist is a typo: fail before changing anything."""
    unknown = sorted(set(asked) - set(known))
    if unknown:
        raise ValueError(f"unknown {kind} {unknown}; known: {known}")


class ClearPauseConfig(Config):
    scopes: list[str] = Field(
        default_factory=list,
        description=f"budget scopes to resume ({', '.join(SCOPES)}); empty: every stored pause",
    )


@op(name="clear_courier_pause", description="Delete stored courier pauses (ordertrack_state).")
def clear_courier_pause(
    context: OpExecutionContext, config: ClearPauseConfig, mongo: MongoResource
) -> list[str]:
    _known("scope(s)", config.scopes, SCOPES)
    state = SharedState(mongo.get_database())
    stored = state.pauses()
    chosen = config.scopes or sorted(stored)
    cleared = [scope for scope in chosen if state.clear_pause(scope)]
    for scope in cleared:
        doc = stored.get(scope, {})
        context.log.info(
            f"cleared the pause of {scope} (resume_at {doc.get('resume_at')}, "
            f"reason {doc.get('reason')!r})"
        )
    context.log.info(f"cleared {len(cleared)} pause(s): {cleared or 'none was stored'}")
    context.add_output_metadata(
        {
            "asked_scopes": MetadataValue.json(config.scopes),
            "cleared": MetadataValue.json(cleared),
            "cleared_count": len(cleared),
        }
    )
    return cleared


@job(
    name="clear_courier_pause_job",
    description="Resume a paused courier now: delete its stored pause (rate limit), so the "
    "next run asks it again.",
)
def clear_courier_pause_job() -> None:
    clear_courier_pause()


class RequeueDeadLettersConfig(Config):
    flows: list[str] = Field(
        default_factory=list, description=f"flows ({', '.join(FLOWS)}); empty: every flow"
    )
    effects: list[str] = Field(
        default_factory=list,
        description=f"effects ({', '.join(EFFECT_KINDS)}); empty: every effect",
    )
    given_up_within_hours: float | None = Field(
        default=None,
        description="only deliveries given up on in the last so many hours (those an outage "
        "just killed); empty: any",
    )
    given_up_before_hours: float | None = Field(
        default=None,
        description="only deliveries given up on at least so many hours ago; empty: any",
    )


def _hours_ago(now: datetime, hours: float | None) -> datetime | None:
    return None if hours is None else now - timedelta(hours=hours)


def _listed(doc: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": str(doc["_id"]),
        **{name: str(doc.get(name)) for name in ("flow", "kind", "order_id", "dead_at")},
        "last_error": doc.get("last_error"),
    }


@op(
    name="requeue_dead_letters",
    description="Put dead letters back in the outbox (ordertrack_outbox) with a fresh retry "
    "budget.",
)
def requeue_dead_letters(
    context: OpExecutionContext,
    config: RequeueDeadLettersConfig,
    mongo: MongoResource,
    effects: EffectsSettings,
) -> int:
    _known("flow(s)", config.flows, list(FLOWS))
    _known("effect(s)", config.effects, list(EFFECT_KINDS))
    now = datetime.now(UTC)
    kinds = [kind for name in config.effects or EFFECT_KINDS for kind in EFFECT_KINDS[name]]
    query = dead_letter_filter(
        config.flows or list(FLOWS),
        kinds,
        dead_after=_hours_ago(now, config.given_up_within_hours),
        dead_before=_hours_ago(now, config.given_up_before_hours),
    )
    outbox = Outbox(mongo.get_database(), effects.retry_policy(), owner=context.run_id)
    dead = outbox.dead_letters(query)
    requeued = outbox.requeue_ids([doc["_id"] for doc in dead], now) if dead else 0
    context.log.info(
        f"re-queued {requeued} of {len(dead)} matching dead letter(s); "
        "each flow's next run sends its own"
    )
    per_flow_kind: dict[str, int] = {}
    for doc in dead:
        key = f"{doc['flow']}/{doc['kind']}"
        per_flow_kind[key] = per_flow_kind.get(key, 0) + 1
    context.add_output_metadata(
        {
            "asked": MetadataValue.json(config.model_dump()),
            "matched": len(dead),
            "requeued": requeued,
            "per_flow_and_kind": MetadataValue.json(per_flow_kind),
            "requeued_deliveries": MetadataValue.json([_listed(doc) for doc in dead[:LISTED]]),
        }
    )
    return requeued


@job(
    name="requeue_dead_letters_job",
    description="Send again the deliveries given up on (dead letters), by flow, effect and "
    "age, once their cause is fixed; each flow's next run sends them.",
)
def requeue_dead_letters_job() -> None:
    requeue_dead_letters()
