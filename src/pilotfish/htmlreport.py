"""`pilotfish report --html`: one self-contained, interactive HTML file made with Bokeh.

Bokeh (chosen as Dask's performance report uses it: well kept, zoomable plots, and a
page that embeds its JavaScript inline, so it opens without a network) draws: a task
timeline per node and core (colored by outcome, kind or partition), tasks and busy
cores and GPUs over time, utilization over time (per partition too), starts and
completions per second, the time split into phases, and failures grouped by reason.
The time axes are linked: zooming one zooms all. Tables are plain HTML around the plots.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bokeh.embed import file_html
from bokeh.layouts import column
from bokeh.models.annotations.legends import Legend, LegendItem
from bokeh.models.callbacks import CustomJS
from bokeh.models.ranges import Range1d
from bokeh.models.sources import ColumnDataSource
from bokeh.models.tickers import FixedTicker
from bokeh.models.tools import HoverTool
from bokeh.models.widgets.groups import RadioButtonGroup
from bokeh.models.widgets.markups import Div
from bokeh.palettes import Category10_10
from bokeh.plotting import figure
from bokeh.resources import INLINE

from pilotfish.journal import connect_readonly
from pilotfish.metrics import PilotRecord, grouped_metrics, time_series
from pilotfish.report import SessionReport, gather, maybe_time, pilot_rows
from pilotfish.timeline import (
    PHASE_HELP,
    PHASES,
    TaskSpan,
    bin_width,
    failures_by_reason,
    load_spans,
    phase_means,
    rate_series,
    runs,
    session_origin,
)

MAX_BOXES = 20_000  # timeline boxes drawn; past it the first ones by start, said so
SERIES_POINTS = 400  # buckets of the over-time lines
OUTCOME_COLORS = {"DONE": "#2ca02c", "FAILED": "#d62728", "CANCELED": "#7f7f7f",
                  "not final": "#ff7f0e"}
COLOR_MODES = ("outcome", "kind", "partition")
TOOLS = "xpan,xwheel_zoom,box_zoom,reset,save"

_CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222; max-width: 1400px; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
td, th { border: 1px solid #ccc; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f2f2f2; }
p.note { color: #555; max-width: 60em; }
"""

_TEMPLATE = """
{% block preamble %}<style>{{ css }}</style>{% endblock %}
{% block contents %}
<h1>pilotfish session {{ sid }}</h1>
{{ head }}
{% if not plots %}<p>No task execution recorded: no plots.</p>{% endif %}
{% for name, note in plots %}
<h2>{{ titles[name] }}</h2>
<p class="note">{{ note }}</p>
{{ embed(roots[name]) }}
{% endfor %}
{{ tail }}
{% endblock %}
"""

TITLES = {
    "timeline": "Task timeline per node and core",
    "busy": "Tasks, cores and GPUs busy over time",
    "utilization": "Utilization over time",
    "throughput": "Throughput over time",
    "phases": "Where the time went",
    "failures": "Failures by reason",
}


def write_html_report(session_dir: str | Path, out_path: str | Path) -> Path:
    """Write the report of one session as a self-contained HTML file; return its path."""
    rep = gather(session_dir)
    db = connect_readonly(session_dir)
    try:
        spans = load_spans(db)
    finally:
        db.close()
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_html(rep, spans), encoding="utf-8")
    return out


def render_html(rep: SessionReport, spans: Sequence[TaskSpan]) -> str:
    """The page: tables, then each plot with a line saying what it shows."""
    page = _Page(rep, spans)
    plots = page.plots()
    for name, (plot, _) in plots.items():
        plot.name = name
    roots = [plot for plot, _ in plots.values()]
    esc = html.escape
    return file_html(
        roots or [Div(text="")], INLINE, title=f"pilotfish session {rep.session_id}",
        template=_TEMPLATE, template_variables={
            "css": _CSS, "sid": esc(rep.session_id), "head": page.head(),
            "tail": page.tail(), "titles": TITLES,
            "plots": [(name, note) for name, (_, note) in plots.items()]})


class _Page:
    """The report's parts, from one session's journal."""

    def __init__(self, rep: SessionReport, spans: Sequence[TaskSpan]) -> None:
        self.rep, self.spans = rep, spans
        origin = session_origin(spans)
        self.t0 = origin if origin is not None else 0.0
        ends = [t for s in spans for t in (s.stop, s.final) if t is not None]
        last = max(ends, default=self.t0)
        self.t1 = max(last, self.t0 + 1e-3)
        self.x_range = Range1d(start=0.0, end=self.t1 - self.t0)

    # ---- tables -----------------------------------------------------------------------

    def head(self) -> str:
        rep = self.rep
        parts = [_table(["key", "value"], [(k, maybe_time(k, v)) for k, v in rep.info]),
                 "<h2>Pilots</h2>",
                 _table(["uid", "shape", "state", "started", "ready", "stopped"],
                        pilot_rows(rep)),
                 "<h2>Metrics</h2>", _table(["metric", "value"], rep.metrics.rows())]
        for by in ("partition", "backend"):
            groups = grouped_metrics(rep.data, by) if rep.data.partitions else {}
            if len(groups) > 1:
                parts += [f"<h2>By {by}</h2>", _table(
                    [by, "tasks", "done", "failed", "throughput (tasks/s)",
                     "core utilization", "makespan (s)"],
                    [(key, str(m.n_tasks), str(m.n_done), str(m.n_failed),
                      _fmt(m.started_per_s, 1), _fmt_pct(m.core_utilization),
                      _fmt(m.makespan_s, 3)) for key, m in groups.items()])]
        return "\n".join(parts)

    def tail(self) -> str:
        failures = failures_by_reason(self.spans)
        parts = ["<h2>Time per phase</h2>", _table(
            ["phase", "what", *(f"{g} mean (s)" for g in self._phase_groups())],
            [(name, PHASE_HELP[name],
              *(_fmt(phase_means(members)[name], 4)
                for members in self._phase_groups().values())) for name in PHASES])]
        if failures:
            parts += ["<h2>Failed tasks by reason</h2>", _table(
                ["reason", "tasks", "for example"],
                [(f.reason, str(f.tasks), ", ".join(f.examples)) for f in failures])]
        else:
            parts.append("<p>No task failed.</p>")
        return "\n".join(parts)

    # ---- plots ------------------------------------------------------------------------

    def plots(self) -> dict[str, tuple[Any, str]]:
        """name -> (Bokeh root, one line on what it shows); plots with no data are left out."""
        out: dict[str, tuple[Any, str]] = {}
        ran = [s for s in self.spans if s.start is not None]
        if ran:
            timeline = self.timeline(ran)
            if timeline is not None:
                out["timeline"] = timeline
            out["busy"] = self.busy(ran)
            out["utilization"] = self.utilization(ran)
            out["throughput"] = self.throughput()
        if any(s.phases() for s in self.spans):
            out["phases"] = self.phases()
        failures = failures_by_reason(self.spans)
        if failures:
            out["failures"] = self.failures(failures)
        return out

    def _figure(self, ylabel: str, height: int = 260) -> Any:
        """A plot on the shared time axis, its legend at the right (click: hide a line)."""
        return _figure(height=height, x_range=self.x_range, y_axis_label=ylabel,
                       x_axis_label="seconds since the first submission")

    def timeline(self, ran: Sequence[TaskSpan]) -> tuple[Any, str] | None:
        """One box per task per node and run of consecutive cores, on a row per core."""
        base, labels = self._tracks()
        boxes: dict[str, list[Any]] = {k: [] for k in (
            "left", "right", "bottom", "top", "uid", "name", "kind", "partition", "state",
            "outcome", "start", "seconds", "where", "error", *(f"color_{m}" for m in COLOR_MODES))}
        colors = {m: _palette(sorted({_mode_key(s, m) for s in ran})) for m in COLOR_MODES}
        colors["outcome"] = OUTCOME_COLORS
        unplaced = 0
        for span in sorted(ran, key=lambda s: s.start or 0.0):
            if not span.placement:
                unplaced += 1
                continue
            right = span.stop if span.stop is not None else (span.final or self.t1)
            for node, cores, gpus in span.placement:
                row = base.get((span.pilot, node))
                if row is None:
                    continue
                for first, last in runs(cores):
                    boxes["left"].append(span.start - self.t0)  # type: ignore[operator]
                    boxes["right"].append(right - self.t0)
                    boxes["bottom"].append(row + first)
                    boxes["top"].append(row + last + 1)
                    boxes["where"].append(f"{span.pilot} node {node} cores {first}-{last}"
                                          + (f", GPUs {gpus}" if gpus else ""))
                    for key in ("uid", "name", "kind", "partition", "state", "outcome"):
                        boxes[key].append(getattr(span, key) or "-")
                    boxes["start"].append(span.start - self.t0)  # type: ignore[operator]
                    boxes["seconds"].append(right - span.start)  # type: ignore[operator]
                    boxes["error"].append((span.error or "")[:200])
                    for mode in COLOR_MODES:
                        boxes[f"color_{mode}"].append(colors[mode][_mode_key(span, mode)])
            if len(boxes["left"]) >= MAX_BOXES:
                break
        if not boxes["left"]:
            return None
        boxes["color"] = list(boxes["color_outcome"])
        source = ColumnDataSource(boxes)
        tracks = max(base.values(), default=0) + self._cores_of_last()
        fig = _figure(legend=False, height=min(900, 120 + 6 * tracks), x_range=self.x_range,
                      y_axis_label="node / core", x_axis_label="seconds since the first submission")
        fig.y_range = Range1d(start=tracks, end=0)
        quads = fig.quad(left="left", right="right", bottom="bottom", top="top",
                         fill_color="color", line_color="white", line_alpha=0.7,
                         line_width=0.5, source=source)
        fig.add_tools(HoverTool(renderers=[quads], tooltips=[
            ("task", "@uid (@name)"), ("kind", "@kind"), ("partition", "@partition"),
            ("state", "@state"), ("start", "@start{0.000} s"), ("ran", "@seconds{0.000} s"),
            ("on", "@where"), ("error", "@error")]))
        ticks = sorted(labels)
        step = max(1, len(ticks) // 40)
        fig.yaxis.ticker = FixedTicker(ticks=ticks[::step])
        fig.yaxis.major_label_overrides = {t: labels[t] for t in ticks[::step]}
        legends = []
        for mode in COLOR_MODES:
            first_of: dict[str, int] = {}
            for i, key in enumerate(boxes[mode]):
                first_of.setdefault(key, i)
            items = [LegendItem(label=key, renderers=[quads], index=i)
                     for key, i in sorted(first_of.items())]
            legend = Legend(items=items, visible=mode == "outcome", title=mode,
                            location="top_right")
            fig.add_layout(legend, "right")
            legends.append(legend)
        switch = RadioButtonGroup(labels=[f"color by {m}" for m in COLOR_MODES], active=0)
        switch.js_on_change("active", CustomJS(
            args={"source": source, "legends": legends, "modes": list(COLOR_MODES)}, code="""
            const mode = modes[cb_obj.active];
            source.data["color"] = source.data["color_" + mode].slice();
            source.change.emit();
            legends.forEach((legend, i) => { legend.visible = i == cb_obj.active; });
            """))
        drawn = len({u for u in boxes["uid"]})
        note = (f"Each box is a task on the cores it held (rows: cores, grouped by node), "
                f"from its start to its end. {drawn} of {len(ran)} started tasks drawn")
        if unplaced:
            note += f"; {unplaced} had no placement journaled"
        if drawn + unplaced < len(ran):
            note += f"; the first {MAX_BOXES} boxes by start only"
        return column(switch, fig, sizing_mode="stretch_width"), note + ". Hover for details."

    def _tracks(self) -> tuple[dict[tuple[str | None, int], int], dict[int, str]]:
        """The first row of each (pilot, node) and a label at each node's first row."""
        base: dict[tuple[str | None, int], int] = {}
        labels: dict[int, str] = {}
        row = 0
        for pilot in self.rep.data.pilots:
            for node in range(pilot.nodes):
                base[(pilot.uid, node)] = row
                labels[row] = f"{pilot.uid} node {node}"
                row += pilot.cores_per_node
        return base, labels

    def _cores_of_last(self) -> int:
        return self.rep.data.pilots[-1].cores_per_node if self.rep.data.pilots else 0

    def busy(self, ran: Sequence[TaskSpan]) -> tuple[Any, str]:
        xs, series = self._series(ran, lambda s: 1.0)
        _, cores = self._series(ran, lambda s: float(s.cores))
        _, gpus = self._series(ran, lambda s: float(s.gpus))
        offered = self._offered(self.rep.data.pilots, lambda p: p.cores)
        fig = self._figure("count")
        fig.step(xs, series, mode="after", color=Category10_10[0], legend_label="tasks running")
        fig.step(xs, cores, mode="after", color=Category10_10[1], legend_label="cores busy")
        fig.step(xs, offered, mode="after", color=Category10_10[1], line_dash="dashed",
                 legend_label="cores offered")
        if any(gpus):
            fig.step(xs, gpus, mode="after", color=Category10_10[2], legend_label="GPUs busy")
        return fig, ("Averages over buckets of "
                     f"{(self.t1 - self.t0) / SERIES_POINTS:.3g} s; offered: the cores of "
                     "the pilots alive.")

    def utilization(self, ran: Sequence[TaskSpan]) -> tuple[Any, str]:
        data = self.rep.data
        fig = self._figure("% busy")
        lines = [("cores", data.pilots, ran, lambda s: float(s.cores), lambda p: p.cores)]
        if any(s.gpus for s in ran):
            lines.append(("GPUs", data.pilots, ran, lambda s: float(s.gpus), lambda p: p.gpus))
        if len({p.uid for p in data.partitions}) > 1:
            for name in sorted({p.uid for p in data.partitions}):
                lines.append((f"cores of {name}", [p for p in data.partitions if p.uid == name],
                              [s for s in ran if s.partition == name],
                              lambda s: float(s.cores), lambda p: p.cores))
        for i, (label, pilots, tasks, amount, capacity) in enumerate(lines):
            xs, used = self._series(tasks, amount)
            offered = self._offered(pilots, capacity)
            pct = [100.0 * min(1.0, u / o) if o > 0 else 0.0
                   for u, o in zip(used, offered, strict=True)]
            fig.step(xs, pct, mode="after", color=Category10_10[i % 10], legend_label=label,
                     line_width=2 if i < 2 else 1)
        fig.y_range = Range1d(start=0, end=105)
        return fig, ("Busy over offered, per bucket: the whole session, and each partition "
                     "on its own nodes where there are several.")

    def throughput(self) -> tuple[Any, str]:
        width = bin_width(self.t1 - self.t0)
        fig = self._figure("tasks per second")
        groups: list[tuple[str, Sequence[TaskSpan]]] = [("all", self.spans)]
        partitions = sorted({s.partition for s in self.spans if s.partition})
        if len(partitions) > 1:
            groups += [(p, [s for s in self.spans if s.partition == p]) for p in partitions]
        color = 0
        for name, members in groups:
            for what, times in (("starts", [s.start for s in members]),
                                ("completions", [s.final for s in members])):
                if name != "all" and what == "completions":
                    continue
                rates = rate_series([t for t in times if t is not None], self.t0, self.t1,
                                    width)
                xs = [i * width for i in range(len(rates))]
                label = what if name == "all" else f"starts in {name}"
                fig.step(xs, rates, mode="after", color=Category10_10[color % 10],
                         legend_label=label, line_width=2 if name == "all" else 1)
                color += 1
        return fig, f"Tasks started and reaching a final state per second, in bins of {width:g} s."

    def phases(self) -> tuple[Any, str]:
        groups = self._phase_groups()
        rows = list(groups)
        means = {g: phase_means(members) for g, members in groups.items()}
        data: dict[str, list[Any]] = {"group": rows}
        for name in PHASES:
            data[name] = [means[g][name] for g in rows]
        fig = _figure(height=80 + 40 * len(rows), y_range=list(reversed(rows)),
                      x_axis_label="mean seconds per task")
        fig.hbar_stack(list(PHASES), y="group", height=0.7, source=ColumnDataSource(data),
                       color=list(Category10_10[:len(PHASES)]),
                       legend_label=list(PHASES))
        fig.add_tools(HoverTool(tooltips=[("group", "@group"), *(
            (name, f"@{{{name}}}{{0.0000}} s") for name in PHASES)]))
        return fig, ("Mean time per task in each phase, for all tasks and per partition and "
                     "backend (the table below says what each phase covers).")

    def failures(self, failures: Sequence[Any]) -> tuple[Any, str]:
        shown = list(failures[:15])
        reasons = [f"{f.reason[:60]}{'...' if len(f.reason) > 60 else ''}" for f in shown]
        reasons = [f"{i + 1}. {r}" for i, r in enumerate(reasons)]  # distinct after cutting
        fig = _figure(legend=False, height=80 + 30 * len(shown), tools="save",
                      y_range=list(reversed(reasons)), x_axis_label="failed tasks")
        fig.hbar(y=reasons, right=[f.tasks for f in shown], height=0.7, color="#d62728")
        fig.x_range.start = 0
        return fig, (f"{sum(f.tasks for f in failures)} failed tasks, by the last line of "
                     "their error; the table below lists them all.")

    # ---- helpers ----------------------------------------------------------------------

    def _phase_groups(self) -> dict[str, Sequence[TaskSpan]]:
        groups: dict[str, Sequence[TaskSpan]] = {"all tasks": self.spans}
        for field, label in (("partition", "partition"), ("backend", "backend")):
            keys = sorted({getattr(s, field) for s in self.spans if getattr(s, field)})
            if len(keys) > 1:
                for key in keys:
                    groups[f"{label} {key}"] = [s for s in self.spans
                                                if getattr(s, field) == key]
        return groups

    def _series(self, spans: Sequence[TaskSpan], amount: Any) -> tuple[list[float], list[float]]:
        """Bucket starts (seconds from t0) and the time-averaged sum of `amount` per bucket."""
        intervals = [(s.start, s.stop if s.stop is not None else (s.final or self.t1),
                      amount(s)) for s in spans if s.start is not None]
        values = time_series(intervals, self.t0, self.t1, SERIES_POINTS)  # type: ignore[arg-type]
        width = (self.t1 - self.t0) / SERIES_POINTS
        return [i * width for i in range(len(values))], values

    def _offered(self, pilots: Sequence[PilotRecord], capacity: Any) -> list[float]:
        lives = [(a, b, float(capacity(p))) for p in pilots
                 if (life := p.lifetime(self.rep.data.last_event)) is not None
                 for a, b in [life]]
        return time_series(lives, self.t0, self.t1, SERIES_POINTS)


def _mode_key(span: TaskSpan, mode: str) -> str:
    if mode == "outcome":
        return span.outcome
    return getattr(span, mode) or "-"


def _palette(keys: Sequence[str]) -> dict[str, str]:
    return {key: Category10_10[i % 10] for i, key in enumerate(keys)}


def _figure(legend: bool = True, **kw: Any) -> Any:
    """A plot as every one of the report's: full width, no logo, its legend at the right
    (where a click hides a line), ready before glyphs add items to it."""
    fig = figure(sizing_mode="stretch_width", tools=kw.pop("tools", TOOLS), **kw)
    fig.toolbar.logo = None
    if legend:
        fig.add_layout(Legend(click_policy="hide"), "right")
    return fig


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>"
                   for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _fmt_pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100.0 * value:.1f} %"
