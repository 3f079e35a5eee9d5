"""What a Slurm job says about its nodes, read from its environment (pure: no command run).

Inside a job (`salloc` or `sbatch`), Slurm sets `SLURM_JOB_ID`, the job's nodes in its
compressed host-list form (`SLURM_JOB_NODELIST`, e.g. `node[1-4],gpu[01-02]`) and the
CPUs it holds on each (`SLURM_JOB_CPUS_PER_NODE`, e.g. `16(x4),8`). `expand_hostlist`
reads a host list as `scontrol show hostnames` does, without running it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

_RANGE = re.compile(r"^(\d+)(?:-(\d+))?$")
_CPUS = re.compile(r"^(\d+)(?:\(x(\d+)\))?$")


class SlurmEnvError(ValueError):
    """A Slurm variable this module cannot read; the message quotes it."""


def expand_hostlist(text: str) -> list[str]:
    """`node[1-3,07],gpu1` -> node1, node2, node3, node07, gpu1 (ranges keep their zero
    padding; several bracket groups in one name expand as a product, in order)."""
    hosts: list[str] = []
    for item in _split_top(text.strip()):
        hosts.extend(_expand_one(item))
    if not hosts:
        raise SlurmEnvError(f"an empty host list: {text!r}")
    return hosts


def _split_top(text: str) -> list[str]:
    """Split at the commas outside brackets."""
    items, depth, start = [], 0, 0
    for i, c in enumerate(text):
        if c == "[":
            depth += 1
        elif c == "]":
            depth -= 1
            if depth < 0:
                raise SlurmEnvError(f"unbalanced brackets in the host list {text!r}")
        elif c == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    if depth:
        raise SlurmEnvError(f"unbalanced brackets in the host list {text!r}")
    items.append(text[start:])
    return [item for item in items if item]


def _expand_one(item: str) -> list[str]:
    open_ = item.find("[")
    if open_ < 0:
        return [item]
    close = item.index("]", open_)
    prefix, ranges, rest = item[:open_], item[open_ + 1:close], item[close + 1:]
    out: list[str] = []
    for part in ranges.split(","):
        match = _RANGE.match(part.strip())
        if match is None:
            raise SlurmEnvError(f"cannot read the range {part!r} in {item!r}")
        first, last = match.group(1), match.group(2) or match.group(1)
        if int(last) < int(first):
            raise SlurmEnvError(f"a range that runs backwards: {part!r} in {item!r}")
        width = len(first) if first.startswith("0") else 0
        for n in range(int(first), int(last) + 1):
            out.extend(prefix + str(n).zfill(width) + tail for tail in _expand_one(rest))
    return out


def expand_cpus_per_node(text: str) -> list[int]:
    """`16(x4),8` -> [16, 16, 16, 16, 8]."""
    counts: list[int] = []
    for part in text.split(","):
        match = _CPUS.match(part.strip())
        if match is None:
            raise SlurmEnvError(f"cannot read CPUs per node {part!r} in {text!r}")
        counts.extend([int(match.group(1))] * int(match.group(2) or 1))
    return counts


@dataclass(frozen=True, slots=True)
class Allocation:
    """A Slurm job's nodes, in the job's order, and the CPUs it holds on each."""

    job_id: str
    hosts: tuple[str, ...]
    cpus: tuple[int, ...]


def current_allocation(env: Mapping[str, str]) -> Allocation | None:
    """The job these variables describe, or None outside a Slurm job."""
    job = env.get("SLURM_JOB_ID") or env.get("SLURM_JOBID")
    if not job:
        return None
    nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
    if not nodelist:
        raise SlurmEnvError(f"Slurm job {job}: SLURM_JOB_NODELIST is not set")
    hosts = expand_hostlist(nodelist)
    cpus_text = env.get("SLURM_JOB_CPUS_PER_NODE")
    cpus = expand_cpus_per_node(cpus_text) if cpus_text else []
    if cpus and len(cpus) != len(hosts):
        raise SlurmEnvError(f"Slurm job {job}: {len(hosts)} nodes ({nodelist}) but CPUs for "
                            f"{len(cpus)} ({cpus_text})")
    return Allocation(job, tuple(hosts), tuple(cpus))
