"""Run a benchmark against two revisions of ehc, interleaved, in one invocation, and compare.

    .venv/bin/python perf/compare.py --before ff42419 --runs 3 -- perf/bench_probe.py --quick

Each run executes the benchmark once per side (before, after, before, after, ...), so the machine's
noise hits both alike; ``--before`` is checked out into a temporary git worktree, ``--after``
(default: the working tree) is used as it is.  The benchmark must accept ``--json FILE``; every
number in it (nested keys joined with dots, lists skipped) is reported as the median of the runs with
its [min–max] spread, and after/before as a ratio of the medians.  ``--keys`` picks which to show.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def flatten(obj: object, prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}{k}."))
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        out[prefix.rstrip(".")] = float(obj)
    return out


def run_once(tree: Path, bench: list[str], out: Path) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    script = tree / bench[0]
    subprocess.run([sys.executable, str(script), *bench[1:], "--json", str(out)], cwd=tree, env=env, check=True,
                   stdout=subprocess.DEVNULL)  # fmt: skip
    return flatten(json.loads(out.read_text()))


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.4g} [{min(values):.4g}–{max(values):.4g}]"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True, help="git revision to compare against")
    parser.add_argument("--after", default=None, help="git revision (default: the working tree)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--keys", nargs="*", default=None, help="report only these (dotted) keys")
    parser.add_argument("--json", metavar="FILE", help="also write every run's figures as JSON")
    parser.add_argument(
        "bench", nargs=argparse.REMAINDER, help="-- BENCHMARK [ARGS...], a path inside the repository"
    )
    args = parser.parse_args()
    bench = [a for a in args.bench if a != "--"] if args.bench[:1] == ["--"] else args.bench
    if not bench:
        parser.error("give the benchmark after --")
    with tempfile.TemporaryDirectory(prefix="ehc-compare-") as tmp:
        trees: dict[str, Path] = {}
        for side, rev in (("before", args.before), ("after", args.after)):
            if rev is None:
                trees[side] = ROOT
                continue
            trees[side] = Path(tmp) / side
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-f", str(trees[side]), rev],
                           check=True, capture_output=True)  # fmt: skip
        try:
            runs: dict[str, list[dict[str, float]]] = {"before": [], "after": []}
            for i in range(args.runs):
                for side, tree in trees.items():
                    print(f"run {i + 1}/{args.runs}: {side}", file=sys.stderr, flush=True)
                    runs[side].append(run_once(tree, bench, Path(tmp) / f"{side}-{i}.json"))
        finally:
            for tree in trees.values():
                if tree != ROOT:
                    subprocess.run(
                        ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False
                    )
    keys = args.keys or sorted(set(runs["before"][0]) & set(runs["after"][0]))
    width = max(len(k) for k in keys)
    print(
        f"{'figure':<{width}}  {'before: median [min–max]':<32}  {'after: median [min–max]':<32}  after/before"
    )
    for key in keys:
        b = [r[key] for r in runs["before"] if key in r]
        a = [r[key] for r in runs["after"] if key in r]
        if not a or not b:
            continue
        ratio = statistics.median(a) / statistics.median(b) if statistics.median(b) else float("nan")
        print(f"{key:<{width}}  {spread(b):<32}  {spread(a):<32}  {ratio:.3f}")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {"bench": bench, "before": args.before, "after": args.after or "working tree", "runs": runs},
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
