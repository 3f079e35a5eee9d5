"""The HTML report in a real browser: headless Chromium (Debian's `chromium` and
`chromium-driver`) through Selenium loads the report of a real session and checks that
every plot drew its data and that the page logged no error.

Set PILOTFISH_SCREENSHOT=path.png to keep the page's screenshot (docs/report.png is one).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import pilotfish as pf
from pilotfish.cli import main

TD = pf.TaskDescription
CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (pip)")
if CHROMIUM is None or DRIVER is None:
    pytest.skip("needs Debian's chromium and chromium-driver (apt-get install chromium "
                "chromium-driver)", allow_module_level=True)

# Every Bokeh plot of the page: its root's name, whether it finished rendering, the
# canvas size, and how many pixels of its frame are drawn (not background or grid).
_PLOTS_JS = """
const Plot = Bokeh.Models.get("Plot");
function* walk(view) { yield view; for (const c of (view.child_views ?? [])) yield* walk(c); }
const out = [];
for (const root of Object.values(Bokeh.index)) {
  for (const view of walk(root)) {
    if (!(view.model instanceof Plot)) continue;
    const canvas = view.canvas_view.primary.canvas;
    const frame = view.frame.bbox;
    const pixels = canvas.getContext("2d").getImageData(
        frame.x, frame.y, frame.width, frame.height).data;
    let drawn = 0;
    for (let i = 0; i < pixels.length; i += 4) {
      if (pixels[i] < 200 || pixels[i + 1] < 200 || pixels[i + 2] < 200) drawn++;
    }
    const rows = view.model.renderers.filter(r => r.data_source)
                                     .map(r => r.data_source.get_length());
    out.push({name: root.model.name, finished: view.has_finished(), width: canvas.width,
              height: canvas.height, drawn: drawn, frame: frame.width * frame.height,
              rows: rows});
  }
}
return out;
"""

# Press a button of the timeline's "color by" switch; once its callback (asynchronous)
# ran, return the titles of the legends shown and the first box's color.
_SWITCH_JS = """
const [choice, done] = arguments;
const models = [...Bokeh.documents[0].all_models];
const group = models.find(m => m.type == "RadioButtonGroup");
const legends = models.filter(m => m.type == "Legend" && m.title);
const source = models.find(m => m.type == "ColumnDataSource" && "color_kind" in m.data);
group.active = choice;
const shown = () => legends.filter(l => l.visible).map(l => l.title);
const poll = () => shown().length == 1 && shown()[0] == ["outcome", "kind", "partition"][choice]
    ? done([shown(), source.data.color[0] == source.data["color_" + shown()[0]][0]])
    : setTimeout(poll, 20);
poll();
"""


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1000", f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=webdriver.ChromeService(DRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()  # stops the browser and the driver's process


def _session_with_everything(root: Path) -> Path:
    """A real session over two partitions: executables (multi-core too), functions, GPU
    tasks, failures of two kinds, a canceled task."""
    with pf.Session(path=root) as session:
        session.start_pilot(pf.PilotDescription(
            nodes=2, cores_per_node=4, gpus_per_node=2,
            partitions=[pf.PartitionSpec(backend="builtin", nodes=1, name="left"),
                        pf.PartitionSpec(backend="builtin", nodes=1, name="right")]))
        tasks = session.submit(
            [TD(executable="/bin/sleep", arguments=["0.2"]) for _ in range(12)]
            + [TD(executable="/bin/sleep", arguments=["0.3"], cores_per_rank=2, gpus_per_rank=1)
               for _ in range(3)]
            + [TD(function=time.sleep, args=(0.1,)) for _ in range(6)]
            + [TD(executable="/bin/false") for _ in range(2)]
            + [TD(function=int, args=("not a number",))])
        slow = session.submit(TD(executable="/bin/sleep", arguments=["30"]))
        assert session.wait(tasks, timeout=60)
        slow.cancel()
        assert session.wait([slow], timeout=30)
        return session.path


def test_report_renders_every_plot_without_errors(tmp_path: Path, browser: Any) -> None:
    session = _session_with_everything(tmp_path / "sessions")
    page, trace = tmp_path / "report.html", tmp_path / "trace.json"
    assert main(["report", str(session), "--html", str(page), "--trace", str(trace)]) == 0
    assert json.loads(trace.read_text())["traceEvents"]

    browser.get(page.as_uri())
    deadline = time.monotonic() + 30
    while not browser.execute_script(
            "return typeof Bokeh !== 'undefined' && Bokeh.documents.length > 0"
            " && Bokeh.documents[0].is_idle"):
        assert time.monotonic() < deadline, "the page's plots never finished rendering"
        time.sleep(0.1)
    plots = browser.execute_script(_PLOTS_JS)
    assert sorted(p["name"] for p in plots) == sorted(
        ["timeline", "busy", "utilization", "throughput", "phases", "failures"])
    for plot in plots:
        assert plot["finished"] and plot["width"] > 300 and plot["height"] > 50, plot
        assert plot["rows"] and all(n > 0 for n in plot["rows"]), plot
        assert plot["drawn"] > 0.002 * plot["frame"], f"{plot['name']} drew nothing: {plot}"

    browser.set_script_timeout(10)
    for choice, mode in ((1, "kind"), (2, "partition"), (0, "outcome")):
        assert browser.execute_async_script(_SWITCH_JS, choice) == [[mode], True]

    problems = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
    assert problems == [], problems

    height = browser.execute_script("return document.body.scrollHeight")
    browser.set_window_size(1400, height)
    shot = Path(os.environ.get("PILOTFISH_SCREENSHOT") or tmp_path / "report.png")
    assert browser.save_screenshot(str(shot))
