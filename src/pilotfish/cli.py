"""The `pilotfish` command: run the demo, report on a session."""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import sys
import time
from collections.abc import Sequence

from .description import InvalidDescription, PilotDescription
from .partitions import PartitionSpec
from .progress import wait_with_progress
from .session import Session
from .states import TaskState


def parse_partitions(text: str) -> list[PartitionSpec]:
    """`dragon:1,builtin`: BACKEND[:NODES] each, NODES a count, a fraction or (none) the
    nodes the others leave. ValueError says what is wrong."""
    specs = []
    for item in text.split(","):
        backend, _, nodes = item.strip().partition(":")
        try:
            count = (None if not nodes else float(nodes) if "." in nodes else int(nodes))
        except ValueError:
            raise ValueError(f"{item!r}: NODES must be a count or a fraction") from None
        specs.append(PartitionSpec(backend=backend, nodes=count))
    return specs


def run_description(args: argparse.Namespace) -> PilotDescription:
    """The demo's pilot: virtual nodes on the local platform (2 x 16 cores x 4 GPUs by
    default); on a Slurm platform, its nodes' shape, as a batch pilot from a login node
    (`--nodes`, default 1) or over the allocation it runs in (`--nodes`, default all)."""
    partitions = parse_partitions(args.partitions) if args.partitions else []
    local = args.platform == "local"
    return PilotDescription(
        platform=args.platform, partitions=partitions, runtime=args.runtime,
        nodes=args.nodes if args.nodes is not None or not local else 2,
        cores_per_node=args.cores if args.cores is not None or not local else 16,
        gpus_per_node=args.gpus if args.gpus is not None or not local else 4)


def cmd_run(args: argparse.Namespace) -> int:
    from .metrics import session_metrics
    from .workloads.demo import demo_tasks

    try:
        desc = run_description(args)
    except ValueError as exc:  # InvalidDescription and PartitionError too
        print(f"pilotfish run: {exc}", file=sys.stderr)
        return 2
    partitions = desc.partitions
    with Session(path=args.sessions) as session:
        print(f"session {session.uid} ({session.path})")
        t0 = time.monotonic()
        pilot = session.start_pilot(desc)
        where = f"{desc.mode}" + (f", on {','.join(desc.hosts)}" if desc.hosts else "")
        if pilot.state == "PENDING":
            print(f"pilot {pilot.uid}: batch job {pilot.job_id} submitted; waiting for it to "
                  "start (Ctrl-C cancels it)", flush=True)
            if not pilot.wait_active():
                print(f"pilot {pilot.uid} {pilot.state}: {pilot.reason}", file=sys.stderr)
                return 1
            where += f", job {pilot.job_id}"
        print(f"pilot {pilot.uid} ({where}): {desc.nodes} node(s) x {desc.cores_per_node} "
              f"cores, {desc.gpus_per_node} GPUs per node; ready in "
              f"{time.monotonic() - t0:.2f} s")
        tasks = session.submit(demo_tasks(args.tasks, desc.gpus_per_node or 0))
        wait_with_progress(session, len(tasks), time.monotonic(), sys.stderr)
        counts = {s.value: 0 for s in TaskState if s.final}
        for t in tasks:
            counts[t.state.value] += 1
        print("tasks: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
        for t in tasks:
            if t.state is TaskState.FAILED:
                name = t.description.name if t.description else None
                print(f"first failure: {t.uid} ({name}): {t.error}")
                break
    # Once the session is closed (the pilot's life ended): the figures `report` prints.
    print(session_metrics(session.path, by="partition" if partitions else None))
    print(f"report: pilotfish report {session.path}")
    return 0 if counts["DONE"] == len(tasks) else 1


def cmd_report(args: argparse.Namespace) -> int:
    from .journal import UnreadableJournal
    from .metrics import session_metrics
    from .report import render_report

    try:
        if args.json:
            metrics = session_metrics(args.session_dir)
            print(json.dumps(metrics.to_dict(), indent=2))  # type: ignore[union-attr]
            return 0
        print(render_report(args.session_dir))
        if args.html:
            from .htmlreport import write_html_report

            print(f"HTML report: {write_html_report(args.session_dir, args.html)}")
        if args.trace:
            from .trace import write_trace

            print(f"trace (open in https://ui.perfetto.dev or chrome://tracing): "
                  f"{write_trace(args.session_dir, args.trace)}")
    except UnreadableJournal as exc:
        print(f"pilotfish report: {exc}", file=sys.stderr)
        return 2
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from rich.console import Console

    from .journal import UnreadableJournal
    from .status import find_sessions, read_status, render_status, watch

    where = args.session
    if where is None:
        found = find_sessions(args.sessions)
        if not found:
            print(f"pilotfish status: no sessions in {args.sessions}", file=sys.stderr)
            return 2
        where = str(found[-1])  # the newest
    console = Console()
    try:
        if args.watch:
            watch(where, args.interval, console)
        else:
            console.print(render_status(read_status(where)))
    except UnreadableJournal as exc:
        print(f"pilotfish status: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


def cmd_sessions(args: argparse.Namespace) -> int:
    from rich.console import Console

    from .journal import UnreadableJournal
    from .status import find_sessions, read_status, render_sessions

    statuses = []
    for path in find_sessions(args.sessions):
        try:
            statuses.append(read_status(path))
        except UnreadableJournal:
            continue  # (not a journal any more, or not yet one)
    Console().print(render_sessions(statuses))
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from .simulate import run_simulation, via_text

    what = "the campaign's" if args.workload == "campaign" else f"{args.tasks:,} {args.workload}"
    print(f"simulating {what} tasks on {args.nodes:,} {args.platform} node(s), "
          f"{via_text(args.via, args.instances)}", flush=True)
    try:
        result = run_simulation(args.platform, args.nodes, args.workload, args.tasks,
                                duration=args.duration, seed=args.seed, sessions=args.sessions,
                                via=args.via, instances=args.instances)
    except InvalidDescription as exc:  # an unknown platform, ...: before anything ran
        print(f"pilotfish simulate: {exc}", file=sys.stderr)
        return 2
    print("\n".join(result.lines()))
    return 0 if result.metrics.n_done == result.tasks else 1


def cmd_bench(args: argparse.Namespace) -> int:
    from rich.console import Console

    from .bench.paper import run_paper, tables

    console = Console()
    figures, meta = run_paper(args.quick, args.where, args.nodes, args.html, args.json,
                              log=lambda line: console.print(line, highlight=False))
    for table in tables(figures):
        console.print(table)
    for line in meta["assumptions"]:
        console.print(f"simulated: {line}", highlight=False)
    for line in meta["skipped"]:
        console.print(f"not run: {line}", highlight=False)
    console.print(f"wrote {args.html} and {args.json}", highlight=False)
    return 0 if figures else 1


def cmd_platforms(args: argparse.Namespace) -> int:
    from .platforms import available_platforms, platform_to_toml

    known = available_platforms()
    if args.action == "show" and not args.name:
        print("pilotfish platforms show: which one? known: " + ", ".join(sorted(known)),
              file=sys.stderr)
        return 2
    if args.action == "show":
        if args.name not in known:
            print(f"pilotfish platforms: unknown platform {args.name!r}; known: "
                  f"{', '.join(sorted(known))}", file=sys.stderr)
            return 2
        print(platform_to_toml(known[args.name]), end="")
        return 0
    rows = [("name", "cores per node", "GPUs", "memory", "launcher", "batch", "profile")]
    for p in sorted(known.values(), key=lambda p: p.name):
        cores = f"{len(p.usable_cores)}"
        if p.blocked_cores:
            cores += f" ({p.cores_per_node}, {len(p.blocked_cores)} blocked)"
        cores += f" x SMT{p.threads_per_core}"
        gpus = f"{p.gpus_per_node} {p.gpu_kind}" if p.gpus_per_node else "-"
        rows.append((p.name, cores, gpus, f"{p.mem_per_node / 1024:,.0f} GiB", p.launcher,
                     p.batch_system, p.source))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(f"{c:<{w}}" for c, w in zip(row, widths, strict=False)) + "  " + row[-1])
    return 0


def cmd_backends(args: argparse.Namespace) -> int:
    from .backends import registry

    rows = [("name", "here", "runs", "summary")]
    for entry in registry.entries():
        a = entry.abilities
        runs = [kind for kind, can in (("executables", a.executables),
                                       ("functions", a.functions),
                                       ("multi-rank", a.multi_rank), ("GPUs", a.gpus),
                                       ("shared-GPUs", a.shared_gpus)) if can]
        why = entry.unavailable()
        rows.append((entry.name, "yes" if why is None else "no", ",".join(runs),
                     entry.summary + ("" if why is None else f" [cannot run here: {why}]")))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for row in rows:
        print("  ".join(f"{c:<{w}}" for c, w in zip(row, widths, strict=False)) + "  " + row[-1])
    return 0


def positive(text: str) -> int:
    """An argparse type: an int >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def add_sessions_option(parser: argparse.ArgumentParser) -> None:
    """`--sessions`: where session directories are (made, or looked for)."""
    parser.add_argument("--sessions", default=os.environ.get("PILOTFISH_SESSIONS")
                        or "pilotfish-sessions",
                        help="the sessions folder (default: $PILOTFISH_SESSIONS, else "
                             "./pilotfish-sessions)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pilotfish", description=__doc__)
    parser.add_argument("--version", action="version",
                        version=f"%(prog)s {importlib.metadata.version('pilotfish')}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the demo workload on a pilot (local by default)")
    run.add_argument("--platform", default="local",
                     help="platform profile (default local: virtual nodes); on a Slurm one "
                          "(slurm-local, frontier, ...), a batch pilot from a login node, or "
                          "the allocation it runs in (salloc --exclusive)")
    run.add_argument("--nodes", type=positive, help="nodes (default: 2 virtual ones; a batch "
                                               "pilot 1; in an allocation, all of it)")
    run.add_argument("--cores", type=positive, help="cores per node (default 16, or the "
                                               "platform's)")
    run.add_argument("--gpus", type=int, help="GPUs per node (default 4, or the platform's)")
    run.add_argument("--runtime", type=float, help="seconds (a batch pilot's time limit)")
    run.add_argument("--tasks", type=positive, default=2000, help="number of tasks (default 2000)")
    run.add_argument("--partitions", metavar="BACKEND[:NODES],...",
                     help="split the pilot, e.g. dragon:1,builtin (metrics then by partition)")
    add_sessions_option(run)
    run.set_defaults(func=cmd_run)
    sim = sub.add_parser("simulate", help="run a workload on a simulated pilot (no tasks run)")
    sim.add_argument("--platform", default="frontier", help="platform profile (default frontier)")
    sim.add_argument("--nodes", type=positive, default=9408, help="nodes (default 9408)")
    sim.add_argument("--workload", default="hybrid",
                     choices=["null", "sleep", "hybrid", "campaign"],
                     help="null: 1-core 0 s tasks; sleep: 1-core tasks of --duration s; "
                          "hybrid: an IMPECCABLE-like mix (default); campaign: the "
                          "IMPECCABLE-like campaign's stages, in order, sized to the nodes "
                          "(--tasks unused)")
    sim.add_argument("--tasks", type=positive, default=100_000, help="number of tasks")
    sim.add_argument("--duration", type=float, default=10.0, help="sleep workload: seconds")
    sim.add_argument("--seed", type=int, default=0, help="hybrid workload: random seed")
    sim.add_argument("--via", choices=["pilot", "srun", "flux", "flux+dragon"],
                     default="pilot",
                     help="how tasks start: by the pilot's agent (default), each as an srun "
                          "job step or a Flux job (models: backends/simulated.py), or Flux "
                          "jobs and Dragon functions (half of the tasks each)")
    sim.add_argument("--instances", type=positive, default=1,
                     help="Flux instances (--via flux, flux+dragon; default 1)")
    add_sessions_option(sim)
    sim.set_defaults(func=cmd_simulate)
    bench = sub.add_parser("bench", help="run the paper's experiments beside its figures")
    bench.add_argument("experiments", choices=["paper"], help="paper: the work pilotfish "
                       "comes from (on the local cluster if Slurm is here, and simulated)")
    bench.add_argument("--quick", action="store_true", help="short runs (a few minutes)")
    bench.add_argument("--where", choices=["both", "cluster", "simulated"], default="both",
                       help="the local Slurm cluster (real), simulated Frontier, or both")
    bench.add_argument("--nodes", type=positive, default=None,
                       help="simulated Frontier nodes (default 1024; 256 with --quick)")
    bench.add_argument("--html", default="pilotfish-paper.html", metavar="FILE",
                       help="the report (default pilotfish-paper.html)")
    bench.add_argument("--json", default="pilotfish-paper.json", metavar="FILE",
                       help="every figure (default pilotfish-paper.json)")
    bench.set_defaults(func=cmd_bench)
    platforms = sub.add_parser("platforms", help="list the platform profiles, or show one")
    platforms.add_argument("action", nargs="?", choices=["list", "show"], default="list")
    platforms.add_argument("name", nargs="?", help="the profile to show")
    platforms.set_defaults(func=cmd_platforms)
    backends = sub.add_parser("backends", help="list the backends, what they run, and "
                                               "whether they can run here")
    backends.set_defaults(func=cmd_backends)
    status = sub.add_parser("status", help="a session's pilots, tasks, rates and "
                                           "utilization, from its journal")
    status.add_argument("session", nargs="?", help="its directory (default: the newest "
                                                   "in the sessions folder)")
    status.add_argument("--watch", action="store_true",
                        help="refresh in place until the session ends (Ctrl-C stops)")
    status.add_argument("--interval", type=float, default=1.0, help="seconds between looks")
    add_sessions_option(status)
    status.set_defaults(func=cmd_status)
    sessions = sub.add_parser("sessions", help="the sessions in the sessions folder, with "
                                               "their state and task counts")
    add_sessions_option(sessions)
    sessions.set_defaults(func=cmd_sessions)
    report = sub.add_parser("report", help="metrics and charts of a finished session")
    report.add_argument("session_dir")
    report.add_argument("--json", action="store_true", help="metrics as JSON")
    report.add_argument("--html", metavar="FILE",
                        help="also write an interactive HTML report (one file, no network)")
    report.add_argument("--trace", metavar="FILE",
                        help="also write the tasks as a Chrome trace (Perfetto): a track "
                             "per node and core")
    report.set_defaults(func=cmd_report)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
