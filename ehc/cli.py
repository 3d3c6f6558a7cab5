"""The ``ehc`` command: one sub-command per job, each defined next to the code it drives."""

from __future__ import annotations

import argparse
import importlib
import sys

# (sub-command, module providing ``register(subparsers)``); imported lazily so ``ehc probe`` does
# not pay for the Kubernetes client.
COMMANDS: list[tuple[str, str]] = [
    ("demo", "ehc.demo"),
    ("run", "ehc.run"),
    ("probe", "ehc.oneshot"),
    ("sim", "ehc.sim.command"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ehc",
        description="Endpoint health checker: probes opted-in pods and flips their readiness within seconds.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for _name, module in COMMANDS:
        importlib.import_module(module).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
