"""`pilotfish bench paper`: the paper's experiments, beside the paper's figures.

The work pilotfish comes from (Merzky et al., "Integrating and Characterizing HPC Task
Runtime Systems for hybrid AI-HPC workloads", 2025) measured on Frontier: srun peaks at
152 tasks/s at under 50% utilization; RP + Flux about 700 tasks/s with one instance, 930
with several; RP + Flux + Dragon over 1,500 tasks/s at over 99.6% utilization; the
IMPECCABLE.v2 campaign 30-60% shorter and over 4x the throughput of srun on up to 1,024
nodes. This runs the same experiments in two places:

* **the local cluster** (real: a 4-node Slurm allocation, `bench.cluster`), when Slurm is
  here: srun, pilotfish's built-in backend, Flux (1 and 4 instances), Flux + Dragon, and
  the campaign against a plain srun driver;
* **simulated Frontier** (`pilotfish simulate`'s pilot: the real agent, a simulated
  backend): srun and Flux launches are models (`backends/simulated.py`: their rates and
  latencies, and where they come from, are printed with the figures); the built-in
  backend's rate is the agent's own, measured here (decisions per busy second).

Compare ratios, not rates: 2 shared CPUs here, 56-core nodes there.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..backends.simulated import FLUX, SRUN
from ..simulate import run_simulation, via_text
from ..workloads.campaign import Campaign
from .apart import run_apart
from .cluster import SALLOC, STEP_LATENCY, utilization_tasks

CLUSTER = "local cluster (real, 4 nodes)"
# The paper's figures (Frontier), by experiment and system
PAPER = {
    ("throughput", "srun"): "152 tasks/s at most",
    ("throughput", "flux x1"): "about 700 tasks/s (RP + Flux, one instance)",
    ("throughput", "flux xk"): "930 tasks/s (RP + Flux, several instances)",
    ("throughput", "flux + dragon"): "over 1,500 tasks/s (RP + Flux + Dragon)",
    ("utilization", "srun"): "under 50%",
    ("utilization", "flux + dragon"): "over 99.6%",
    ("campaign makespan", "vs srun"): "30-60% shorter (RP + Flux, up to 1,024 nodes)",
    ("campaign throughput", "vs srun"): "over 4x (RP + Flux)",
    ("campaign throughput", "vs srun (peak)"): "over 4x (RP + Flux)",
}
# ... and as numbers, drawn beside the bars
PAPER_VALUES = {("throughput", "srun"): 152.0, ("throughput", "flux x1"): 700.0,
                ("throughput", "flux xk"): 930.0, ("throughput", "flux + dragon"): 1500.0,
                ("utilization", "srun"): 50.0, ("utilization", "flux + dragon"): 99.6}
EXPERIMENTS = ("throughput", "utilization", "campaign makespan", "campaign throughput",
               "srun model check")


@dataclass(frozen=True)
class Figure:
    experiment: str  # one of EXPERIMENTS
    place: str  # CLUSTER or "simulated Frontier, N nodes"
    system: str  # "srun", "pilotfish built-in", "flux x1", "flux x4", ..., "vs srun"
    value: float
    unit: str  # "tasks/s", "%", "s", "x", "% shorter"
    paper: str = ""  # the paper's figure for this experiment and system, if it has one
    note: str = ""
    paper_value: float | None = None  # that figure as a number, where it is one


def _fig(experiment: str, place: str, system: str, value: float, unit: str, k: int = 4,
         note: str = "") -> Figure:
    key = (experiment, "flux xk" if system == f"flux x{k}" and k > 1 else system)
    return Figure(experiment, place, system, value, unit, PAPER.get(key, ""), note,
                  PAPER_VALUES.get(key))


AVERAGE = "tasks started / (last start - first start)"
PEAK = "the most tasks started in any second"


def _versus(place: str, ours: str, makespans: dict[str, float], rates: dict[str, float],
            peaks: dict[str, float]) -> list[Figure]:
    """The campaign's figures: each system's makespan and throughput (average and peak:
    the paper does not say which it means), then `ours` against srun."""
    out = [_fig("campaign makespan", place, s, v, "s") for s, v in makespans.items()]
    out += [_fig("campaign throughput", place, s, v, "tasks/s", note=AVERAGE)
            for s, v in rates.items()]
    out += [_fig("campaign throughput", place, f"{s} (peak)", v, "tasks/s", note=PEAK)
            for s, v in peaks.items()]
    if "srun" in makespans and ours in makespans:
        shorter = 100 * (1 - makespans[ours] / makespans["srun"])
        out.append(_fig("campaign makespan", place, "vs srun", shorter, "% shorter",
                        note=f"{ours} against srun"))
        out.append(_fig("campaign throughput", place, "vs srun", rates[ours] / rates["srun"],
                        "x", note=f"{ours} against srun: {AVERAGE}"))
        out.append(_fig("campaign throughput", place, "vs srun (peak)",
                        peaks[ours] / peaks["srun"], "x", note=f"{ours} against srun: {PEAK}"))
    return out


# -- simulated Frontier ---------------------------------------------------------------

def _place(nodes: int) -> str:
    return f"simulated Frontier, {nodes:,} nodes"


def simulated(nodes: int, quick: bool, sessions: str, k: int = 4,
              log: Callable[[str], None] = print) -> list[Figure]:
    """Throughput and utilization on `nodes`; the campaign there (and, unless `quick`,
    on a quarter of them too: srun's cost grows with the machine, the paper's range
    spans sizes)."""
    place = _place(nodes)
    cores = nodes * 56
    out: list[Figure] = []

    def sim(workload: str, via: str, tasks: int = 0, size: int = nodes, **kw: Any) -> Any:
        log(f"  {_place(size)}: {workload}, {via_text(via, kw.get('instances', 1))}")
        return run_simulation("frontier", size, workload, tasks, sessions=sessions,
                              progress=False, via=via, **kw)

    vias = [("srun", "srun", {}), ("pilotfish built-in", "pilot", {}),
            ("flux x1", "flux", {}), (f"flux x{k}", "flux", {"instances": k}),
            ("flux + dragon", "flux+dragon", {"instances": k})]
    n = 10_000 if quick else 50_000
    for system, via, kw in vias:  # 0 s tasks: the launch rate alone. The pilot's own
        r = sim("null", via, n, **kw)  # rate is its agent's (its clock is held while the
        if via == "pilot":  # client submits); the launch models bind the others.
            value, note = r.decisions_per_s, "the agent's decisions per busy second"
        else:
            value, note = n / (r.metrics.exec_window_s or 1e-9), "tasks / execution window"
        out.append(_fig("throughput", place, system, value, "tasks/s", k, note))
    for system, via, kw in vias:  # two waves of 60 s tasks over every core
        r = sim("sleep", via, 2 * cores, duration=60.0, **kw)
        out.append(_fig("utilization", place, system, 100 * (r.metrics.core_utilization or 0),
                        "%", k, "2 waves of 60 s tasks, over the execution window"))
    for size in [nodes] if quick or nodes < 8 else [nodes // 4, nodes]:
        makespans, rates, peaks = {}, {}, {}
        for system, via, kw in [vias[0], vias[1], vias[3]]:
            r = sim("campaign", via, size=size, campaign=Campaign.paper(size), **kw)
            makespans[system] = r.metrics.makespan_s or 0.0
            rates[system] = r.metrics.started_per_s or 0.0
            peaks[system] = r.metrics.peak_started_per_s or 0.0
        out += _versus(_place(size), "pilotfish built-in", makespans, rates, peaks)
    return out


def model_assumptions(nodes: int) -> list[str]:
    c = Campaign.paper(nodes)
    return [
        f"srun: one slurmctld admits at most {SRUN.rate:.0f} job steps a second (the paper's "
        f"Frontier peak), each starting {SRUN.latency * 1000:.0f} ms after admission (one "
        "step of `true` alone on the local cluster); a step holds its cores from placement.",
        f"Flux: each instance admits {FLUX.rate:.0f} jobs a second (the paper's one-instance "
        f"figure), each starting {FLUX.latency * 1000:.0f} ms later (submit to run of one "
        "job in a local instance); instances admit apart.",
        "pilotfish built-in and Dragon functions: started by the agent at once; its real "
        "cost on this machine (2 CPUs) flows into the simulated clock.",
        f"Campaign (Campaign.paper, sized to the machine; on {nodes:,} nodes): 2 iterations "
        f"of {c.docking:,} docking tasks of {c.docking_s:g} s (1 core: two waves of the "
        f"cores), a training of {c.training_s:g} s ({c.training_ranks} GPUs), "
        f"{c.inference:,} inference calls of {c.inference_s:g} s (8 a GPU), "
        f"{c.simulations} simulations of {c.simulation_s:g} s ({c.simulation_nodes} nodes, "
        f"a rank a GPU), a selection of {c.selection_s:g} s; through srun and Flux the "
        f"calls are `python -c` executables. Throughput: {AVERAGE}, and {PEAK}.",
    ]


# -- the local cluster ----------------------------------------------------------------

def cluster_unavailable() -> str | None:
    """Why the local cluster's experiments cannot run here, or None."""
    if not shutil.which("salloc"):
        return "no Slurm here (salloc not found); ../shared/slurm/start-local-slurm.sh starts one"
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%D %t"], capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"sinfo failed: {exc}"
    idle = sum(int(line.split()[0]) for line in out.stdout.splitlines()
               if line.split()[1:] in (["idle"], ["mix"]))
    if out.returncode or idle < 4:
        return f"Slurm has {idle} idle node(s); the experiments need 4"
    return None


def cluster_figures(case: str, r: dict[str, float]) -> list[Figure]:
    """A `bench.cluster` case's figures."""
    names = {"pilotfish": "pilotfish built-in", "srun driver": "srun",
             "srun backend": "pilotfish srun backend"}
    if case in ("throughput", "flux"):  # (flux's srun driver repeats throughput's)
        return [_fig("throughput", CLUSTER, names.get(s, s), v, "tasks/s")
                for s, v in r.items() if s != STEP_LATENCY
                and (case == "throughput" or s != "srun driver")]
    if case == "utilization":
        return [_fig("utilization", CLUSTER, names.get(s, s), v, "%") for s, v in r.items()]
    who = {"srun": "srun", "pilotfish built-in": "pilotfish",
           "pilotfish flux + dragon + built-in": "partitions"}
    who = {s: k for s, k in who.items() if f"{k} makespan" in r}
    return _versus(CLUSTER, "pilotfish built-in",
                   *({s: r[f"{k} {figure}"] for s, k in who.items()}
                     for figure in ("makespan", "tasks/s", "peak tasks/s")))


def on_cluster(quick: bool, sessions: str, log: Callable[[str], None] = print
               ) -> list[Figure]:
    out: list[Figure] = []
    runs = {}
    for case in ("throughput", "utilization", "flux", "campaign"):
        log(f"  {CLUSTER}: {case} (salloc -N4)")
        runs[case] = run_apart([*SALLOC, sys.executable, "-m", "pilotfish.bench.cluster",
                                case, *(["--quick"] * quick)], case, timeout=1800)
        out += cluster_figures(case, runs[case])
    return out + srun_model_check(runs["throughput"], runs["utilization"], quick, sessions, log)


def srun_model_check(throughput: dict[str, float], utilization: dict[str, float],
                     quick: bool, sessions: str, log: Callable[[str], None] = print
                     ) -> list[Figure]:
    """The srun model, given this cluster's own step latency (one step alone) and rate
    (the driver's `true` steps a second), predicts the driver's utilization in the
    utilization case (its `sleep 1` tasks on the same 64 cores): the model's shape
    checked against a real run, before it is used at Frontier's scale with the
    paper's rate."""
    latency, rate = throughput[STEP_LATENCY], throughput["srun driver"]
    n = utilization_tasks(quick)
    log(f"  the srun model with this cluster's latency {latency * 1000:.0f} ms and rate "
        f"{rate:.1f}/s: {n} `sleep 1` on a simulated 4 x 16-core pilot")
    r = run_simulation("slurm-local", 4, "sleep", n, duration=1.0, sessions=sessions,
                       progress=False, via="srun", launch=(latency, rate))
    place = "local cluster: measured and modelled"
    note = f"srun model: {latency * 1000:.0f} ms a step, {rate:.1f} steps/s (measured here)"
    return [_fig("srun model check", place, "srun driver (measured)",
                 utilization["srun driver"], "%"),
            _fig("srun model check", place, "srun model (simulated)",
                 100 * (r.metrics.core_utilization or 0.0), "%", note=note)]


# -- output ---------------------------------------------------------------------------

def _value(f: Figure) -> str:
    if f.unit in ("%", "% shorter"):
        return f"{f.value:.2f}{f.unit}" if f.unit == "%" else f"{f.value:.0f}{f.unit}"
    if f.unit == "x":
        return f"{f.value:.2f}x"
    return f"{f.value:,.1f} {f.unit}"


def tables(figures: Sequence[Figure]) -> list[Any]:
    """A table an experiment, for a terminal (the notes are in the JSON and the page)."""
    from rich.table import Table

    out = []
    for experiment in EXPERIMENTS:
        rows = [f for f in figures if f.experiment == experiment]
        if not rows:
            continue
        t = Table(title=experiment, title_justify="left")
        for name in ("where", "system", "measured", "the paper (Frontier)"):
            t.add_column(name)
        for f in rows:
            t.add_row(f.place, f.system, _value(f), f.paper)
        out.append(t)
    return out


def write_json(path: Path, figures: Sequence[Figure], meta: dict[str, Any]) -> None:
    path.write_text(json.dumps({**meta, "figures": [dataclasses.asdict(f) for f in figures]},
                               indent=1) + "\n")


def write_html(path: Path, figures: Sequence[Figure], meta: dict[str, Any]) -> None:
    """One self-contained page: a bar chart a experiment and place, the paper's figure
    in each bar's hover and in the table, and what is simulated."""
    import html

    from bokeh.embed import file_html
    from bokeh.layouts import column
    from bokeh.models.ranges import FactorRange
    from bokeh.models.sources import ColumnDataSource
    from bokeh.models.tools import HoverTool
    from bokeh.models.widgets.markups import Div
    from bokeh.plotting import figure
    from bokeh.resources import INLINE

    about = html.escape(meta["about"])
    parts: list[Any] = [Div(text=f"<h1>pilotfish beside the paper</h1><p>{about}</p>")]
    places = list(dict.fromkeys(f.place for f in figures))
    for experiment in EXPERIMENTS:
        for place in places:
            group = [f for f in figures if f.experiment == experiment and f.place == place
                     and f.unit not in ("x", "% shorter")]
            if not group:
                continue
            src = ColumnDataSource({"system": [f.system for f in group],
                                    "value": [f.value for f in group],
                                    "text": [_value(f) for f in group],
                                    "paper": [f.paper or "-" for f in group]})
            log_axis = experiment.endswith("throughput")
            p = figure(x_range=FactorRange(factors=[f.system for f in group]), height=300,
                       width=900, title=f"{experiment}: {place}",
                       y_axis_type="log" if log_axis else "linear", toolbar_location=None)
            p.vbar(x="system", top="value", bottom=1 if log_axis else 0, width=0.7,
                   source=src, color="#1f77b4", legend_label="measured")
            marked = [(f.system, f.paper_value) for f in group if f.paper_value is not None]
            if marked:
                p.scatter([s for s, _ in marked], [v for _, v in marked],
                          marker="diamond", size=14, color="#d62728",
                          legend_label="the paper (Frontier)")
            p.add_tools(HoverTool(tooltips=[("system", "@system"), ("measured", "@text"),
                                            ("the paper", "@paper")]))
            p.yaxis.axis_label = group[0].unit
            p.xaxis.major_label_orientation = 0.5
            p.add_layout(p.legend[0], "right")  # (beside the bars, not over them)
            parts.append(p)
    rows = "".join(f"<tr><td>{html.escape(f.experiment)}</td><td>{html.escape(f.place)}</td>"
                   f"<td>{html.escape(f.system)}</td><td>{html.escape(_value(f))}</td>"
                   f"<td>{html.escape(f.paper)}</td><td>{html.escape(f.note)}</td></tr>"
                   for f in figures)
    notes = "".join(f"<li>{html.escape(a)}</li>" for a in meta["assumptions"])
    skipped = "".join(f"<li>{html.escape(s)}</li>" for s in meta["skipped"])
    parts.append(Div(text="<h2>Every figure</h2><table border=1 cellpadding=3><tr>"
                     "<th>experiment</th><th>where</th><th>system</th><th>measured</th>"
                     f"<th>the paper</th><th>note</th></tr>{rows}</table>"
                     f"<h2>What is simulated</h2><ul>{notes}</ul>"
                     + (f"<h2>Not run</h2><ul>{skipped}</ul>" if skipped else "")))
    path.write_text(file_html(column(*parts), INLINE, "pilotfish beside the paper"))


def run_paper(quick: bool = False, where: str = "both", nodes: int | None = None,
              html_path: str | None = None, json_path: str | None = None,
              log: Callable[[str], None] = print) -> tuple[list[Figure], dict[str, Any]]:
    """Run the experiments; write the JSON and the HTML page where asked."""
    nodes = nodes or (256 if quick else 1024)
    figures: list[Figure] = []
    skipped: list[str] = []
    if where in ("both", "cluster"):
        why = cluster_unavailable()
        if why is None:
            with tempfile.TemporaryDirectory(prefix="pilotfish-paper-") as sessions:
                figures += on_cluster(quick, sessions, log)
        else:
            skipped.append(f"{CLUSTER}: {why}")
    if where in ("both", "simulated"):
        with tempfile.TemporaryDirectory(prefix="pilotfish-paper-") as sessions:
            figures += simulated(nodes, quick, sessions, log=log)
    meta = {"about": __doc__.split("\n\n")[1].replace("\n", " ") if __doc__ else "",
            "when": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "host": platform.node(), "cpus": os.cpu_count(), "quick": quick,
            "assumptions": model_assumptions(nodes) if where != "cluster" else [],
            "skipped": skipped}
    if json_path:
        write_json(Path(json_path), figures, meta)
    if html_path:
        write_html(Path(html_path), figures, meta)
    return figures, meta
