"""Reading a Slurm job's nodes from its environment, as `scontrol show hostnames` does."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from pilotfish.pilots.slurm import (
    Allocation,
    SlurmEnvError,
    current_allocation,
    expand_cpus_per_node,
    expand_hostlist,
)


@pytest.mark.parametrize(("text", "hosts"), [
    ("node1", ["node1"]),
    ("node[1-4]", ["node1", "node2", "node3", "node4"]),
    ("node[1-2,7],gpu3", ["node1", "node2", "node7", "gpu3"]),
    ("nid[008-011]", ["nid008", "nid009", "nid010", "nid011"]),
    ("frontier[00001,00002]", ["frontier00001", "frontier00002"]),
    ("rack[1-2]-node[1-2]", ["rack1-node1", "rack1-node2", "rack2-node1", "rack2-node2"]),
    ("a,b", ["a", "b"]),
])
def test_host_lists_expand_in_order(text: str, hosts: list[str]) -> None:
    assert expand_hostlist(text) == hosts


@pytest.mark.parametrize("text", ["", "node[1-", "node1]", "node[3-1]", "node[a-b]"])
def test_what_is_no_host_list_is_refused(text: str) -> None:
    with pytest.raises(SlurmEnvError):
        expand_hostlist(text)


def test_host_lists_expand_as_scontrol_does() -> None:
    if shutil.which("scontrol") is None:
        pytest.skip("no scontrol here (start ../shared/slurm/start-local-slurm.sh)")
    text = "node[1-3,7],gpu[01-02],login,rack[1-2]-n[1-2]"
    run = subprocess.run(["scontrol", "show", "hostnames", text], capture_output=True,
                         text=True)
    if run.returncode != 0:  # (it reads Slurm's configuration first: none, none here)
        pytest.skip(f"scontrol cannot run here: {run.stderr.strip().splitlines()[-1:]}")
    assert expand_hostlist(text) == run.stdout.split()


def test_cpus_per_node() -> None:
    assert expand_cpus_per_node("16(x4),8") == [16, 16, 16, 16, 8]
    assert expand_cpus_per_node("64") == [64]
    with pytest.raises(SlurmEnvError, match="cannot read"):
        expand_cpus_per_node("16(x)")


def test_a_job_is_read_from_its_variables() -> None:
    assert current_allocation({}) is None
    env = {"SLURM_JOB_ID": "42", "SLURM_JOB_NODELIST": "node[1-3]",
           "SLURM_JOB_CPUS_PER_NODE": "16(x2),8"}
    assert current_allocation(env) == Allocation("42", ("node1", "node2", "node3"),
                                                 (16, 16, 8))
    with pytest.raises(SlurmEnvError, match=r"3 nodes .* but CPUs for 2"):
        current_allocation({**env, "SLURM_JOB_CPUS_PER_NODE": "16(x2)"})
    with pytest.raises(SlurmEnvError, match="SLURM_JOB_NODELIST is not set"):
        current_allocation({"SLURM_JOB_ID": "42"})
