"""The backend registry: one module and one entry make a backend, run through a real pilot."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import pilotfish as pf
from pilotfish.backends import registry
from pilotfish.backends.registry import Abilities, BackendEntry
from pilotfish.cli import main

TD, PS = pf.TaskDescription, pf.PartitionSpec

TOY = '''
"""A toy backend: "runs" an executable by saying what it would run, and where."""

import time

from pilotfish.backends.base import TaskFinished, TaskStarted
from pilotfish.states import TaskState


def build(context, partition):
    return Toy(partition.name, partition.first)


class Toy:
    workers_per_node = 0

    def __init__(self, name, first):
        self.name, self.first = name, first

    def start(self, reactor, emit):
        self.emit = emit

    def launch(self, tasks):
        for placed in tasks:
            now = time.time()
            argv = " ".join([placed.spec.executable, *placed.spec.arguments])
            node = self.first + placed.slot.nodes[0]
            self.emit(TaskStarted(placed.spec.uid, now))
            self.emit(TaskFinished(placed.spec.uid, TaskState.DONE, now, now, exit_code=0,
                                   stdout=f"{self.name} ran {argv!r} on node {node}"))

    def dispatch(self, tasks):
        raise RuntimeError("the toy runs no functions")

    def cancel(self, uids):
        pass

    def stop(self, timeout):
        pass
'''


@pytest.fixture
def toy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[BackendEntry]:
    """The toy's module on the path, and its entry in the registry (for this test only)."""
    (tmp_path / "toy_backend.py").write_text(TOY)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "_entries", dict(registry._entries))
    entry = BackendEntry(name="toy", module="toy_backend", summary="says what it would run",
                         abilities=Abilities(functions=False, multi_rank=False, gpus=False))
    registry.register(entry)
    yield entry
    registry.preferred.cache_clear()


def test_a_backend_is_one_module_and_one_entry(session: pf.Session, toy: BackendEntry) -> None:
    session.start_pilot(pf.PilotDescription(
        nodes=3, cores_per_node=2, partitions=[PS(backend="builtin", nodes=1),
                                               PS(backend="toy", nodes=2)]))
    ran = session.submit([TD(executable="/bin/echo", arguments=[str(i)], partition="toy")
                          for i in range(4)])
    function = session.submit(TD(function=pow, args=(2, 5)))  # the toy runs none
    gpu = session.submit(TD(executable="/bin/true", gpus_per_rank=1, partition="toy"))
    assert session.wait(timeout=60)
    assert [t.state for t in ran] == [pf.TaskState.DONE] * 4
    assert ran[0].stdout == "toy ran '/bin/echo 0' on node 1"  # the toy's nodes: 1 and 2
    assert {t.partition for t in ran} == {"toy"}
    assert function.result() == 32 and function.partition == "builtin"
    assert gpu.state is pf.TaskState.FAILED
    assert gpu.error == "no partition for it: partition 'toy' (toy) runs no GPU tasks"


def test_a_pilot_of_one_backend(session: pf.Session, toy: BackendEntry) -> None:
    session.start_pilot(pf.PilotDescription(backend="toy", cores_per_node=2))
    task = session.submit(TD(executable="hostname"))
    assert task.result(timeout=60) == 0 and task.partition == "toy"
    assert task.stdout == "toy ran 'hostname' on node 0"


def test_the_registry_says_what_each_backend_runs_and_where_it_cannot(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["backends"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:3] == ["name", "here", "runs"]
    for entry in registry.entries():
        line = next(line for line in out.splitlines() if line.startswith(entry.name + " "))
        why = entry.unavailable()
        assert ("yes" in line.split()[1]) is (why is None)
    assert registry.get("flux").abilities.places_itself
    with pytest.raises(KeyError, match="unknown backend 'nope'; known: flux, dragon"):
        registry.get("nope")


def test_an_entry_is_checked_and_travels_as_plain_data() -> None:
    with pytest.raises(ValueError, match="preferred_for"):
        BackendEntry(name="x", module="m", abilities=Abilities(), summary="",
                     preferred_for=("everything",))
    dragon = registry.get("dragon")
    assert BackendEntry.from_dict(dragon.to_dict()) == dragon
    for name in ("dragon", "srun", "builtin"):  # through JSON, as the agent gets them
        entry = registry.get(name)
        assert BackendEntry.from_dict(json.loads(json.dumps(entry.to_dict()))) == entry
    with pytest.raises(ValueError, match="unknown backend 'toy'"):
        PS(backend="toy")


def test_importing_pilotfish_loads_no_backend() -> None:
    code = ("import sys, pilotfish as pf; pf.PilotDescription(nodes=2); "
            "print(sorted(m for m in sys.modules if m.startswith('pilotfish.backends.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    assert out.strip() == "['pilotfish.backends.registry']"
