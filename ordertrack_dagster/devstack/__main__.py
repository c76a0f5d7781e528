"""`python -m ordertrack_dagster.devstack <command>`: the embedded stack from the shell.

`up` starts every service, seeds the demo data, prints `export NAME=value` lines for the
stack's environment and keeps the stack running until Ctrl-C. `run` (make run) runs every
flow once through the `dagster` CLI and prints a summary; `dev` (make dev) opens the UI.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import threading

from ordertrack_dagster.devstack import demo
from ordertrack_dagster.devstack.processes import absolute_path, install_stop_signals
from ordertrack_dagster.devstack.seed import seed_stack
from ordertrack_dagster.devstack.stack import EmbeddedStack


def _up(args: argparse.Namespace) -> int:
    with EmbeddedStack(workdir=args.workdir, simulator_args=args.simulator_args) as stack:
        result = seed_stack(stack, args.orders, args.seed)
        seeded = ", ".join(f"{flow} {count}" for flow, count in result.per_flow.items())
        print(f"# seeded {seeded}, plus {result.noise} noise orders", file=sys.stderr)
        for name, value in sorted(stack.env.items()):
            print(f"export {name}={shlex.quote(value)}")
        print(f"# logs in {stack.workdir / 'logs'}; Ctrl-C stops the stack", file=sys.stderr)
        sys.stdout.flush()
        threading.Event().wait()
    return 0


# Relative to where the command was started; made absolute at once (DAGSTER_HOME must be).
_WORKDIR = {
    "type": absolute_path,
    "default": ".devstack",  # a string default goes through `type` too
    "help": "logs, recordings, mail and the Dagster instance (default: .devstack)",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ordertrack_dagster.devstack")
    commands = parser.add_subparsers(dest="command", required=True)

    up = commands.add_parser("up", help="start and seed the stack, print its environment, wait")
    up.add_argument("--orders", type=int, default=1_000, help="orders to seed over all flows")
    up.add_argument("--seed", type=int, default=7, help="random seed of the demo data")
    up.add_argument("--workdir", **_WORKDIR)
    up.add_argument("simulator_args", nargs="*", help="passed to the courier simulator (after --)")
    up.set_defaults(handler=_up)

    run = commands.add_parser("run", help="run every flow once on a seeded stack; summarise")
    dev = commands.add_parser("dev", help="the seeded stack plus `dagster dev` (the UI)")
    for command, orders in ((run, 2_000), (dev, 2_000)):
        command.add_argument("--orders", type=int, default=orders, help="demo orders to seed")
        command.add_argument("--seed", type=int, default=7, help="random seed of the demo data")
        command.add_argument("--workdir", **_WORKDIR)
    run.set_defaults(handler=lambda a: demo.run(a.orders, a.workdir, a.seed))
    dev.add_argument("--port", type=int, default=3000)
    dev.set_defaults(handler=lambda a: demo.dev(a.orders, a.workdir, a.seed, a.port))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    install_stop_signals()
    try:
        return int(args.handler(args))
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
