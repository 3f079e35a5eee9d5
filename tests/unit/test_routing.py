"""Partitions of a pilot's nodes, and routing tasks to them (both pure)."""

from __future__ import annotations

import pytest

from pilotfish.partitions import Partition, PartitionError, PartitionSpec, resolve_partitions
from pilotfish.routing import STEAL_MAX, Reject, RoutingPolicy, TaskTraits, steal_count

S = PartitionSpec


def layout(parts: list[Partition]) -> list[tuple[str, str, int, int]]:
    return [(p.name, p.backend, p.first, p.nodes) for p in parts]


def test_without_specs_the_whole_pilot_is_one_builtin_partition() -> None:
    assert layout(resolve_partitions((), 8)) == [("builtin", "builtin", 0, 8)]


def test_counts_fractions_and_the_rest() -> None:
    parts = resolve_partitions((S(backend="flux", nodes=0.5, instances=2),
                                S(backend="dragon", nodes=2), S(backend="builtin")), 10)
    assert layout(parts) == [("flux.0", "flux", 0, 3), ("flux.1", "flux", 3, 2),
                             ("dragon", "dragon", 5, 2), ("builtin", "builtin", 7, 3)]
    assert list(parts[1].node_ids) == [3, 4]


def test_dragon_partitions_run_functions_in_workers_unless_asked_for_a_pool() -> None:
    parts = resolve_partitions((S(backend="dragon", nodes=1),
                                S(backend="dragon", functions="pool"), S(backend="builtin")), 3)
    assert [p.functions for p in parts] == ["workers", "pool", None]


def test_the_rest_is_split_evenly_and_unnamed_twins_are_numbered() -> None:
    parts = resolve_partitions((S(backend="builtin"), S(backend="builtin")), 5)
    assert layout(parts) == [("builtin-1", "builtin", 0, 3), ("builtin-2", "builtin", 3, 2)]
    named = resolve_partitions((S(backend="flux", nodes=1, name="md"), S(backend="flux")), 2)
    assert [p.name for p in named] == ["md", "flux"]


@pytest.mark.parametrize(("specs", "nodes", "match"), [
    ((S(backend="flux", nodes=5),), 4, "ask for 5 node"),
    ((S(backend="flux", nodes=4), S(backend="dragon")), 4, "plus at least 1 for the rest"),
    ((S(backend="flux", nodes=2, instances=3),), 4, "3 instances over 2 node"),
    ((S(backend="flux", nodes=1, name="a"), S(backend="dragon", nodes=1, name="a")), 4,
     "two partitions are named 'a'"),
])
def test_impossible_splits_say_why(specs: tuple[PartitionSpec, ...], nodes: int,
                                   match: str) -> None:
    with pytest.raises(PartitionError, match=match):
        resolve_partitions(specs, nodes)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"backend": "slurm"}, "unknown backend 'slurm'"),
    ({"backend": "flux", "nodes": 1.5}, r"fraction must be in \(0, 1\)"),
    ({"backend": "flux", "nodes": 0}, "must be >= 1"),
    ({"backend": "flux", "instances": 0}, "instances"),
    ({"backend": "flux", "name": "a.b"}, "without '.'"),
    ({"backend": "dragon", "functions": "threads"}, "one of 'workers', 'pool', got 'threads'"),
    ({"backend": "builtin", "functions": "pool"}, r"None \(only Dragon partitions choose\)"),
])
def test_a_bad_spec_is_refused_naming_the_field(kwargs: dict, match: str) -> None:
    with pytest.raises(PartitionError, match=match):
        PartitionSpec(**kwargs)


PARTS = resolve_partitions((S(backend="flux", nodes=4, instances=2), S(backend="dragon", nodes=2),
                            S(backend="builtin", nodes=2)), 8)


def route(load: dict[str, float] | None = None, **traits: object) -> str | Reject:
    return RoutingPolicy().route(TaskTraits(**traits), PARTS, load or {})  # type: ignore[arg-type]


def test_default_rules() -> None:
    assert route(kind="function") == "dragon"
    assert route(kind="executable", ranks=16) == "flux.0"
    assert route(kind="executable", ranks=16, load={"flux.0": 2.0}) == "flux.1"
    assert route(kind="executable") == "flux.0"  # the rest by load, first on ties
    assert route(kind="executable", load={"flux.0": 1, "flux.1": 1, "dragon": 0.5}) == "builtin"
    # Single-rank executables stay off Dragon while another partition can run them.
    loaded = {"flux.0": 9, "flux.1": 9, "builtin": 9, "dragon": 0}
    assert route(kind="executable", load=loaded) == "flux.0"
    only_dragon = resolve_partitions((S(backend="dragon"),), 2)
    assert RoutingPolicy().route(TaskTraits(kind="executable"), only_dragon, {}) == "dragon"
    # Shared GPUs: only the built-in backend can.
    assert route(kind="executable", ranks=2, gpus_per_rank=0.5) == "builtin"


def test_a_pinned_task_goes_where_it_is_told_or_fails_saying_why() -> None:
    assert route(kind="function", partition="builtin") == "builtin"
    refused = route(kind="function", partition="flux.1")
    assert isinstance(refused, Reject)
    assert refused.reason == "partition 'flux.1' (flux) runs no Python functions"
    missing = route(kind="executable", partition="gpu")
    assert isinstance(missing, Reject) and "no partition 'gpu'" in missing.reason


def test_a_task_no_partition_can_run_fails_listing_each_reason() -> None:
    only_flux = resolve_partitions((S(backend="flux"),), 2)
    refused = RoutingPolicy().route(TaskTraits(kind="function"), only_flux, {})
    assert refused == Reject("no partition can run it: flux (flux) runs no Python functions")


def test_the_policy_is_overridable() -> None:
    class FunctionsToBuiltin(RoutingPolicy):
        function_backends = ("builtin",)

    assert FunctionsToBuiltin().route(TaskTraits(kind="function"), PARTS, {}) == "builtin"


def test_late_binding_takes_half_a_backlog_into_an_empty_queue() -> None:
    assert steal_count(0, False, 32, 100, 32) == 50
    assert steal_count(0, False, 32, 10 * STEAL_MAX, 32) == STEAL_MAX
    assert steal_count(0, True, 32, 100, 32) == 50


def test_a_free_core_takes_even_one_waiting_task() -> None:
    assert steal_count(0, True, 32, 1, 32) == 1
    assert steal_count(0, False, 32, 1, 32) == 0


def test_a_busy_partition_leaves_a_short_queue_to_cores_that_free_sooner() -> None:
    # 32 queued on 32 busy cores start as those end: moved behind the thief's busy
    # cores they could start later than they would have.
    assert steal_count(0, False, 32, 32, 32) == 0
    assert steal_count(0, False, 32, 33, 32) == 16


def test_a_partition_with_waiting_tasks_takes_only_with_idle_cores_up_to_its_size() -> None:
    assert steal_count(5, False, 4, 100, 32) == 0
    assert steal_count(5, True, 4, 100, 32) == 4


def test_late_binding_keeps_single_executables_where_routing_would() -> None:
    flux, dragon, builtin = PARTS[0], PARTS[2], PARTS[3]
    policy = RoutingPolicy()
    one = TaskTraits(kind="executable")
    assert not policy.may_move(one, builtin, dragon)
    assert policy.may_move(one, dragon, builtin) and policy.may_move(one, builtin, flux)
    assert policy.may_move(TaskTraits(kind="executable", ranks=4), builtin, dragon)
    assert policy.may_move(TaskTraits(kind="function"), dragon, builtin)


def test_a_task_naming_a_launcher_goes_where_ranks_start_through_launchers() -> None:
    # Flux and Dragon start ranks their own way: a task naming a launcher goes elsewhere.
    assert route(kind="executable", ranks=16, launcher="mpiexec.mpich") == "builtin"
    assert route(kind="executable", launcher="srun") == "builtin"
    with_srun = resolve_partitions((S(backend="flux"), S(backend="srun")), 4)
    policy = RoutingPolicy()
    assert policy.route(TaskTraits(kind="executable", ranks=8, launcher="srun.pmix"),
                        with_srun, {}) == "srun"
    assert policy.route(TaskTraits(kind="executable", ranks=8), with_srun, {}) == "flux"
    assert policy.route(TaskTraits(kind="executable", launcher="mpiexec"), with_srun,
                        {}) == Reject(
        "no partition can run it: flux (flux) starts no ranks through launcher 'mpiexec'; "
        "srun (srun) starts no ranks through launcher 'mpiexec' (only srun, srun.pmix, "
        "srun.pmi2)")
    assert policy.route(TaskTraits(kind="function"), with_srun, {}) == Reject(
        "no partition can run it: flux (flux) runs no Python functions; srun (srun) runs "
        "no Python functions")


def test_nodes_no_spec_takes_go_to_a_builtin_partition_of_their_own() -> None:
    assert layout(resolve_partitions((S(backend="builtin", nodes=1),), 2)) == [
        ("builtin", "builtin", 0, 1), ("builtin-rest", "builtin", 1, 1)]
    assert layout(resolve_partitions((S(backend="flux", nodes=0.5),
                                      S(backend="dragon", nodes=0.25)), 8)) == [
        ("flux", "flux", 0, 4), ("dragon", "dragon", 4, 2), ("builtin", "builtin", 6, 2)]


def test_fractions_over_the_whole_pilot_are_refused() -> None:
    with pytest.raises(PartitionError, match=r"fractions that add up to 1\.2"):
        resolve_partitions((S(backend="flux", nodes=0.5), S(backend="dragon", nodes=0.7)), 10)
