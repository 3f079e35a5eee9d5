"""Launchers: how a placed task's ranks are started on their nodes (pure: data in, data out).

A launcher turns a task, its slot, the node layout and a base environment into the
processes to start (`Process`: an argv and a whole environment); the caller starts them
all in one process group. As Parsl's launchers, each is one function without I/O; unlike
them, they build argv lists, never shell strings.

- `local`: one process per rank on this host, each with its rank's environment (what the
  built-in backend runs).
- `srun`: one `srun` that starts every rank, inside a Slurm allocation.
- `mpiexec`: one `mpiexec` (Open MPI, or MPICH's Hydra) that starts every rank.
- `srun_per_node`: one `srun` running a command once on each of some hosts (how a Flux
  instance is started over a slice of an allocation).

`LAUNCHERS` names them as tasks (`TaskDescription(launcher=...)`) and platform profiles
(`launcher = ...`) do: `local`; `srun` (Slurm's default MPI plugin), `srun.pmix` and
`srun.pmi2` (`--mpi=pmix`: Open MPI and other PMIx builds; `--mpi=pmi2`: MPICH); `mpiexec`
(the `mpiexec` on PATH, Open MPI's options), `mpiexec.openmpi` and `mpiexec.mpich` (those
programs, Debian's names, with Open MPI's and Hydra's options). A name says which program
starts the ranks and how they are wired: the MPI a program was built with decides which
one it needs (an Open MPI program under `srun` without PMIx fails in MPI_Init; an MPICH
one under `srun` without PMI2 runs as unconnected singletons).

Every rank sees PILOTFISH_TASK_ID, PILOTFISH_RANK, PILOTFISH_RANKS, PILOTFISH_NODE,
PILOTFISH_NODES, PILOTFISH_CORES and the layout's GPU variable, as `task_environment`
sets them. Under `srun` and `mpiexec` one environment serves every rank, so a fixed `sh`
script (`_PER_RANK`) sets the per-rank ones in each rank: it takes the rank from the
launcher's own variable (SLURM_PROCID, OMPI_COMM_WORLD_RANK, PMI_RANK), picks that rank's
record ("node/cores/GPUs") out of a table passed as its arguments, and execs the task.

`hosts` maps the pilot's node indices (a slot's node plus `layout.first_node`) to host
names, in the allocation's order. `srun` and `mpiexec` number the ranks node by node in
that order (each node's ranks in slot order): a slot may list its nodes in another order
(most room first), and an MPI launcher inside an allocation may keep the allocation's
order of hosts rather than the one it was given. `local` keeps the slot's numbering.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:  # (types only: descriptions and profiles import this module's names)
    from .messages import TaskSpec
    from .resources import NodeLayout, Slot


@dataclass(frozen=True, slots=True, kw_only=True)
class Process:
    """One process to start: its argv and its whole environment."""

    argv: list[str]
    env: dict[str, str]


class Launcher(Protocol):
    def __call__(self, spec: TaskSpec, slot: Slot, layout: NodeLayout,
                 base: Mapping[str, str], hosts: Sequence[str] = ()) -> list[Process]: ...


def task_environment(base: Mapping[str, str], spec: TaskSpec, slot: Slot, rank: int,
                     layout: NodeLayout) -> dict[str, str]:
    """The environment of one rank: the user's, plus where and who it is."""
    env = dict(base)
    env.update(spec.environment)
    env["PILOTFISH_TASK_ID"] = spec.uid
    env["PILOTFISH_RANK"] = str(rank)
    env["PILOTFISH_RANKS"] = str(spec.ranks)
    first = layout.first_node
    env["PILOTFISH_NODE"] = str(first + slot.nodes[rank])
    env["PILOTFISH_NODES"] = ",".join([str(first + n) for n in slot.node_set])
    ids = layout.core_ids
    env["PILOTFISH_CORES"] = ",".join([str(ids[c]) for c in slot.cores[rank]])
    if layout.gpu_env:
        if slot.gpus:
            env[layout.gpu_env] = ",".join(map(str, slot.rank_gpu_ids(rank)))
        elif layout.gpus:
            env[layout.gpu_env] = ""  # asked for no GPU: see none
    return env


def _command(spec: TaskSpec) -> list[str]:
    if spec.executable is None:
        raise ValueError(f"task {spec.uid} has no executable")
    return [spec.executable, *spec.arguments]


# ---- local ------------------------------------------------------------------------------


def local(spec: TaskSpec, slot: Slot, layout: NodeLayout, base: Mapping[str, str],
          hosts: Sequence[str] = ()) -> list[Process]:
    """One process per rank on this host (`hosts` is not used: every node is this one).

    The ranks share one argv list; each gets its own environment, built once.
    """
    argv = _command(spec)
    return [Process(argv=argv, env=task_environment(base, spec, slot, rank, layout))
            for rank in range(spec.ranks)]


# ---- what srun and mpiexec share --------------------------------------------------------

# Run by every rank as `sh -c _PER_RANK pilotfish GPU_VARIABLE RANKS RECORD... COMMAND...`
# after a first line that sets PILOTFISH_RANK from the launcher's variable. A record is
# "node/cores/gpus" (cores and GPUs comma-separated; GPUs empty when the task has none);
# GPU_VARIABLE is empty when the script must leave the GPU variable alone.
_PER_RANK = """\
g=$1; n=$2; shift 2
pick() { shift "$(($1 + 1))"; record=$1; }
pick "$PILOTFISH_RANK" "$@"
shift "$n"
PILOTFISH_NODE=${record%%/*}; record=${record#*/}
PILOTFISH_CORES=${record%%/*}
export PILOTFISH_RANK PILOTFISH_NODE PILOTFISH_CORES
[ -z "$g" ] || export "$g=${record#*/}"
exec "$@"
"""
SRUN_SCRIPT = "PILOTFISH_RANK=${SLURM_PROCID:?not started by srun}\n" + _PER_RANK
OPENMPI_SCRIPT = "PILOTFISH_RANK=${OMPI_COMM_WORLD_RANK:?not started by Open MPI}\n" + _PER_RANK
MPICH_SCRIPT = "PILOTFISH_RANK=${PMI_RANK:?not started by a PMI launcher}\n" + _PER_RANK


def _rank_order(slot: Slot) -> list[int]:
    """The slot's ranks node by node in the pilot's node order, each node's as in the slot:
    the launcher's ranks 0, 1, ... are these."""
    return sorted(range(len(slot.nodes)), key=slot.nodes.__getitem__)


def _host_names(hosts: Sequence[str], slot: Slot, layout: NodeLayout, forbidden: str,
                tool: str) -> dict[int, str]:
    """The host name of each node of the slot; ValueError for a missing or unusable one."""
    names = {}
    for node in slot.node_set:
        index = layout.first_node + node
        if index >= len(hosts):
            raise ValueError(f"no host name for node {index} ({len(hosts)} hosts known)")
        names[node] = _usable(hosts[index], forbidden, tool)
    return names


def _usable(name: str, forbidden: str, tool: str) -> str:
    if not name or any(c in forbidden or c.isspace() for c in name):
        raise ValueError(f"host name {name!r} cannot be passed to {tool}")
    return name


def _shared_environment(spec: TaskSpec, slot: Slot, layout: NodeLayout,
                        base: Mapping[str, str]) -> dict[str, str]:
    """What every rank's environment has in common (`task_environment` less the per-rank
    variables, which `_PER_RANK` sets)."""
    env = dict(base)
    env.update(spec.environment)
    env["PILOTFISH_TASK_ID"] = spec.uid
    env["PILOTFISH_RANKS"] = str(spec.ranks)
    first = layout.first_node
    env["PILOTFISH_NODES"] = ",".join([str(first + n) for n in slot.node_set])
    if layout.gpu_env and layout.gpus and not slot.gpus:
        env[layout.gpu_env] = ""  # asked for no GPU: see none
    return env


def _per_rank(script: str, spec: TaskSpec, slot: Slot, layout: NodeLayout,
              order: list[int]) -> list[str]:
    """`sh -c script` with the per-rank table in launcher order, then the task's command."""
    ids, first = layout.core_ids, layout.first_node
    records = [f"{first + slot.nodes[r]}/{','.join([str(ids[c]) for c in slot.cores[r]])}"
               f"/{','.join(map(str, slot.rank_gpu_ids(r)))}" for r in order]
    # On GPU nodes a rank that asked for none is told so: the launcher may have set the
    # variable to every GPU of the step.
    gpu_env = layout.gpu_env if layout.gpu_env and (slot.gpus or layout.gpus) else ""
    return ["/bin/sh", "-c", script, "pilotfish", gpu_env, str(len(order)), *records,
            *_command(spec)]


def _node_counts(slot: Slot, order: list[int]) -> list[tuple[int, int]]:
    """(node, its ranks) in launcher order."""
    counts: dict[int, int] = {}
    for r in order:
        counts[slot.nodes[r]] = counts.get(slot.nodes[r], 0) + 1
    return list(counts.items())


def _same_binding(slot: Slot, layout: NodeLayout,
                  order: list[int]) -> list[tuple[int, ...]] | None:
    """The core ids of each local rank (its place on its node), if every node binds its
    ranks to the same ids (a node with fewer ranks, to the first of them); else None."""
    ids = layout.core_ids
    by_node: dict[int, list[tuple[int, ...]]] = {}
    for r in order:
        by_node.setdefault(slot.nodes[r], []).append(tuple([ids[c] for c in slot.cores[r]]))
    longest = max(by_node.values(), key=len)
    if all(cores == longest[:len(cores)] for cores in by_node.values()):
        return longest
    return None


# ---- srun -------------------------------------------------------------------------------

_SRUN_FORBIDDEN = ",/[]*"  # list separator, a file name, a host range, a repeat count


def srun(spec: TaskSpec, slot: Slot, layout: NodeLayout, base: Mapping[str, str],
         hosts: Sequence[str] = (), *, mpi: str | None = None) -> list[Process]:
    """One `srun` starting every rank of the task as one job step of the allocation.

    - Placement: `--distribution=arbitrary` with one `--nodelist` entry per rank lays the
      ranks out exactly as listed, whatever order Slurm sorts node names in (`--nodes`
      and `--ntasks-per-node` cannot go with it; the repeated names give both). The
      list grows with the ranks: past some 10,000 ranks of long names it exceeds what
      one argument may hold (128 KiB), where a SLURM_HOSTFILE would be needed.
    - Cores: no `--exact`, so the step holds every CPU of its nodes (Slurm honours
      explicit bindings only then) and `--overlap` shares them with the other tasks'
      steps; `--cpu-bind=map_cpu:` (one core a rank) or `mask_cpu:` binds each rank to
      exactly its slot's cores. Slurm applies one such map on every node (by local
      rank), so when nodes bind their ranks to different ids the ranks are not bound
      (`--cpu-bind=none`: they may run on any CPU of their node) and PILOTFISH_CORES
      still says which cores are theirs.
    - GPUs: a task with GPUs asks for every GPU of its nodes (`--gpus-per-node`),
      shared with other steps through `--overlap`, and each rank's GPU variable names
      exactly its slot's GPUs. `--gpus-per-task` would let Slurm choose the GPUs, which
      overlapping steps may then share with tasks the pilot placed there, and Slurm
      documents predictable GPU binding only when every GPU of the node is allocated.
    - Concurrent steps: `--overlap` is what lets them run at once. Without it a step
      waits while another holds its CPUs, which every step here does (no `--exact`), as
      does the pilot's own step of node executors (`--whole`): on Slurm 22.05, eight
      4-rank steps of `sleep 2` on the same two nodes took 2.4 s with `--overlap` and
      17 s without it, with or without `--exact`.
    - `mpi`: `--mpi=` (the PMI wiring the ranks' MPI needs); None leaves Slurm's
      `MpiDefault`.
    - `--kill-on-bad-exit=1`: one rank failing ends the others (as the built-in backend
      does); `--export=ALL`: the ranks get the environment of `srun`.

    Stopping: SIGTERM to `srun` makes it cancel the step, whose ranks Slurm kills on
    their nodes (even ranks that ignore SIGTERM), so killing the task's process group
    is enough.
    """
    order = _rank_order(slot)
    names = _host_names(hosts, slot, layout, _SRUN_FORBIDDEN, "srun")
    same = _same_binding(slot, layout, order)
    if same is None:
        bind = "none"
    elif all(len(cores) == 1 for cores in same):
        bind = "map_cpu:" + ",".join([str(cores[0]) for cores in same])
    else:
        bind = "mask_cpu:" + ",".join([hex(sum(1 << c for c in cores)) for cores in same])
    argv = ["srun", f"--ntasks={len(order)}", "--distribution=arbitrary",
            f"--nodelist={','.join([names[slot.nodes[r]] for r in order])}",
            f"--cpus-per-task={len(slot.cores[0])}", f"--cpu-bind={bind}"]
    if slot.gpus:
        argv.append(f"--gpus-per-node={layout.gpus}")
    if mpi is not None:
        argv.append(f"--mpi={mpi}")
    argv += ["--overlap", "--export=ALL", "--kill-on-bad-exit=1",
             *_per_rank(SRUN_SCRIPT, spec, slot, layout, order)]
    return [Process(argv=argv, env=_shared_environment(spec, slot, layout, base))]


def srun_per_node(hosts: Sequence[str], command: Sequence[str], *,
                  stdin_rank: int | None = None, whole: bool = False,
                  mpi: str | None = None) -> list[str]:
    """`command` once on each of `hosts` (one task a node), as one overlapping job step;
    `stdin_rank`: the one task `srun`'s standard input goes to (default: all of them);
    `whole`: the step holds all of each node (its CPUs and GPUs), for a command that
    starts the node's tasks (where Slurm confines a step to its resources, they would
    otherwise share the one CPU the step's task got); `mpi`: the PMI the command
    bootstraps with (`pmi2` for Flux's brokers)."""
    for name in hosts:
        _usable(name, _SRUN_FORBIDDEN, "srun")
    n = len(hosts)
    argv = ["srun", f"--nodes={n}", f"--ntasks={n}", "--ntasks-per-node=1",
            f"--nodelist={','.join(hosts)}", "--overlap"]
    if stdin_rank is not None:
        argv.append(f"--input={stdin_rank}")
    if whole:
        argv.append("--whole")
    if mpi is not None:
        argv.append(f"--mpi={mpi}")
    return [*argv, "--export=ALL", *command]


# ---- mpiexec ----------------------------------------------------------------------------


def mpiexec(spec: TaskSpec, slot: Slot, layout: NodeLayout, base: Mapping[str, str],
            hosts: Sequence[str] = (), *, flavor: Literal["openmpi", "mpich"] = "openmpi",
            program: str = "mpiexec") -> list[Process]:
    """One `mpiexec` (`program`) starting every rank of the task.

    Hosts go as `host:ranks` in launcher order (both flavors read the suffix as the
    number of ranks to place there, and fill hosts in order), with `-n` the total.

    - "openmpi": `--map-by slot` (fill each host's ranks before the next) and
      `--bind-to none` (Open MPI would otherwise bind ranks to cores of its own choice,
      blind to the other tasks on the node; exact cores need a rankfile, which is a
      file). Open MPI passes remote ranks only the variables named with `-x`: the
      task's own and the pilot's are named; the rest of the environment reaches remote
      nodes as Open MPI's launch agent carries it.
    - "mpich" (Hydra): passes the whole environment by default; ranks are bound to
      their slot's cores with `-bind-to user:` (one list applied on every node, by
      local rank) when every node binds the same ids, else not bound.

    GPUs: neither flavor binds them here, so each rank's GPU variable names its slot's
    GPUs.

    Inside a Slurm allocation both start their daemons on the task's nodes with `srun`
    (Open MPI's `orted`, Hydra's proxies), as a job step that holds every CPU of its
    nodes: `SLURM_OVERLAP=1` in `mpiexec`'s environment makes that `srun` overlap the
    other steps (without it two such tasks on a node ran one after the other). It
    reaches the ranks too, where it changes nothing but the `srun`s they may start
    themselves; outside Slurm nothing reads it.
    """
    order = _rank_order(slot)
    names = _host_names(hosts, slot, layout, ",:", "mpiexec")
    host_list = ",".join([f"{names[node]}:{n}" for node, n in _node_counts(slot, order)])
    env = _shared_environment(spec, slot, layout, base)
    env["SLURM_OVERLAP"] = "1"
    if flavor == "openmpi":
        argv = [program, "-n", str(len(order)), "--host", host_list, "--map-by", "slot",
                "--bind-to", "none"]
        exported = [*spec.environment, "PILOTFISH_TASK_ID", "PILOTFISH_RANKS",
                    "PILOTFISH_NODES"]
        if layout.gpu_env and layout.gpus and not slot.gpus:
            exported.append(layout.gpu_env)  # set empty: it sees no GPU
        for name in exported:
            argv += ["-x", name]
        script = OPENMPI_SCRIPT
    elif flavor == "mpich":
        argv = [program, "-n", str(len(order)), "-hosts", host_list]
        same = _same_binding(slot, layout, order)
        if same is not None:
            argv += ["-bind-to", "user:" + ",".join(["+".join(map(str, c)) for c in same])]
        script = MPICH_SCRIPT
    else:
        raise ValueError(f"unknown mpiexec flavor {flavor!r} (openmpi or mpich)")
    argv += _per_rank(script, spec, slot, layout, order)
    return [Process(argv=argv, env=env)]


LAUNCHERS: dict[str, Launcher] = {
    "local": local,
    "srun": srun,
    "srun.pmix": functools.partial(srun, mpi="pmix"),
    "srun.pmi2": functools.partial(srun, mpi="pmi2"),
    "mpiexec": mpiexec,
    "mpiexec.openmpi": functools.partial(mpiexec, program="mpiexec.openmpi"),
    "mpiexec.mpich": functools.partial(mpiexec, flavor="mpich", program="mpiexec.mpich"),
}
"""Every launcher by the name tasks and platform profiles give it."""
SRUN_LAUNCHERS = tuple(name for name in LAUNCHERS if name.split(".")[0] == "srun")


def check_launcher(name: object) -> str | None:
    """None if `name` names a launcher, else what is wrong with it (the choices)."""
    if isinstance(name, str) and name in LAUNCHERS:
        return None
    return f"unknown launcher {name!r}; one of {', '.join(LAUNCHERS)}"
