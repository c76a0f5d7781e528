"""The project's code location with the Delhivery B2C schedule ticking every minute.

Only the daemon test loads it: everything else (job, assets, resources, executor, the
schedule's own logic) is the project's, so the daemon runs what production runs, just sooner.
"""

from dataclasses import replace

from dagster_shared.record import copy

from ordertrack_dagster import definitions as project
from ordertrack_dagster.flows import get_flow
from ordertrack_dagster.orchestration.schedules import build_flow_schedule

FLOW = "delhivery_b2c"
every_minute = build_flow_schedule(replace(get_flow(FLOW), cron="* * * * *"))
other_schedules = [s for s in project.defs.schedules or [] if s.name != every_minute.name]

defs = copy(project.defs, schedules=[*other_schedules, every_minute])
