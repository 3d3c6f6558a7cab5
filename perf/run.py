"""Load test: ehc, ehc judging every pod alone, and the reference-design baseline against thousands of
simulated pods, side by side.

    .venv/bin/python perf/run.py                  # everything, by hand (about two hours; as root)
    .venv/bin/python perf/run.py --quick          # a small fleet, short phases, under 2 minutes (CI)
    .venv/bin/python perf/run.py --scenarios power_off_1_node api_trouble --repeat 3 --json out.json
    .venv/bin/python perf/run.py --scenarios soak --soak-minutes 10   # by hand, never in the default run

Each scenario starts a fresh simulated cluster (default 5,000 pods on 50 nodes), runs the real
``ehc run`` (as "ehc"; as "per-pod" with ``--node-evidence 0`` too, where node failure or loss is
what is measured) or ``perf/baseline.py`` inside its network namespace, breaks something, and measures
what the API server's write log and ``/proc`` saw.  Figures of repeated runs are reported as medians
with their spread.  The report goes to ``--json`` (default ``perf/out/report.json``) and the plot to
``--plot`` (default ``perf/out/detection.png``); the table and the goals are printed at the end.
See ``perf/README.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

from loadtest import report, scenarios
from loadtest.checkers import CheckerSpec
from loadtest.scenarios import Figures, Options

from ehc.sim import netns as sim_netns
from ehc.wire.settings import parse_duration

HERE = Path(__file__).resolve().parent

# The Helm chart's detection profiles (deploy/helm: values.yaml), as ``ehc run`` flags.
PROFILES: dict[str, dict[str, str]] = {
    "fast": {"interval": "500ms", "timeout": "250ms", "retry-count": "3", "confirm-spacing": "50ms", "recovery-threshold": "2"},
    "balanced": {"interval": "1s", "timeout": "500ms", "retry-count": "5", "confirm-spacing": "50ms", "recovery-threshold": "2"},
    "tolerant": {"interval": "2s", "timeout": "1s", "retry-count": "7", "confirm-spacing": "100ms", "recovery-threshold": "3"},
}  # fmt: skip

SCENARIOS = (
    "steady_state", "power_off_1_node", "power_off_10pct_nodes", "pod_level", "loss", "flapping",
    "api_trouble", "leader_failover", "leader_handover", "standby_steady", "partition", "worker_crash", "scale",
    "capacity",
)  # fmt: skip
BASELINE_TOO = {"steady_state", "power_off_1_node", "power_off_10pct_nodes", "pod_level", "loss", "flapping",
                "api_trouble", "leader_failover", "scale"}  # fmt: skip
BY_HAND = ("soak",)  # selectable with --scenarios, never in the default run
QUICK_BASELINE = {"steady_state", "power_off_1_node"}  # in --quick, the baseline's slowness costs minutes
# ehc with --node-evidence 0 ("per-pod") too, where detection under node failure or loss is measured
PER_POD_TOO = {"power_off_1_node", "power_off_10pct_nodes", "pod_level", "loss"}
QUICK_PER_POD = {"power_off_1_node"}


@dataclass
class Step:
    scenario: str  # key in the report
    checker: str  # a CheckerSpec's name: "ehc" | "per-pod" | "baseline"; "" (the step compares itself)
    run: Callable[[], Awaitable[Any]]
    seconds: float  # rough duration, for the progress bar


def ehc_spec(profile: str, workers: int, *extra: str) -> CheckerSpec:
    flags = tuple(x for k, v in PROFILES[profile].items() for x in (f"--{k}", v))
    return CheckerSpec("ehc", (*flags, *extra), workers, parse_duration(PROFILES[profile]["interval"]))


def per_pod_spec(profile: str, workers: int) -> CheckerSpec:
    """ehc as configured, but judging every target alone: no node-level evidence."""
    spec = ehc_spec(profile, workers)
    return replace(spec, args=(*spec.args, "--node-evidence", "0"), name="per-pod")


def plan(args: argparse.Namespace, opts: Options) -> list[Step]:
    witness = (
        ("--node-witness", args.node_witness, "--node-heartbeat", args.node_heartbeat)
        if args.node_witness != "off"
        else ()
    )
    cold = ("--hot-standby", "false") if args.cold_standby else ()
    ehc = ehc_spec(args.profile, args.workers, *witness, *cold)
    per_pod = per_pod_spec(args.profile, args.workers)
    baseline = CheckerSpec("baseline")
    with_baseline = not args.no_baseline
    steps: list[Step] = []

    def add(
        name: str,
        fn: Callable[..., Awaitable[Figures]],
        est: float,
        base_est: float,
        *extra: Any,
        scenario: str | None = None,
    ) -> None:
        """``repeat`` runs of ``fn(opts, spec, tag, *extra)`` for ehc, then for per-pod where it is planned
        (by ``scenario``, default ``name``: the report key), then for the baseline."""
        checkers = [(ehc, est, args.repeat)]
        if not args.no_per_pod and (scenario or name) in (QUICK_PER_POD if args.quick else PER_POD_TOO):
            checkers.append((per_pod, est, args.repeat))
        if with_baseline and (not args.quick or name in QUICK_BASELINE):
            checkers.append((baseline, base_est, args.baseline_repeat))
        for spec, seconds, repeat in checkers:
            steps.extend(
                Step(name, spec.name, partial(fn, opts, spec, f"{name}-{i}", *extra), seconds)
                for i in range(repeat)
            )

    warm = 8.0
    for name in args.scenarios:
        if name == "steady_state":
            add(name, scenarios.steady, warm + opts.steady_seconds, warm + opts.steady_seconds)
        elif name == "power_off_1_node":
            add(name, scenarios.power_off_scenario, warm + 5, warm + min(opts.cap, 80), 0.0)
        elif name == "pod_level":
            add(name, scenarios.pod_level, warm + 8, warm + 40)
        elif name == "power_off_10pct_nodes":
            add(name, scenarios.power_off_scenario, warm + 8, warm + opts.cap, 0.1)
        elif name == "loss":
            for percent, seconds in opts.loss:
                add(f"loss_{percent}pct", scenarios.loss_scenario, warm + seconds + 5, warm + seconds + 25,
                    percent, seconds, scenario=name)  # fmt: skip
        elif name == "flapping":
            est = warm + opts.flap_rounds * 0.65 + opts.flap_cycles * 8 + 5
            add(name, scenarios.flapping, est, est)
        elif name == "api_trouble":
            add(
                name,
                scenarios.api_trouble,
                warm + opts.trouble_seconds + 10,
                warm + opts.trouble_seconds + 30,
            )
        elif name == "leader_failover":
            add(name, scenarios.failover, warm + 10, warm + 30)
        elif name == "standby_steady":
            add(name, scenarios.standby_steady, warm + opts.steady_seconds, warm + opts.steady_seconds)
        elif name == "leader_handover":
            add(name, scenarios.failover, warm + 10, warm + 30, True)
        elif name == "partition":  # ehc, and ehc deciding alone as before issue 15: no second opinion
            alone = replace(ehc, args=(*ehc.args, "--second-opinion", "false"), name="no-second-opinion")
            steps.extend(
                Step(name, spec.name, partial(scenarios.partition, opts, spec, f"{name}-{i}"),
                     warm + opts.partition_seconds + 20)
                for spec in (ehc, alone) for i in range(args.repeat)
            )  # fmt: skip
        elif name == "worker_crash":  # ehc only: the baseline has no workers
            crash = ehc_spec(args.profile, max(2, args.workers))
            steps.extend(
                Step(name, "ehc", partial(scenarios.worker_crash, opts, crash, f"{name}-{i}"), warm + 8)
                for i in range(args.repeat)
            )
        elif name == "soak":  # ehc only: its own standby and workers are what is broken
            soak = ehc_spec(args.profile, max(2, args.workers))
            steps.extend(
                Step(
                    name,
                    "ehc",
                    partial(scenarios.soak, opts, soak, f"{name}-{i}"),
                    warm + 60 * opts.soak_minutes + 45,
                )
                for i in range(args.repeat)
            )
        elif name == "scale":
            for pods in opts.scale_sizes:
                specs = [ehc_spec(args.profile, w) for w in opts.scale_workers]
                if with_baseline and not args.quick:
                    specs.append(baseline)
                steps.extend(
                    Step(name, spec.name, partial(scenarios.scale_point, opts, spec, f"scale-{pods}", pods),
                         warm + pods / 2000 + opts.scale_seconds)
                    for spec in specs
                )  # fmt: skip
        elif name == "capacity":
            steps.append(Step(name, "", partial(capacity, args), 300))
    return steps


async def capacity(args: argparse.Namespace) -> Figures:
    """ehc's probe capacity at a 1 s interval with 1, 2 and 4 workers, against a bare uvloop connect
    loop measured in the same run (``bench_probe``'s method: synthetic targets, no API server)."""
    import bench_probe

    from ehc.wire.settings import ProbeSettings
    from ehc.worker.limits import raise_fd_limit

    raise_fd_limit()
    listener = bench_probe.endpoint()
    port = listener.getsockname()[1]
    settings = ProbeSettings(interval=1.0, timeout=0.5, retry_count=5)
    try:
        bare = [bench_probe.run_bare(port, 20_000, 4.0, 256) for _ in range(3)]
        bare_rate = statistics.median(b["rate"] for b in bare)
        by_workers: dict[str, Figures] = {}
        for w in (1, 2, 4):
            best, _runs = await bench_probe.capacity(port, w, 10_000 * w, 5_000 * w, settings, quick=False)
            by_workers[str(w)] = asdict(best) if best else {}
    finally:
        listener.close()
    one = by_workers["1"].get("done_rate", 0.0)
    return {
        "bare_loop_probes_per_second": round(bare_rate),
        "bare_loop_runs": [round(b["rate"]) for b in bare],
        "bare_loop_cpu_us_per_probe": round(statistics.median(b["cpu_us_per_probe"] for b in bare), 2),
        "capacity_targets_by_workers": {w: r.get("targets") for w, r in by_workers.items()},
        "capacity_probes_per_second_by_workers": {
            w: round(r.get("done_rate", 0)) for w, r in by_workers.items()
        },
        "cpu_us_per_probe_by_workers": {
            w: round(r.get("cpu_us_per_probe", 0), 2) for w, r in by_workers.items()
        },
        "one_worker_vs_bare_rate": round(one / bare_rate, 3),
        "cpus": os.cpu_count(),
    }


class Progress:
    """One line per step on stderr, a bar when stderr is a terminal (tqdm)."""

    def __init__(self, steps: list[Step]) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=round(sum(s.seconds for s in steps)), unit="s", file=sys.stderr,
                        bar_format="{l_bar}{bar}| {elapsed}<{remaining} {postfix}", disable=None)  # fmt: skip
        self.done = 0.0

    def step(self, i: int, n: int, step: Step) -> None:
        self.bar.set_description(f"[{i}/{n}] {step.scenario} {step.checker}".strip())
        if self.bar.disable:
            print(
                f"[{time.strftime('%H:%M:%S')}] [{i}/{n}] {step.scenario} {step.checker}",
                file=sys.stderr,
                flush=True,
            )

    def note(self, text: str) -> None:
        self.bar.set_postfix_str(text, refresh=True)

    def finished(self, step: Step) -> None:
        self.bar.update(round(step.seconds))

    def close(self) -> None:
        self.bar.close()


async def execute(args: argparse.Namespace, opts: Options) -> Figures:
    steps = plan(args, opts)
    progress = Progress(steps)
    opts.progress = progress.note
    runs: dict[str, dict[str, list[Any]]] = {}
    errors: list[str] = []
    started = time.monotonic()
    try:
        for i, step in enumerate(steps, 1):
            progress.step(i, len(steps), step)
            try:
                result = await step.run()
            except (RuntimeError, TimeoutError, OSError) as exc:
                errors.append(f"{step.scenario} {step.checker}: {exc}")
                print(f"  {step.scenario} {step.checker}: failed: {exc}", file=sys.stderr, flush=True)
                continue
            finally:
                progress.finished(step)
            runs.setdefault(step.scenario, {}).setdefault(step.checker, []).append(result)
    finally:
        progress.close()
    return build_report(args, opts, runs, errors, time.monotonic() - started)


def build_report(args: argparse.Namespace, opts: Options, runs: dict[str, dict[str, list[Any]]],
                 errors: list[str], seconds: float) -> Figures:  # fmt: skip
    out: dict[str, Figures] = {}
    for name, by_checker in runs.items():
        if name == "capacity":
            out[name] = by_checker[""][0]
        elif name == "scale":
            out[name] = {k: v for k, v in by_checker.items()}
            out[name]["rss_bytes_per_target"] = scenarios.rss_slope(
                [p for p in by_checker.get("ehc", []) if p["workers"] == 1]
            )
        else:
            entry: Figures = {}
            for checker, results in by_checker.items():
                entry[checker], spread = report.summarize(results)
                if spread:
                    entry[f"{checker}_spread"] = spread
                entry[f"{checker}_runs"] = len(results)
            out[name] = entry
    rep: Figures = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "kernel": platform.release(),
                    "processor": platform.processor() or platform.machine()},
        "command": " ".join(["perf/run.py", *sys.argv[1:]]),
        "quick": args.quick,
        "profile": args.profile,
        "profile_settings": PROFILES[args.profile],
        "workers": args.workers,
        "node_witness": args.node_witness,
        "node_heartbeat": args.node_heartbeat,
        "hot_standby": not args.cold_standby,
        "fleet": {"nodes": opts.nodes, "pods_per_node": opts.pods_per_node},
        "repeat": {"ehc": args.repeat, "per-pod": 0 if args.no_per_pod else args.repeat,
                   "baseline": args.baseline_repeat},
        "wall_seconds": round(seconds, 1),
        "node_monitor_grace_period_seconds": report.GRACE_PERIOD,
        "scenarios": out,
        "errors": errors,
    }  # fmt: skip
    rep["ehc_over_baseline"] = report.ratios(out)
    rep["ehc_over_per_pod"] = report.ratios(out, "per-pod", report.detection_figures(out))
    rep["goals"] = report.goals(rep)
    return rep


def merge(paths: list[str]) -> Figures:
    """One report from several runs' reports (say, the long loss scenario run on its own)."""
    reports = [json.loads(Path(p).read_text()) for p in paths]
    rep = dict(reports[0])
    rep["command"] = [r["command"] for r in reports]
    rep["wall_seconds"] = round(sum(r["wall_seconds"] for r in reports), 1)
    rep["scenarios"] = {k: v for r in reports for k, v in r["scenarios"].items()}
    rep["errors"] = [e for r in reports for e in r["errors"]]
    rep["ehc_over_baseline"] = report.ratios(rep["scenarios"])
    rep["ehc_over_per_pod"] = report.ratios(
        rep["scenarios"], "per-pod", report.detection_figures(rep["scenarios"])
    )
    rep["goals"] = report.goals(rep)
    return rep


def options(args: argparse.Namespace) -> Options:
    if args.quick:  # 1,000 pods, 7 opted in per node: the baseline finds a dead node's pods in one round
        opts = Options(nodes=100, pods_per_node=10, steady_seconds=4, loss=((2, 8.0),), trouble_seconds=6,
                       cap=20, scale_sizes=(500, 2_000), scale_workers=(1,), scale_seconds=3,
                       flap_rounds=3, flap_cycles=1, partition_seconds=4)  # fmt: skip
    else:
        opts = Options(nodes=args.nodes, pods_per_node=args.pods_per_node, steady_seconds=args.steady_seconds,
                       loss=((2, args.loss_seconds), (5, args.loss_seconds)), cap=args.cap,
                       trouble_seconds=args.trouble_seconds, partition_seconds=args.partition_seconds)  # fmt: skip
    opts.log_dir = Path(args.json).resolve().parent / "logs"
    opts.soak_minutes, opts.seed = args.soak_minutes, args.seed
    opts.backends_per_node = args.backends_per_node
    return opts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog="See perf/README.md.")
    p.add_argument(
        "--quick",
        action="store_true",
        help="1,000 pods, short phases, the baseline and per-pod only where they are quick: about 2 min",
    )
    p.add_argument(
        "--scenarios",
        nargs="+",
        choices=SCENARIOS + BY_HAND,
        default=None,
        metavar="NAME",
        help=f"which scenarios (default: all but {', '.join(BY_HAND)}, and capacity in --quick). "
        f"One of: {', '.join(SCENARIOS + BY_HAND)}",
    )
    p.add_argument("--nodes", type=int, default=50, help="simulated nodes (default 50)")
    p.add_argument("--pods-per-node", type=int, default=100, help="pods per node (default 100; 70%% opt in)")
    p.add_argument("--workers", type=int, default=1, help="ehc worker processes (default 1)")
    p.add_argument(
        "--backends-per-node", type=int, default=5,
        help="power-off scenarios: external backends per node behind selectorless Services, checked by "
        "ehc --selectorless (default 5; 0: none)",
    )  # fmt: skip
    p.add_argument(
        "--node-witness", choices=("off", "tcp", "icmp"), default="off",
        help="ehc's node witness (EHC_NODE_WITNESS; the simulated nodes' kubelet ports refuse, which is "
        "an answer; default off, as ehc's)",
    )  # fmt: skip
    p.add_argument(
        "--cold-standby", action="store_true",
        help="ehc's standbys idle until they lead (EHC_HOT_STANDBY=false), as before issue 15",
    )  # fmt: skip
    p.add_argument(
        "--node-heartbeat", default="100ms", help="with --node-witness: EHC_NODE_HEARTBEAT (default 100ms)"
    )
    p.add_argument(
        "--profile",
        choices=sorted(PROFILES),
        default="balanced",
        help="ehc detection profile (default balanced: ehc's defaults)",
    )
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="runs of each scenario with ehc, and with per-pod where it runs; figures are medians (default 1)",
    )
    p.add_argument(
        "--baseline-repeat", type=int, default=1,
        help="runs with the baseline (default 1: its figures follow from its design, and it is slow)",
    )  # fmt: skip
    p.add_argument(
        "--steady-seconds", type=float, default=30.0, help="steady-state measuring window (default 30)"
    )
    p.add_argument(
        "--loss-seconds",
        type=float,
        default=600.0,
        help="how long each loss rate (2%% and 5%%) runs before a node is powered off (default 600)",
    )
    p.add_argument(
        "--trouble-seconds",
        type=float,
        default=30.0,
        help="api_trouble: how long every single-pod request is refused (default 30)",
    )
    p.add_argument(
        "--partition-seconds", type=float, default=20.0,
        help="partition: how long the leader's path to one node stays cut (default 20)",
    )  # fmt: skip
    p.add_argument(
        "--cap",
        type=float,
        default=150.0,
        help="stop waiting for detections after this many seconds (default 150)",
    )
    p.add_argument(
        "--soak-minutes",
        type=float,
        default=10.0,
        help="soak duration; a node goes dark each minute (default 10)",
    )
    p.add_argument("--seed", type=int, default=1, help="seed of the soak's random faults (default 1)")
    p.add_argument("--no-baseline", action="store_true", help="leave the baseline out")
    p.add_argument(
        "--no-per-pod", action="store_true",
        help="leave out per-pod: ehc with --node-evidence 0 (every target judged alone), which otherwise runs "
        f"in {', '.join(sorted(PER_POD_TOO))} (in --quick: {', '.join(sorted(QUICK_PER_POD))})",
    )  # fmt: skip
    p.add_argument(
        "--json", default=str(HERE / "out" / "report.json"), help="report file (default perf/out/report.json)"
    )
    p.add_argument(
        "--plot",
        default=str(HERE / "out" / "detection.png"),
        help="plot file (default perf/out/detection.png; '' for none)",
    )
    p.add_argument(
        "--merge",
        nargs="+",
        metavar="REPORT",
        help="combine earlier reports into --json and --plot; run nothing",
    )
    args = p.parse_args(argv)  # fmt: skip
    if args.scenarios is None:
        args.scenarios = [s for s in SCENARIOS if not (args.quick and s == "capacity")]
    if args.merge:
        return finish(args, merge(args.merge))
    ok, why = sim_netns.available()
    if not ok:
        print(f"perf/run.py needs a private network namespace (root and nftables) to drop packets: {why}",
              file=sys.stderr)  # fmt: skip
        return 2
    opts = options(args)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    import uvloop

    return finish(args, uvloop.run(execute(args, opts)))


def finish(args: argparse.Namespace, rep: Figures) -> int:
    """Write the report and the plot; print the table and the goals."""
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(rep, f, indent=2)
    if args.plot:
        from loadtest.plot import plot

        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
        plot(rep, args.plot)
    print(report.table(rep))
    print()
    for g in rep["goals"]:
        mark = {True: "met", False: "NOT met", None: "not measured (run too short)"}[g["met"]]
        print(f"  goal: {g['goal']}: {g['value']} -> {mark}")
    for e in rep["errors"]:
        print(f"  error: {e}")
    print(f"\nreport: {args.json}" + (f", plot: {args.plot}" if args.plot else ""))
    return 1 if rep["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
