"""`pilotfish bench paper` (bench/paper.py): the paper's experiments on simulated Frontier
(the real agent, modelled srun and Flux launches) and on the local cluster, as a table,
a JSON of every figure and a self-contained HTML page."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from pilotfish.bench.apart import run_apart
from pilotfish.bench.cluster import SALLOC, STEP_LATENCY, runtimes_unavailable
from pilotfish.bench.paper import CLUSTER, cluster_figures, srun_model_check
from pilotfish.cli import main

from .test_slurm import slurm_problem


def by_system(figures: list[dict], experiment: str) -> dict[str, float]:
    return {f["system"]: f["value"] for f in figures if f["experiment"] == experiment}


@pytest.mark.timeout(300)
def test_the_simulated_experiments_beside_the_papers_figures(tmp_path: Path) -> None:
    html, out = tmp_path / "paper.html", tmp_path / "paper.json"
    assert main(["bench", "paper", "--quick", "--where", "simulated", "--nodes", "16",
                 "--html", str(html), "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    figures = data["figures"]
    rates = by_system(figures, "throughput")
    assert 140 <= rates["srun"] <= 153  # the model's controller: 152 a second at most
    assert 600 <= rates["flux x1"] <= 705  # one Flux instance: 700 a second
    assert rates["flux x4"] > 3 * rates["flux x1"]  # instances admit apart
    assert rates["flux + dragon"] > rates["flux x4"]  # the functions do not wait for Flux
    assert rates["pilotfish built-in"] > 10 * rates["srun"]
    busy = by_system(figures, "utilization")
    assert busy["pilotfish built-in"] > 99 and busy["srun"] < busy["pilotfish built-in"]
    makespan = by_system(figures, "campaign makespan")
    assert makespan["srun"] > makespan["pilotfish built-in"] > 2 * (30 + 1800 + 5 + 2700 + 60)
    assert 0 < makespan["vs srun"] < 100  # % shorter than srun's
    peaks = by_system(figures, "campaign throughput")
    assert peaks["srun (peak)"] <= 153 < peaks["pilotfish built-in (peak)"]
    assert next(f["paper"] for f in figures if f["system"] == "srun") == "152 tasks/s at most"
    assert any("152 job steps a second" in a for a in data["assumptions"])
    page = html.read_text()
    assert "Bokeh" in page and "campaign makespan" in page and "152 tasks/s at most" in page
    assert "cdn.bokeh.org" not in page  # self-contained: opens without a network


def test_a_cluster_runs_figures_name_systems_and_compare_with_srun() -> None:
    figs = cluster_figures("throughput", {"pilotfish": 2000.0, "srun backend": 42.0,
                                          "srun driver": 40.0, STEP_LATENCY: 0.04})
    assert {(f.system, f.value) for f in figs} == {
        ("pilotfish built-in", 2000.0), ("pilotfish srun backend", 42.0), ("srun", 40.0)}
    assert all(f.place == CLUSTER and f.unit == "tasks/s" for f in figs)
    flux = cluster_figures("flux", {"flux x1": 50.0, "flux x4": 60.0, "srun driver": 40.0})
    assert [f.system for f in flux] == ["flux x1", "flux x4"]  # (srun: throughput's)
    assert "930" in flux[1].paper and "700" in flux[0].paper
    campaign = cluster_figures("campaign", {
        "pilotfish makespan": 20.0, "srun makespan": 80.0, "pilotfish tasks/s": 60.0,
        "srun tasks/s": 15.0, "pilotfish peak tasks/s": 500.0, "srun peak tasks/s": 50.0,
        "partitions makespan": 30.0, "partitions tasks/s": 40.0,
        "partitions peak tasks/s": 300.0})
    assert {f.system for f in campaign if f.unit == "s"} == {
        "srun", "pilotfish built-in", "pilotfish flux + dragon + built-in"}
    versus = {(f.experiment, f.unit, f.system): f.value for f in campaign
              if f.system.startswith("vs srun")}
    assert versus == {("campaign makespan", "% shorter", "vs srun"): 75.0,
                      ("campaign throughput", "x", "vs srun"): 4.0,
                      ("campaign throughput", "x", "vs srun (peak)"): 10.0}


def test_the_srun_model_with_a_clusters_own_costs_predicts_its_utilization(
        tmp_path: Path) -> None:
    """Given the local cluster's measured step latency and rate, the model predicts the
    driver's utilization of 64 cores by `sleep 1` steps (measured: 61.9%, 2026-12-04)."""
    figs = srun_model_check({"srun driver": 42.5, STEP_LATENCY: 0.04}, {"srun driver": 61.9},
                            True, str(tmp_path), log=lambda _: None)
    measured, modelled = figs
    assert measured.system == "srun driver (measured)" and measured.value == 61.9
    assert modelled.system == "srun model (simulated)" and "42.5 steps/s" in modelled.note
    assert 55 < modelled.value < 72, modelled


@pytest.mark.timeout(240)
@pytest.mark.skipif(slurm_problem() is not None, reason=slurm_problem() or "")
def test_the_campaign_against_the_srun_driver_on_the_cluster() -> None:
    """The campaign case, for real and short: every driver ran every task (pilotfish
    also on Flux, Dragon and built-in partitions, where Flux and Dragon are here)."""
    r = run_apart([*SALLOC, sys.executable, "-m", "pilotfish.bench.cluster", "campaign",
                   "--quick"], "campaign", timeout=200)
    who = ["pilotfish", "srun", *(["partitions"] * (runtimes_unavailable() is None))]
    assert set(r) == {f"{w} {figure}" for w in who
                      for figure in ("makespan", "tasks/s", "peak tasks/s")}
    assert all(v > 0 for v in r.values()), r
