"""The IMPECCABLE-like campaign (workloads/campaign.py): its stages run in order, each
after its inputs, on a local pilot (with its model server) and on a simulated one."""

from __future__ import annotations

import itertools

import pilotfish as pf
from pilotfish.workloads.campaign import STAGES, Campaign, submit_campaign


def spans(tasks: list[pf.Task]) -> tuple[float, float]:
    """The first start and the last end of a stage's tasks."""
    events = [dict(t.events) for t in tasks]
    return min(e["RUNNING"] for e in events), max(e["exec_stop"] for e in events)


def named(tasks: list[pf.Task], name: str) -> list[pf.Task]:
    return [t for t in tasks if t.description and t.description.name == name]


def check_order(stages: dict[str, list[pf.Task]], iterations: int, pipeline: int = 0
                ) -> None:
    for i in range(iterations):
        per = {s: named(stages[s], f"{s}-{pipeline}.{i}") for s in STAGES}
        for before, after in itertools.pairwise(STAGES):
            assert spans(per[before])[1] <= spans(per[after])[0], (i, before, after)
        if i:
            previous = named(stages["selection"], f"selection-{pipeline}.{i - 1}")
            assert spans(previous)[1] <= spans(per["docking"])[0]


def test_the_campaign_on_a_local_pilot(session: pf.Session) -> None:
    session.start_pilot(pf.PilotDescription(nodes=2, cores_per_node=8, gpus_per_node=4))
    c = Campaign(iterations=2, docking=16, docking_s=0.1, training_s=0.2, inference=16,
                 inference_s=0.01, simulations=2, simulation_s=0.2, selection_s=0.01)
    stages = submit_campaign(session, c)
    assert session.wait(timeout=120)
    work = [t for s in STAGES for t in stages[s]]
    assert len(work) == c.tasks and {t.state for t in work} == {pf.TaskState.DONE}
    assert stages["service"][0].state is pf.TaskState.READY  # inference asked it
    scores = [t.result() for t in stages["inference"]]
    assert all(0 <= s < 1 for s in scores)
    best = sorted(range(16), key=lambda k: -scores[k])[:c.simulations]  # of each iteration
    assert [t.result() for t in stages["selection"]] == [best, best]
    check_order(stages, c.iterations)
    stages["service"][0].cancel()


def test_the_campaign_at_the_papers_durations_on_a_simulated_pilot(
        session: pf.Session) -> None:
    session.start_pilot(pf.PilotDescription(platform="frontier", nodes=16,
                                            backend="simulated"))
    c = Campaign.paper(nodes=16, iterations=2, docking=2000, inference=1000, simulations=8,
                       simulation_nodes=2)
    stages = submit_campaign(session, c)
    assert session.wait(timeout=120)
    work = [t for s in STAGES for t in stages[s]]
    assert {t.state for t in work} == {pf.TaskState.DONE}
    check_order(stages, c.iterations)
    m = session.metrics()
    # Two iterations, each at least docking + training + inference + simulation + selection.
    least = 2 * (30 + 1800 + 5 + 2700 + 60)
    assert m.makespan_s is not None and least <= m.makespan_s < 1.5 * least


def test_the_papers_shape_sized_to_a_machine() -> None:
    c = Campaign.paper(nodes=1024)  # Frontier nodes: 56 cores, 8 GPUs
    assert (c.docking, c.inference, c.simulations) == (2 * 57344, 8 * 8192, 256)
    assert c.training_ranks == 8 and c.simulation_nodes * c.simulation_ranks_per_node == 32
    assert c.tasks == 2 * (114688 + 1 + 65536 + 256 + 1)


def test_pipelines_overlap_and_an_srun_partition_runs_calls_as_executables(
        session: pf.Session) -> None:
    """Two pipelines share a simulated pilot whose only partition is srun's (no functions
    there): inference and selection run as `python -c` steps, each pipeline in order,
    the pipelines at once (the second's docking does not wait for the first's end)."""
    session.start_pilot(pf.PilotDescription(
        platform="frontier", nodes=16, backend="simulated",
        partitions=[pf.PartitionSpec(backend="srun")]))
    c = Campaign.paper(nodes=16, pipelines=2, functions=False)
    stages = submit_campaign(session, c)
    assert session.wait(timeout=120)
    work = [t for s in STAGES for t in stages[s]]
    assert len(work) == c.tasks and {t.state for t in work} == {pf.TaskState.DONE}
    assert all(t.description and t.description.executable for t in stages["inference"])
    for p in range(2):
        check_order(stages, c.iterations, p)
    first, second = (named(stages["docking"], f"docking-{p}.0") for p in range(2))
    assert spans(second)[0] < spans(first)[1]
