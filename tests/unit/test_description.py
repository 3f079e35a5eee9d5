"""Descriptions are validated when they are built, and an error names the field."""

from __future__ import annotations

import contextlib
import os
import pickle
import shutil
import threading
from collections.abc import Iterator, Mapping

import cloudpickle
import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pilotfish.description import (
    InvalidDescription,
    PilotDescription,
    TaskDescription,
    pickle_function,
)
from pilotfish.messages import TaskSpec
from pilotfish.partitions import PartitionSpec


def square(x: int) -> int:
    return x * x


def power(x: int, y: int = 2) -> int:
    return x**y


@contextlib.contextmanager
def invalid(field: str, match: str | None = None) -> Iterator[pytest.ExceptionInfo]:
    """Expect `InvalidDescription` for `field`, its message naming the field."""
    with pytest.raises(InvalidDescription, match=match) as info:
        yield info
    assert info.value.field == field
    assert f".{field}:" in str(info.value)


def test_invalid_description_is_a_value_error() -> None:
    assert issubclass(InvalidDescription, ValueError)


# ---- valid ones ---------------------------------------------------------------------------


def test_an_executable_task() -> None:
    td = TaskDescription(executable="/bin/echo", arguments=["hi", 3, 2.5], ranks=2,
                         cores_per_rank=3, gpus_per_rank=0.5, timeout=10, sandbox=os.curdir,
                         environment={"A": "1"}, priority=-3, name="echo", tags={"k": "v"})
    assert td.kind == "executable"
    assert td.arguments == ("hi", "3", "2.5")  # numbers become str
    assert (td.cores, td.gpus) == (6, 1.0)
    assert td.sandbox == os.getcwd()  # made absolute where the user is
    assert td.function_blob is None and td.args_blob is None


def test_a_function_task_is_pickled_at_construction() -> None:
    td = TaskDescription(function=power, args=[3], kwargs={"y": 3})
    assert td.kind == "function"
    assert cloudpickle.loads(td.function_blob)(4) == 16
    assert pickle.loads(td.args_blob) == ((3,), {"y": 3})
    assert td.function_key == TaskDescription(function=power).function_key
    assert td.function_key != TaskDescription(function=square).function_key
    assert TaskDescription(function=power).args_blob is None


def test_a_closure_is_pickled_by_value() -> None:
    base = 10
    td = TaskDescription(function=lambda x: x + base, args=[1])
    assert cloudpickle.loads(td.function_blob)(1) == 11


@pytest.mark.parametrize("gpus", [0, 0.25, 0.5, 1, 2, 1 / 3, 1 / 8])
def test_valid_gpu_amounts(gpus: float) -> None:
    assert TaskDescription(executable="x", gpus_per_rank=gpus).gpus_per_rank == gpus


def test_descriptions_are_frozen() -> None:
    td = TaskDescription(executable="x")
    with pytest.raises(AttributeError):
        td.ranks = 2  # type: ignore[misc]
    with pytest.raises(TypeError, match="derived"):
        TaskDescription(function=pow, function_key="forged")


# ---- what is refused ----------------------------------------------------------------------


def test_neither_executable_nor_function() -> None:
    with invalid("executable", "executable or a function"):
        TaskDescription()


def test_both_executable_and_function() -> None:
    with invalid("function", "not both"):
        TaskDescription(executable="/bin/true", function=square)


@pytest.mark.parametrize("field", ["ranks", "cores_per_rank"])
@pytest.mark.parametrize("value", [0, -1])
def test_ranks_and_cores_must_be_positive(field: str, value: int) -> None:
    with invalid(field, f"must be >= 1, got {value}"):
        TaskDescription(executable="x", **{field: value})


@pytest.mark.parametrize("field", ["ranks", "cores_per_rank"])
def test_ranks_and_cores_must_be_ints(field: str) -> None:
    with pytest.raises(TypeError, match=field):
        TaskDescription(executable="x", **{field: 2.5})


@pytest.mark.parametrize("gpus", [0.3, 1.5, 0.75, 2.5])
def test_a_gpu_fraction_must_be_one_over_k_or_whole(gpus: float) -> None:
    with invalid("gpus_per_rank", str(gpus)):
        TaskDescription(executable="x", gpus_per_rank=gpus)


@pytest.mark.parametrize("gpus", [-1, -0.5, float("nan"), float("inf")])
def test_gpus_must_be_a_finite_non_negative_number(gpus: float) -> None:
    with invalid("gpus_per_rank"):
        TaskDescription(executable="x", gpus_per_rank=gpus)


def test_a_gpu_fraction_finer_than_the_accounting_is_refused() -> None:
    # Shares are kept in 1/1024ths; 1/3000 would round to nothing and crash the scheduler.
    with invalid("gpus_per_rank", "1/1024"):
        TaskDescription(executable="x", gpus_per_rank=1 / 3000)
    assert TaskDescription(executable="x", gpus_per_rank=1 / 1024).gpus_per_rank == 1 / 1024


def test_gpus_must_be_a_number() -> None:
    with pytest.raises(TypeError, match="gpus_per_rank"):
        TaskDescription(executable="x", gpus_per_rank="1")  # type: ignore[arg-type]


@pytest.mark.parametrize("timeout", [0, -1, -0.5, float("nan"), float("inf")])
def test_timeout_must_be_positive_and_finite(timeout: float) -> None:
    with invalid("timeout", "must be > 0"):
        TaskDescription(executable="x", timeout=timeout)


def test_timeout_must_be_a_number() -> None:
    with pytest.raises(TypeError, match="timeout"):
        TaskDescription(executable="x", timeout="10")  # type: ignore[arg-type]


def test_an_unknown_keyword_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="cores"):
        TaskDescription(executable="x", cores=4)  # type: ignore[call-arg]


def test_fields_are_keyword_only() -> None:
    with pytest.raises(TypeError):
        TaskDescription("/bin/true")  # type: ignore[misc]


def test_a_function_that_cannot_be_serialised_is_refused() -> None:
    lock = threading.Lock()
    with pytest.raises(TypeError, match="function") as info:
        TaskDescription(function=lambda: lock)
    assert "serialised" in str(info.value)


def test_a_function_must_be_callable() -> None:
    with pytest.raises(TypeError, match="function"):
        TaskDescription(function=42)  # type: ignore[arg-type]


def test_args_that_cannot_be_serialised_are_refused() -> None:
    with pytest.raises(TypeError, match="args"):
        TaskDescription(function=square, args=(threading.Lock(),))


@pytest.mark.parametrize("extra", [{"args": (1,)}, {"kwargs": {"a": 1}}])
def test_args_are_for_functions(extra: dict) -> None:
    with invalid("args", "use arguments"):
        TaskDescription(executable="x", **extra)


def test_arguments_are_for_executables() -> None:
    with invalid("arguments", "use args"):
        TaskDescription(function=square, arguments=["1"])


@pytest.mark.parametrize("bad", [None, b"bytes", object(), True, ["nested"]])
def test_arguments_must_be_str(bad: object) -> None:
    with pytest.raises(TypeError, match="arguments"):
        TaskDescription(executable="x", arguments=["ok", bad])


def test_arguments_must_be_a_list_not_a_string() -> None:
    with pytest.raises(TypeError, match="arguments"):
        TaskDescription(executable="x", arguments="-v")


def test_executable_must_be_a_non_empty_str() -> None:
    for bad in ("", 42):
        with pytest.raises(TypeError, match="executable"):
            TaskDescription(executable=bad)  # type: ignore[arg-type]


def test_environment_must_map_str_to_str() -> None:
    with pytest.raises(TypeError, match="environment"):
        TaskDescription(executable="x", environment={"N": 1})  # type: ignore[dict-item]


def test_priority_must_be_an_int() -> None:
    with pytest.raises(TypeError, match="priority"):
        TaskDescription(executable="x", priority=1.5)  # type: ignore[arg-type]


# ---- pilots -------------------------------------------------------------------------------


def test_placement_fields() -> None:
    td = TaskDescription(executable="lmp", ranks=64, cores_per_rank=7, gpus_per_rank=1,
                         ranks_per_node=8, mem_per_rank=4096, duration=1800,
                         tags={"colocate": "md", "exclusive": "md"})
    assert (td.ranks_per_node, td.mem_per_rank, td.duration) == (8, 4096, 1800)
    assert TaskDescription(executable="x").ranks_per_node is None


@pytest.mark.parametrize(("field", "value"), [("ranks_per_node", 0), ("mem_per_rank", -1)])
def test_placement_numbers_are_checked(field: str, value: int) -> None:
    with invalid(field, match=f"{field}: must be >= "):
        TaskDescription(executable="x", **{field: value})


@pytest.mark.parametrize("duration", [-1.0, float("inf"), float("nan")])
def test_a_simulated_duration_is_a_finite_non_negative_number(duration: float) -> None:
    with invalid("duration"):
        TaskDescription(executable="x", duration=duration)
    with pytest.raises(TypeError, match="duration"):
        TaskDescription(executable="x", duration="10")  # type: ignore[arg-type]


def test_placement_tags_need_a_group_name_and_tags_map_str_to_str() -> None:
    with invalid("tags", match="'colocate' needs a group name"):
        TaskDescription(executable="x", tags={"colocate": ""})
    with pytest.raises(TypeError, match="tags"):
        TaskDescription(executable="x", tags={"exclusive": 1})  # type: ignore[dict-item]


def test_a_pmi_tag_names_a_pmi_dragon_knows() -> None:
    assert TaskDescription(executable="x", ranks=4, tags={"pmi": "pmix"}).tags["pmi"] == "pmix"
    with invalid("tags", match="'pmi' is one of .*'cray', 'pmix'.*not 'pmi2'"):
        TaskDescription(executable="x", tags={"pmi": "pmi2"})


def test_retries_are_a_non_negative_int() -> None:
    assert TaskDescription(executable="x", retries=2).retries == 2
    with invalid("retries"):
        TaskDescription(executable="x", retries=-1)
    with pytest.raises(TypeError, match="retries"):
        TaskDescription(executable="x", retries=1.5)  # type: ignore[arg-type]


def test_a_launcher_is_for_executables() -> None:
    assert TaskDescription(executable="/bin/hostname", ranks=4,
                           launcher="mpiexec.mpich").launcher == "mpiexec.mpich"
    assert TaskDescription(executable="/bin/hostname").launcher is None
    with invalid("launcher", match="a launcher starts an executable's ranks; a function runs "
                                   "in the pilot's workers"):
        TaskDescription(function=pow, args=(2, 3), launcher="srun")


def test_the_srun_backend_needs_real_nodes() -> None:
    # Where srun is installed, the reason is that a local pilot's nodes are virtual.
    why = "it runs only on real nodes" if shutil.which("srun") else "no srun on PATH"
    with invalid("backend", match=f"no srun here: {why}"):
        PilotDescription(backend="srun")
    with invalid("partitions", match=f"no srun here: {why}"):
        PilotDescription(nodes=2, partitions=[PartitionSpec(backend="builtin", nodes=1),
                                              PartitionSpec(backend="srun")])
    # A simulated pilot models it.
    assert PilotDescription(backend="simulated", nodes=2, partitions=[
        PartitionSpec(backend="srun")]).layout[0].backend == "srun"


def test_a_pilot_backend_and_reservation_delay_are_checked() -> None:
    assert PilotDescription(backend="simulated", reserve_after=0).backend == "simulated"
    with invalid("backend", match="unknown backend 'nope'; known: flux, dragon, builtin, srun, "
                                  "simulated"):
        PilotDescription(backend="nope")
    with invalid("backend", match="given each partition its backend|give each partition"):
        PilotDescription(backend="dragon", partitions=[PartitionSpec(backend="builtin")])
    with invalid("reserve_after"):
        PilotDescription(reserve_after=-1)


def test_a_pilot_defaults_to_the_machine() -> None:
    pd = PilotDescription()
    assert pd.platform == "local" and pd.nodes == 1 and pd.gpus_per_node == 0
    assert pd.cores_per_node == (os.cpu_count() or 1)
    assert pd.workers_per_node == pd.cores_per_node  # a function per core


def test_a_pilot_with_virtual_resources() -> None:
    pd = PilotDescription(nodes=3, cores_per_node=64, gpus_per_node=4, function_workers=2,
                          runtime=60)
    assert (pd.nodes, pd.cores_per_node, pd.gpus_per_node) == (3, 64, 4)
    assert pd.workers_per_node == 2


@pytest.mark.parametrize("nodes", [0, -1])
def test_a_pilot_needs_a_node(nodes: int) -> None:
    with invalid("nodes", f"got {nodes}"):
        PilotDescription(nodes=nodes)


def test_an_unknown_platform_is_refused_with_the_known_ones() -> None:
    with invalid("platform", "'summit'.*known: aurora, frontier, local"):
        PilotDescription(platform="summit")


@pytest.mark.parametrize(
    ("field", "value"),
    [("cores_per_node", 0), ("gpus_per_node", -1), ("function_workers", 0),
     ("runtime", 0), ("runtime", -5), ("heartbeat_timeout", 0)],
)
def test_pilot_numbers_are_checked(field: str, value: int) -> None:
    with invalid(field):
        PilotDescription(**{field: value})


def test_pilot_counts_must_be_ints() -> None:
    with pytest.raises(TypeError, match="nodes"):
        PilotDescription(nodes=1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        PilotDescription(cpus=4)  # type: ignore[call-arg]


class _Counter:
    def __init__(self) -> None:
        self.n = 0

    def __call__(self) -> int:
        self.n += 1
        return self.n


class _Fixed(_Counter):
    pickle_once = True


def test_only_callables_that_say_they_never_change_are_pickled_once() -> None:
    counter, fixed = _Counter(), _Fixed()
    first = pickle_function(counter)
    counter()
    assert pickle_function(counter) != first  # its state changed: pickled again
    assert pickle_function(fixed) is pickle_function(fixed)


def test_the_wire_spec_carries_every_field_of_a_description_by_name() -> None:
    """One list of task fields: a field added to one and not the other fails here."""
    client_only = {"function", "args", "kwargs", "function_blob"}
    wire = set(TaskSpec.__struct_fields__) - {"uid", "kind"}
    assert wire == set(TaskDescription.__struct_fields__) - client_only
    exe = TaskDescription(executable="/bin/echo", arguments=["a", 1], environment={"K": "v"},
                          sandbox="/tmp/box", ranks=4, cores_per_rank=2, gpus_per_rank=0.5,
                          ranks_per_node=2, mem_per_rank=64, priority=3, timeout=9.5,
                          duration=2.0, name="n", tags={"colocate": "g"}, partition="p",
                          retries=2, launcher="srun.pmix")
    fn = TaskDescription(function=pow, args=(2, 3), cores_per_rank=2, retries=1)
    for d in (exe, fn):
        spec = d.to_spec("task.000001")
        assert (spec.uid, spec.kind) == ("task.000001", d.kind)
        for name in wire - {"after", "inputs"}:  # (tasks on one side, uids on the other)
            given = getattr(d, name)
            expected = (list(given) if isinstance(given, tuple)
                        else dict(given) if isinstance(given, Mapping) else given)
            assert getattr(spec, name) == expected, name
        assert (spec.after, spec.inputs) == ([], {})  # no inputs: none named
        assert msgspec.msgpack.decode(msgspec.msgpack.encode(spec), type=TaskSpec) == spec


@pytest.mark.parametrize(("fields", "error", "match"), [
    ({"priority": 10**30}, InvalidDescription, "priority: must be <= 2147483647"),
    ({"gpus_per_rank": False}, TypeError, "gpus_per_rank must be a number, got bool"),
    ({"gpus_per_rank": None}, TypeError, "gpus_per_rank must be a number, got NoneType"),
    ({"gpus_per_rank": 5e-324}, InvalidDescription, "gpus_per_rank: a fraction must be at"),
    ({"ranks": 2**64}, InvalidDescription, "ranks: must be <= 2147483647"),
    ({"arguments": ["\udc80"]}, InvalidDescription, "arguments: cannot be encoded as UTF-8"),
    ({"arguments": ["a\0b"]}, InvalidDescription, "arguments: must not contain a NUL"),
    ({"name": "\ud800"}, InvalidDescription, "name: cannot be encoded"),
    ({"environment": {"A=B": "1"}}, InvalidDescription, "environment: a variable name"),
    ({"environment": {"A": 1}}, TypeError, "environment must be a mapping of str to str"),
    ({"tags": {"x": "\udfff"}}, InvalidDescription, "tags: cannot be encoded"),
    ({"sandbox": []}, TypeError, r"sandbox must be a path \(str or os.PathLike of str\), got \[\]"),
    ({"sandbox": 5}, TypeError, "sandbox must be a path"),
    ({"sandbox": b"/tmp"}, TypeError, "sandbox must be a path"),
    ({"timeout": 1e300}, InvalidDescription, "timeout: must be > 0 s and at most"),
    ({"duration": float("nan")}, InvalidDescription, "duration: must be >= 0 s"),
    ({"retries": -1}, InvalidDescription, "retries: must be >= 0"),
    ({"partition": ""}, TypeError, "partition must be a non-empty str"),
    ({"launcher": "mpirun"}, InvalidDescription, "launcher: unknown launcher 'mpirun'; one of "
                                                 "local, srun, srun.pmix, srun.pmi2, mpiexec, "
                                                 "mpiexec.openmpi, mpiexec.mpich"),
    ({"launcher": 1}, InvalidDescription, "launcher: unknown launcher 1; one of local"),
])
def test_every_field_has_bounds_and_its_errors_name_it(fields: dict[str, object],
                                                       error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        TaskDescription(executable="/bin/true", **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(("fields", "match"), [
    ({"nodes": 10**7}, "nodes: must be <= 100000"),
    ({"heartbeat_timeout": float("inf")}, "heartbeat_timeout: must be > 0 s and at most"),
    ({"heartbeat_timeout": 7200}, "heartbeat_timeout: must be >= 2 s"),
    ({"runtime": float("nan")}, "runtime: must be > 0 s"),
    ({"cores_per_node": 10**6}, "cores_per_node: must be <= 4096"),
    ({"reserve_after": -1}, "reserve_after: must be >= 0 s"),
])
def test_a_pilot_has_bounds_too(fields: dict[str, object], match: str) -> None:
    with pytest.raises(InvalidDescription, match=match):
        PilotDescription(**fields)  # type: ignore[arg-type]


_NASTY = [0, 1, -1, 2**31, 2**64, 10**30, -(2**63), 0.0, -0.0, 0.5, 1e-300, 5e-324, 1e300,
          float("inf"), float("nan"), True, False, None, "", "x", "\udc80", "a\0b", "é", b"x",
          "srun", "mpiexec.mpich",
          [], ["a"], [1, 2.5], ["\udc80"], (), {}, {"k": "v"}, {"k": 1}, {1: "v"},
          {"A=B": "c"}, object()]
_FIELDS = ["arguments", "environment", "sandbox", "ranks", "cores_per_rank", "gpus_per_rank",
           "ranks_per_node", "mem_per_rank", "priority", "timeout", "duration", "name", "tags",
           "partition", "retries", "launcher"]


@settings(max_examples=600, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(_FIELDS), st.sampled_from(_NASTY)), max_size=3))
def test_what_constructs_can_be_sent_and_what_does_not_names_its_field(
        changes: list[tuple[str, object]]) -> None:
    fields = dict(changes)
    try:
        d = TaskDescription(executable="/bin/true", **fields)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        assert any(f"TaskDescription.{name}" in str(exc) for name in fields), exc
        return
    spec = d.to_spec("task.000001")
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(spec), type=TaskSpec) == spec


def test_a_tag_close_to_a_known_one_is_a_typo_other_tags_are_labels() -> None:
    with invalid("tags", match="unknown tag 'colocated': did you mean 'colocate'"):
        TaskDescription(executable="x", tags={"colocated": "g"})
    with invalid("tags", match="did you mean 'exclusive'"):
        TaskDescription(executable="x", tags={"exclusiv": "g"})
    assert TaskDescription(executable="x", tags={"stage": "1"}).tags == {"stage": "1"}
