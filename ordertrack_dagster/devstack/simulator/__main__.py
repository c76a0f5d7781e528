"""``python -m ordertrack_dagster.devstack.simulator --port 8765``: serve the simulator."""

from ordertrack_dagster.devstack.simulator.app import main

main()
