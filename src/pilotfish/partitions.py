"""How a pilot's nodes are split between partitions, each run by one backend instance (pure).

`PartitionSpec(backend, nodes, instances, name)` asks for a share of the pilot: `nodes`
is a count, a fraction of the pilot's nodes (0 < f < 1), or None for what is left
(split evenly between the specs that say None); nodes left over go to a built-in
partition of their own, so that every node of the pilot is used. A spec with `instances=k` becomes k
partitions over consecutive slices of its nodes, named `name.0` .. `name.k-1` (e.g.
two Flux instances over halves of a Flux partition). `functions` says how a partition
runs plain Python functions where its backend offers a choice (backends/registry.py):
a Dragon partition's "workers" (the default: pilotfish's function workers, started as
Dragon processes) or "pool" (a Dragon `multiprocessing` pool); see
backends/dragon/backend.py for what each costs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .backends import registry


class PartitionError(ValueError):
    """A split that cannot be made; the message says which spec and why."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PartitionSpec:
    backend: str
    nodes: int | float | None = None
    instances: int = 1
    name: str | None = None
    functions: str | None = None  # Dragon: "workers" (default) or "pool"
    # Simulated pilots: this partition's launches (latency s, launches a second), in place
    # of its backend's model (backends/simulated.py MODELS): e.g. a cluster's measured srun
    launch: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.backend, str) or self.backend not in registry.names():
            raise PartitionError(f"PartitionSpec.backend: unknown backend {self.backend!r}; "
                                 f"known: {', '.join(registry.names())}")
        n = self.nodes
        if n is not None and (isinstance(n, bool) or not isinstance(n, int | float)):
            raise PartitionError(f"PartitionSpec.nodes: a count, a fraction or None, got {n!r}")
        if isinstance(n, float) and not 0 < n < 1:
            raise PartitionError(f"PartitionSpec.nodes: a fraction must be in (0, 1), got {n}")
        if isinstance(n, int) and n < 1:
            raise PartitionError(f"PartitionSpec.nodes: must be >= 1, got {n}")
        if isinstance(self.instances, bool) or not isinstance(self.instances, int) or (
                self.instances < 1):
            raise PartitionError(f"PartitionSpec.instances: must be an int >= 1, got "
                                 f"{self.instances!r}")
        if self.name is not None and (not isinstance(self.name, str) or not self.name
                                      or "." in self.name):
            raise PartitionError(f"PartitionSpec.name: a non-empty str without '.', got "
                                 f"{self.name!r}")
        if self.launch is not None and not (
                isinstance(self.launch, tuple) and len(self.launch) == 2
                and all(isinstance(x, int | float) and not isinstance(x, bool)
                        for x in self.launch)
                and self.launch[0] >= 0 and self.launch[1] > 0):
            raise PartitionError(f"PartitionSpec.launch: (latency s >= 0, launches a second "
                                 f"> 0), got {self.launch!r}")
        runners = registry.get(self.backend).function_runners
        if self.functions is not None and self.functions not in runners:
            choices = (f"one of {', '.join(map(repr, runners))}" if runners
                       else "None (only Dragon partitions choose)")
            raise PartitionError(f"PartitionSpec.functions: {choices}, got {self.functions!r}")


@dataclass(frozen=True, slots=True)
class Partition:
    """One backend instance and the pilot nodes it owns: `first` .. `first + nodes - 1`."""

    name: str
    backend: str
    first: int
    nodes: int
    functions: str | None = None  # how plain functions run, where the backend has a choice
    launch: tuple[float, float] | None = None  # simulated pilots: (latency, rate) to model

    @property
    def node_ids(self) -> range:
        return range(self.first, self.first + self.nodes)


def resolve_partitions(specs: tuple[PartitionSpec, ...], nodes: int) -> list[Partition]:
    """Give each spec its nodes, in order; without specs, one built-in partition of all.
    Every node is used: nodes that no spec takes (counts or fractions that leave some)
    go to a built-in partition after the others, named "builtin" (else "builtin-rest")."""
    if not specs:
        return [Partition("builtin", "builtin", 0, nodes)]
    fractions = sum(s.nodes for s in specs if isinstance(s.nodes, float))
    if fractions > 1:
        raise PartitionError(f"partitions ask for fractions that add up to {fractions:g} "
                             "of the pilot's nodes, more than all of them")
    counts: list[int | None] = []
    for spec in specs:
        if isinstance(spec.nodes, float):
            counts.append(max(1, math.floor(spec.nodes * nodes)))
        else:
            counts.append(spec.nodes)
    fixed = sum(c for c in counts if c is not None)
    rest = [i for i, c in enumerate(counts) if c is None]
    if fixed + len(rest) > nodes:
        raise PartitionError(f"partitions ask for {fixed} node(s)"
                             + (f" plus at least {len(rest)} for the rest" if rest else "")
                             + f", the pilot has {nodes}")
    left = nodes - fixed
    if left and not rest:  # nodes no spec takes: a built-in partition of their own
        taken = {s.name or s.backend for s in specs}
        specs = (*specs, PartitionSpec(backend="builtin", nodes=left,
                                       name="builtin" if "builtin" not in taken
                                       else "builtin-rest"))
        counts.append(left)
    for k, i in enumerate(rest):  # the rest, split evenly, the first ones taking the spare
        counts[i] = left // len(rest) + (1 if k < left % len(rest) else 0)
    names: dict[str, int] = {}
    for spec in specs:
        base = spec.name or spec.backend
        names[base] = names.get(base, 0) + 1
    seen: dict[str, int] = {}
    out: list[Partition] = []
    first = 0
    for spec, count in zip(specs, counts, strict=True):
        assert count is not None
        base = spec.name or spec.backend
        if spec.name is not None and names[base] > 1:
            raise PartitionError(f"two partitions are named {base!r}")
        seen[base] = seen.get(base, 0) + 1
        if names[base] > 1:  # unnamed specs of the same backend: builtin-1, builtin-2
            base = f"{base}-{seen[base]}"
        if spec.instances > count:
            raise PartitionError(f"partition {base!r}: {spec.instances} instances over "
                                 f"{count} node(s); each instance needs a node")
        for k in range(spec.instances):
            share = count // spec.instances + (1 if k < count % spec.instances else 0)
            name = base if spec.instances == 1 else f"{base}.{k}"
            runner = spec.functions or next(iter(registry.get(spec.backend).function_runners),
                                            None)
            out.append(Partition(name, spec.backend, first, share, runner, spec.launch))
            first += share
    return out
