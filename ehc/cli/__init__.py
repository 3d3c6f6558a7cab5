"""The ``ehc`` command: one sub-command per job, each in its own module of this package.

``ehc demo`` and ``ehc sim`` need the simulated cluster (``ehc.sim``), which a source checkout has and
the wheel (so the container image) does not: there they answer with an error that says so.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

# (sub-command, module providing ``register(subparsers)``, whether it needs the simulated cluster);
# imported lazily so ``ehc probe`` does not pay for the Kubernetes client.
COMMANDS: list[tuple[str, str, bool]] = [
    ("demo", "ehc.cli.demo", True),
    ("run", "ehc.cli.run", False),
    ("probe", "ehc.cli.probe", False),
    ("sim", "ehc.cli.sim", True),
    ("status", "ehc.cli.status", False),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ehc",
        description="Endpoint health checker: probes opted-in pods and flips their readiness within seconds.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    have_sim = importlib.util.find_spec("ehc.sim") is not None
    for name, module, needs_sim in COMMANDS:
        if needs_sim and not have_sim:
            _register_missing(sub, name)
        else:
            importlib.import_module(module).register(sub)
    return parser


def _register_missing(sub: argparse._SubParsersAction, name: str) -> None:  # type: ignore[type-arg]
    why = (
        f"ehc {name} needs the simulated cluster, which is not part of this installation (the wheel and "
        f"the container image leave it out); run it from a source checkout: scripts/ehc {name}"
    )
    p = sub.add_parser(name, help=f"(not installed) {why}", description=why)
    p.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    p.set_defaults(func=lambda _args: print(f"ehc: {why}", file=sys.stderr) or 2)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
