"""The HTML report's page, without a browser (tests/integration/test_report_browser.py
loads it in one): self-contained, with the plots the session has data for."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import Any

from pilotfish.htmlreport import write_html_report
from pilotfish.journal import Journal
from tests.unit.test_metrics import T0, write_journal


def bokeh_roots(page: str) -> dict[str, dict[str, Any]]:
    """The page's Bokeh roots by name, from the document JSON embedded in it."""
    found = re.search(r'<script type="application/json" id="[^"]+">\s*(.*?)\s*</script>',
                      page, re.S)
    assert found, "no Bokeh document in the page"
    docs = json.loads(html.unescape(found.group(1)))
    (doc,) = docs.values()
    return {root["attributes"].get("name"): root for root in doc["roots"]}


def test_page_is_self_contained_with_plots_for_the_data(tmp_path: Path) -> None:
    session = write_journal(tmp_path / "s")
    page = write_html_report(session, tmp_path / "out" / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") or page.lstrip().startswith("<!DOCTYPE html>")
    assert not re.search(r"<script[^>]+src=|<link[^>]+href=", page)  # nothing fetched
    assert "Bokeh" in page and "sess-42" in page and "63.3 %" in page
    # No placement journaled: no timeline; a failed task: the failures plot and table.
    assert set(bokeh_roots(page)) == {"busy", "utilization", "throughput", "phases",
                                      "failures"}
    assert "Failed tasks by reason" in page and "<h2>By partition</h2>" in page


def test_timeline_boxes_come_from_placements(tmp_path: Path) -> None:
    j = Journal(tmp_path / "s" / "session.db")
    j.add_pilot("p0", "{}", 2, 4, 0, T0)
    j.update_pilot("p0", ready=T0 + 1.0, stopped=T0 + 9.0, state="DONE")
    j.add_tasks([(i, f"task.{i:06d}", "p0", None, "executable", 3, 0.0, "{}", None)
                 for i in (1, 2)])
    j.add_events([(i, event, T0 + ts) for i in (1, 2) for event, ts in (
        ("NEW", 1.0), ("SCHEDULED", 1.5), ("RUNNING", 2.0), ("exec_stop", 4.0))])
    # Task 1 on cores 0-2 of node 0; task 2 on cores 3 of node 0 and 0-1 of node 1.
    j.finish_tasks([("DONE", 0, None, None, None, None, None, T0 + 4.5, None,
                     json.dumps(place), i) for i, place in (
        (1, [[0, [0, 1, 2], []]]), (2, [[0, [3], []], [1, [0, 1], []]]))])
    j.close()
    page = write_html_report(tmp_path / "s", tmp_path / "r.html").read_text()
    roots = bokeh_roots(page)
    assert "timeline" in roots and "failures" not in roots and "No task failed." in page
    uids = re.search(r'\["uid",(\[[^]]*\])\]', page)
    assert uids is not None  # a box per node and run of cores:
    assert json.loads(uids.group(1)) == ["task.000001", "task.000002", "task.000002"]
    assert "2 of 2 started tasks drawn" in page


def test_a_session_without_executions_says_so(tmp_path: Path) -> None:
    j = Journal(tmp_path / "s" / "session.db")
    j.add_pilot("p0", "{}", 1, 2, 0, T0)
    j.close()
    page = write_html_report(tmp_path / "s", tmp_path / "r.html").read_text()
    assert "No task execution recorded" in page
