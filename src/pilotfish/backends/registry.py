"""Every backend, declared once: its name, what it can run, how it is built, whether it
can run here.

Descriptions, partitions, routing, the agent and the CLI read this table. Adding a
backend is one module and one entry: the module defines `build(context, partition)`
(returning an object of the `base.Backend` protocol), and the entry names it. A backend
of your own is added at run time with `register(entry)`; the client passes the entries
it registered to the pilot's agent, which imports the module there (it must be
importable from the client's `sys.path`).

Entries are listed in order of routing preference: a task goes to the first backend
kind (among the pilot's partitions that can run it) whose entry prefers its kind
(`preferred_for`); see routing.py.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from ..launchers import SRUN_LAUNCHERS

TASK_KINDS = ("functions", "multi-rank", "executables")  # what `preferred_for` names


class UnknownBackend(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True, slots=True)
class Abilities:
    executables: bool = True
    functions: bool = True
    multi_rank: bool = True  # tasks of several ranks, which may span nodes
    gpus: bool = True
    shared_gpus: bool = True  # fractional GPUs per rank
    places_itself: bool = False  # the runtime places tasks (Flux); else it binds to slots
    function_workers: bool = False  # plain functions are fed ahead to persistent workers
    # The launchers (launchers.LAUNCHERS) a task may name here: None, any (on real nodes
    # they start its ranks; virtual nodes ignore them); () none (the runtime starts ranks
    # its own way, and a task naming a launcher goes to another partition).
    launchers: tuple[str, ...] | None = None

    @property
    def runs_anything(self) -> bool:
        return (self.executables and self.functions and self.multi_rank and self.gpus
                and self.shared_gpus and self.launchers is None)

    def why_not(self, kind: str, ranks: int = 1, gpus_per_rank: float = 0.0,
                launcher: str | None = None) -> str | None:
        """None if this backend can run such a task, else why not."""
        if launcher is not None and self.launchers is not None and (
                launcher not in self.launchers):
            return (f"starts no ranks through launcher {launcher!r}"
                    + (f" (only {', '.join(self.launchers)})" if self.launchers else ""))
        if kind == "function" and not self.functions:
            return "runs no Python functions"
        if kind == "executable" and not self.executables:
            return "runs no executables"
        if ranks > 1 and not self.multi_rank:
            return "runs no multi-rank tasks"
        if gpus_per_rank and not self.gpus:
            return "runs no GPU tasks"
        if 0 < gpus_per_rank < 1 and not self.shared_gpus:
            return "cannot share a GPU between ranks"
        return None


@dataclass(frozen=True, slots=True, kw_only=True)
class BackendEntry:
    name: str
    module: str  # where `build(context, partition) -> base.Backend` is defined
    abilities: Abilities
    summary: str  # one line, for `pilotfish backends`
    preferred_for: tuple[str, ...] = ()  # kinds of TASK_KINDS routing sends here first
    function_runners: tuple[str, ...] = ()  # PartitionSpec(functions=...): the default first
    check: str | None = None  # "module:function" saying why it cannot run here (None: it can)
    real_nodes: bool = False  # runs only on a pilot holding real nodes (not mode="local")

    def __post_init__(self) -> None:
        unknown = set(self.preferred_for) - set(TASK_KINDS)
        if unknown:
            raise ValueError(f"backend {self.name!r}: preferred_for takes {TASK_KINDS}, got "
                             f"{sorted(unknown)}")

    def unavailable(self) -> str | None:
        """None if this backend can run here, else why not (and how to get it)."""
        if self.check is None:
            return None
        module, _, function = self.check.partition(":")
        return importlib.import_module(module).__dict__[function]()  # type: ignore[no-any-return]

    def load(self) -> ModuleType:
        """The backend's module: `load().build(context, partition)` makes an instance."""
        return importlib.import_module(self.module)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BackendEntry:
        abilities = data["abilities"]
        if abilities.get("launchers") is not None:
            abilities = {**abilities, "launchers": tuple(abilities["launchers"])}
        return cls(**{**data, "abilities": Abilities(**abilities),
                      "preferred_for": tuple(data["preferred_for"]),
                      "function_runners": tuple(data["function_runners"])})


SHIPPED = (
    BackendEntry(
        name="flux", module="pilotfish.backends.flux.backend",
        abilities=Abilities(functions=False, shared_gpus=False, places_itself=True,
                            launchers=()),
        summary="a Flux instance per partition: executables and MPI, placed by Flux",
        preferred_for=("multi-rank", "executables"), check="pilotfish.backends.flux:unavailable"),
    BackendEntry(
        name="dragon", module="pilotfish.backends.dragon.backend",
        abilities=Abilities(shared_gpus=False, function_workers=True, launchers=()),
        summary="a Dragon runtime per partition: functions (workers or a Dragon pool), "
                "processes, PMI groups",
        preferred_for=("functions", "multi-rank"), function_runners=("workers", "pool"),
        check="pilotfish.backends.dragon:unavailable"),
    BackendEntry(
        name="builtin", module="pilotfish.backends.builtin",
        abilities=Abilities(function_workers=True),
        summary="the embedded default: local processes (posix_spawn) and function workers",
        preferred_for=TASK_KINDS),
    BackendEntry(
        name="srun", module="pilotfish.backends.srun",
        abilities=Abilities(functions=False, launchers=SRUN_LAUNCHERS),
        summary="every task one Slurm job step (srun) on its nodes: the baseline, in the "
                "same pilot",
        check="pilotfish.backends.srun:unavailable", real_nodes=True),
    BackendEntry(
        name="simulated", module="pilotfish.backends.simulated",
        abilities=Abilities(),
        summary="runs nothing: tasks take their duration on a virtual clock",
        preferred_for=TASK_KINDS),
)
_entries: dict[str, BackendEntry] = {e.name: e for e in SHIPPED}


def register(entry: BackendEntry) -> None:
    """Add a backend of your own (or replace one of the same name), after the shipped ones."""
    if not isinstance(entry, BackendEntry):
        raise TypeError(f"register takes a BackendEntry, got {type(entry).__name__}")
    _entries[entry.name] = entry
    preferred.cache_clear()


def get(name: str) -> BackendEntry:
    try:
        return _entries[name]
    except KeyError:
        raise UnknownBackend(f"unknown backend {name!r}; known: {', '.join(_entries)}") from None


def names() -> tuple[str, ...]:
    return tuple(_entries)


def entries() -> tuple[BackendEntry, ...]:
    return tuple(_entries.values())


def registered() -> list[BackendEntry]:
    """The entries added at run time (the agent must be told of them)."""
    return [e for name, e in _entries.items() if e not in SHIPPED]


@functools.cache
def preferred(kind: str) -> tuple[str, ...]:
    """The backends that prefer tasks of `kind` (of TASK_KINDS), in order."""
    return tuple(e.name for e in _entries.values() if kind in e.preferred_for)
