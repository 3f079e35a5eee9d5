"""Which partition runs a task (pure): what each backend can run, and a policy to choose.

Default rules (`RoutingPolicy`):

1. A task pinned to a partition (`TaskDescription(partition=...)`, or the tag
   `{"partition": ...}`) goes there, or fails at once if that partition does not exist
   or cannot run it.
2. Otherwise only partitions that can run it are candidates (functions, executables,
   ranks that may span nodes, GPUs, shared GPUs, the launcher it names, and big enough
   to ever hold it); none: it fails at once, saying why each partition cannot.
3. Functions go to the first backend kind of `function_backends` present (Dragon before
   the built-in function workers); tasks of several ranks to the first of
   `parallel_backends` (Flux first); each among partitions of that kind. Other tasks
   (single-rank executables) go to partitions of `executable_backends` if there are
   any: Dragon starts each process through its runtime's services (about 25/s on a
   workstation, against 1,700/s for the built-in launcher), so it gets them only when
   nothing else can run them. In each case, the least loaded (unfinished tasks per
   core) of those. Late binding between partitions follows the same preference
   (`may_move`) and moves what waits (`steal_count`).

What each backend can run, and which kinds of task it prefers (the default preference
tuples, in the registry's order), are declared in backends/registry.py. Subclass
`RoutingPolicy` and override `choose` (or the preference tuples) to change the rules;
the agent gives every task to `route`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from .backends import registry
from .partitions import Partition

# Late binding takes at most STEAL_MAX tasks per look, and from a partition with all its
# cores busy at least STEAL_MIN_QUEUE.
STEAL_MIN_QUEUE, STEAL_MAX = 2, 1024


@dataclass(frozen=True, slots=True)
class TaskTraits:
    """What routing needs to know of a task."""

    kind: str  # "executable" | "function"
    ranks: int = 1
    gpus_per_rank: float = 0.0
    partition: str | None = None  # pinned
    launcher: str | None = None  # named by the task (launchers.LAUNCHERS)


@dataclass(frozen=True, slots=True)
class Reject:
    reason: str


def why_not(traits: TaskTraits, backend: str) -> str | None:
    """None if a partition of this backend can run the task, else why not."""
    return registry.get(backend).abilities.why_not(traits.kind, traits.ranks,
                                                    traits.gpus_per_rank, traits.launcher)


class RoutingPolicy:
    # The backends preferred for each kind of task, first first (None: the registry's).
    function_backends: tuple[str, ...] | None = None
    parallel_backends: tuple[str, ...] | None = None
    executable_backends: tuple[str, ...] | None = None

    def preferred(self, traits: TaskTraits) -> tuple[str, ...]:
        """The backends preferred for this task, in order."""
        if traits.kind == "function":
            mine, kind = self.function_backends, "functions"
        elif traits.ranks > 1:
            mine, kind = self.parallel_backends, "multi-rank"
        else:
            mine, kind = self.executable_backends, "executables"
        return mine if mine is not None else registry.preferred(kind)

    def route(self, traits: TaskTraits, partitions: Sequence[Partition],
              load: Mapping[str, float],
              too_small: Callable[[Partition], str | None] = lambda p: None) -> str | Reject:
        """The name of the partition for this task, or why none can take it.

        `too_small(p)` says why partition p could never hold the task (None: it could).
        """
        if traits.partition is not None:
            pinned = [p for p in partitions if p.name == traits.partition]
            if not pinned:
                return Reject(f"no partition {traits.partition!r} (partitions: "
                              f"{', '.join(p.name for p in partitions)})")
            reason = why_not(traits, pinned[0].backend) or too_small(pinned[0])
            if reason is not None:
                return Reject(f"partition {traits.partition!r} ({pinned[0].backend}) {reason}")
            return traits.partition
        reasons = {p.name: why_not(traits, p.backend) or too_small(p) for p in partitions}
        able = [p for p in partitions if reasons[p.name] is None]
        if not able:
            return Reject("no partition can run it: " + "; ".join(
                f"{p.name} ({p.backend}) {reasons[p.name]}" for p in partitions))
        return self.choose(traits, able, load).name

    def choose(self, traits: TaskTraits, able: Sequence[Partition],
               load: Mapping[str, float]) -> Partition:
        """Pick among partitions that can run the task (at least one)."""
        order = self.preferred(traits)
        if traits.kind == "function" or traits.ranks > 1:
            for backend in order:
                of_kind = [p for p in able if p.backend == backend]
                if of_kind:
                    able = of_kind
                    break
        else:  # single-rank executables: any preferred kind, the least loaded
            able = [p for p in able if p.backend in order] or able
        return min(able, key=lambda p: (load.get(p.name, 0.0), p.first))

    def may_move(self, traits: TaskTraits, source: Partition, target: Partition) -> bool:
        """Whether late binding may move a queued task from `source` to an idle `target`
        (both can run it). By default what routing avoids, this does too: a single-rank
        executable does not leave a partition of `executable_backends` for one of
        another backend (on a shared machine Dragon's slow launches also take the CPU
        the built-in launcher needed: h1 in benchmarks/README.md)."""
        if traits.kind == "function" or traits.ranks > 1:
            return True
        order = self.preferred(traits)
        return target.backend in order or source.backend not in order


def steal_count(thief_queued: int, thief_idle: bool, thief_cores: int, victim_queued: int,
                victim_cores: int) -> int:
    """Late binding: how many queued tasks a partition (the thief) takes from the most
    backlogged other one (the victim), so that a fast partition never idles while a slow
    one holds a backlog. Routing decides where work starts; this moves what waits.

    - A thief with nothing queued takes the newest half of the victim's queue (at most
      STEAL_MAX per look); with a free core, even a single waiting task. With all its
      cores busy, only when the victim's queue is longer than the victim's cores: a
      shorter one starts as the victim's running tasks end, and moved behind the thief's
      it could start later than it would have (at the end of a run of equal tasks, one
      core ran a task more while another idled).
    - A thief whose queued tasks wait while some of its cores idle (functions waiting for
      its few pool workers, a big task waiting for room) takes up to its core count.
    """
    if thief_queued and not thief_idle:
        return 0
    if victim_queued < (1 if thief_idle else max(STEAL_MIN_QUEUE, victim_cores + 1)):
        return 0
    n = min(max(victim_queued // 2, 1), STEAL_MAX)
    return min(n, thief_cores) if thief_queued else n
