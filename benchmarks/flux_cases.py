"""The Flux cases: a Flux partition against the same Flux instance driven by a plain script.

`python benchmarks/flux_cases.py [--runs 3] [CASE ...]`. Each run of f1 and f3 has two
halves, each in a fresh Flux instance on this host given 64 virtual cores (a resource
set, as a pilot's Flux partition gets), running this file again inside it (`--inside
CASE --half ...`): a plain script submits the jobs straight to the instance (bulk
`submit_async`, one `JournalConsumer` following them to their end, output to files); a
pilot whose one Flux partition attaches to the instance (`FLUX_URI`) runs the same tasks.
The halves take turns going first (one instance for both favoured the first: the second
ran 3-5% slower, whichever it was). We print each run, the medians and the same-run
ratios. Cases:

  f1   2,000 `/bin/true`: tasks/s from the first submit to the last end. Target:
       pilotfish >= 90% of the plain script.
  f3   1,024 `sleep 1` on the 64 cores: utilization over the execution window (first
       start to last end, Flux's own start and finish times for both). Target: pilotfish
       >= 0.98 of the plain script's.
  lift (no outer instance: each pilot starts its own) 1,024 one-second tasks on a local
       pilot of 4 x 16 cores, its whole utilization: one Flux instance over the 64 cores
       (`sleep 1`); four (one per node); Flux on 2 nodes for the 512 `sleep 1` and Dragon
       on 2 for 512 `time.sleep(1)` functions (routed by kind); the built-in backend alone.

Needs Flux (../shared/flux/install-flux.sh) and `pip install 'pilotfish[flux]'`.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
import time

import pilotfish as pf
from pilotfish.backends.flux import flux_command, unavailable
from pilotfish.backends.flux.backend import Resources, resource_config
from pilotfish.bench.apart import case_parser, report, result, run_apart
from pilotfish.metrics import compute_metrics, load

CORES = 64
TD = pf.TaskDescription


def plain_script(tmp: str, command: list[str], n: int) -> tuple[float, float]:
    """The jobs submitted straight to the instance: (seconds, utilization)."""
    import flux
    import flux.job

    handle = flux.Flux()
    spec = flux.job.JobspecV1.from_command(command, num_tasks=1, cores_per_task=1,
                                           environment={"PATH": os.environ["PATH"]},
                                           cwd=tmp, output=f"{tmp}/{{{{id}}}}.out",
                                           error=f"{tmp}/{{{{id}}}}.err")
    spec.setattr_shell_option("cpu-affinity", "off")  # (virtual cores)
    consumer = flux.job.JournalConsumer(handle).start()
    start = time.perf_counter()
    futures = [flux.job.submit_async(handle, spec) for _ in range(n)]
    pending = {int(f.get_id()) for f in futures}
    spans: dict[int, list[float]] = {}
    while pending:
        event = consumer.poll(timeout=600)
        if event is None or int(event.jobid) not in pending:
            continue
        if event.name == "start":
            spans[int(event.jobid)] = [event.timestamp]
        elif event.name == "finish":
            assert event.context.get("status") == 0, event.context
            spans[int(event.jobid)].append(event.timestamp)
        elif event.name == "clean":
            pending.discard(int(event.jobid))
    seconds = time.perf_counter() - start
    consumer.stop()
    busy = sum(end - begin for begin, end in spans.values())
    window = max(e for _, e in spans.values()) - min(b for b, _ in spans.values())
    return seconds, busy / (CORES * window)


def through_pilotfish(tmp: str, command: list[str], n: int) -> tuple[float, float]:
    """The same tasks through a pilot's Flux partition on this instance."""
    with pf.Session(path=tmp) as session:
        session.start_pilot(pf.PilotDescription(
            nodes=1, cores_per_node=CORES, partitions=[pf.PartitionSpec(backend="flux")]))
        start = time.perf_counter()
        tasks = session.submit([TD(executable=command[0], arguments=command[1:])
                                for _ in range(n)])
        assert session.wait(timeout=900)
        seconds = time.perf_counter() - start
        bad = [t.error for t in tasks if t.state is not pf.TaskState.DONE]
        assert not bad, bad[:3]
        utilization = session.metrics().core_utilization
    return seconds, utilization or 0.0


# A case's two halves, each in a fresh instance: (command, tasks, the figure from
# (seconds, utilization)). One instance for both halves would favour the first: the
# second ran 3-5% slower whichever it was, even with the first's jobs purged.
HALVES = {
    "f1": (["/bin/true"], 2_000, lambda n, seconds, _: n / seconds),
    "f3": (["/bin/sleep", "1"], 1_024, lambda n, _, utilization: 100 * utilization),
}


def inside_half(tmp: str, case: str, half: str) -> dict[str, float]:
    command, n, figure = HALVES[case]
    if half == "plain script":
        os.makedirs(f"{tmp}/plain")
        seconds, utilization = plain_script(f"{tmp}/plain", command, n)
    else:
        seconds, utilization = through_pilotfish(f"{tmp}/ours", command, n)
    return {half: figure(n, seconds, utilization)}


def _utilization(tmp: str, partitions: list[pf.PartitionSpec],
                 tasks: list[pf.TaskDescription], workers: int | None = None) -> float:
    """A pilot of 4 x 16 cores, started and warmed up (a task in each partition), runs
    `tasks`: its core utilization over their execution window, in %."""
    with pf.Session(path=tmp) as session:
        pilot = session.start_pilot(pf.PilotDescription(
            nodes=4, cores_per_node=CORES // 4, partitions=partitions,
            function_workers=workers))
        warm = [TD(function=abs, args=(1,), partition=p.name) if p.backend == "dragon"
                else TD(executable="/bin/true", partition=p.name)
                for p in pilot.description.layout]
        session.submit(warm)
        assert session.wait(timeout=120)
        begin = time.time()
        done = session.submit(tasks)
        assert session.wait(done, timeout=600)
        bad = [t.error for t in done if t.state is not pf.TaskState.DONE]
        assert not bad, bad[:3]
        session.journal.flush()
        data = load(session.path)
        ours = [t for t in data.tasks if (t.submit or 0.0) >= begin]
        return 100 * (compute_metrics(ours, data.pilots, data.last_event).core_utilization
                      or 0.0)


def outside_lift(tmp: str, n: int = 1_024) -> dict[str, float]:
    PS = pf.PartitionSpec
    sleeps = [TD(executable="/bin/sleep", arguments=["1"]) for _ in range(n)]
    mixed = sleeps[:n // 2] + [TD(function=time.sleep, args=(1,)) for _ in range(n // 2)]
    return {
        "flux x1": _utilization(f"{tmp}/x1", [PS(backend="flux")], sleeps),
        "flux x4": _utilization(f"{tmp}/x4", [PS(backend="flux", instances=4)], sleeps),
        # (A function worker per core: `time.sleep` takes no CPU.)
        "flux+dragon": _utilization(f"{tmp}/fd", [PS(backend="flux", nodes=2),
                                                  PS(backend="dragon", nodes=2)], mixed,
                                    workers=CORES // 4),
        "builtin": _utilization(f"{tmp}/b", [PS(backend="builtin")], sleeps),
    }


UNITS = {"f1": "tasks/s", "f3": "% utilization", "lift": "% utilization"}


def main() -> None:
    parser = case_parser(__doc__, UNITS)
    parser.add_argument("--half", help=argparse.SUPPRESS)
    args = parser.parse_args()
    why = unavailable()  # (and the install's bindings on sys.path)
    if args.inside:
        with tempfile.TemporaryDirectory(prefix="pilotfish-bench-") as tmp:
            result(outside_lift(tmp) if args.inside == "lift"
                   else inside_half(tmp, args.inside, args.half))
        return
    flux = flux_command()
    if why is not None or flux is None:
        sys.exit(f"no Flux here: {why}")
    for name in args.cases or list(UNITS):
        runs = []
        if name == "lift":  # runs here (each of its pilots starts its own instances)
            for _ in range(args.runs):
                runs.append(run_apart([sys.executable, __file__, "--inside", name], name))
            report(name, runs, UNITS[name], lambda r: r["flux+dragon"] / r["flux x1"],
                   "x one Flux instance (Flux + Dragon)")
            continue
        for i in range(args.runs):
            halves = ["pilotfish", "plain script"][::1 if i % 2 else -1]  # in turn first
            run: dict[str, float] = {}
            for half in halves:
                with tempfile.TemporaryDirectory(prefix="pilotfish-flux-") as where:
                    config = resource_config(flux, Resources((socket.gethostname(),), CORES,
                                                             0), where)
                    run.update(run_apart([flux, "start", f"-o,--config-path={config}",
                                          sys.executable, __file__, "--inside", name,
                                          "--half", half], name))
            runs.append({k: run[k] for k in ("pilotfish", "plain script")})
        report(name, runs, UNITS[name], lambda r: r["pilotfish"] / r["plain script"],
               "x the plain script")


if __name__ == "__main__":
    main()
