"""`make bench`: production-scale figures of every flow, run through Dagster on the embedded
stack, written to BENCH.md and bench.json (`python -m ordertrack_dagster.bench --help`)."""
