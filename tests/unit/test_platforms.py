"""Platform profiles: shipped ones are right, user ones are found, bad ones are named."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pilotfish.cli import main
from pilotfish.description import InvalidDescription, PilotDescription
from pilotfish.launchers import LAUNCHERS
from pilotfish.platforms import (
    InvalidPlatform,
    available_platforms,
    load_platform,
    platform_to_toml,
    read_platform,
)

GOOD = """
name = "mycluster"
description = "a test cluster"
cores_per_node = 16
blocked_cores = [0]
threads_per_core = 2
gpus_per_node = 2
gpu_kind = "cuda"
mem_per_node_gib = 64
launcher = "srun"
batch_system = "slurm"
"""


def write(tmp_path: Path, text: str, name: str = "mycluster.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_the_shipped_profiles() -> None:
    known = available_platforms()
    assert {"local", "frontier", "perlmutter-gpu", "polaris", "aurora"} <= set(known)
    frontier = known["frontier"]
    assert frontier.cores_per_node == 64 and len(frontier.usable_cores) == 56
    assert frontier.blocked_cores == (0, 8, 16, 24, 32, 40, 48, 56)
    assert frontier.usable_cores[:8] == (1, 2, 3, 4, 5, 6, 7, 9)
    assert (frontier.gpus_per_node, frontier.gpu_env) == (8, "ROCR_VISIBLE_DEVICES")
    assert (frontier.mem_per_node, frontier.threads_per_core) == (512 * 1024, 2)
    assert (frontier.launcher, frontier.batch_system) == ("srun", "slurm")
    assert known["perlmutter-gpu"].gpu_env == "CUDA_VISIBLE_DEVICES"
    assert known["aurora"].gpu_env == "ZE_AFFINITY_MASK"
    assert len(known["aurora"].usable_cores) == 102
    local = known["local"]
    assert local.cores_per_node == os.cpu_count() and local.gpu_env is None
    assert local.launcher == "local"
    assert all(p.launcher in LAUNCHERS for p in known.values())  # names that line up
    # Where the agent listens for node executors: optional, the host's name by default.
    assert (frontier.interface, local.interface, known["slurm-local"].interface) == (
        "hsn0", "", "lo")


def test_a_profile_round_trips_through_toml(tmp_path: Path) -> None:
    for platform in available_platforms().values():
        again = read_platform(write(tmp_path, platform_to_toml(platform), "again.toml"))
        assert again.usable_cores == platform.usable_cores
        assert (again.gpus_per_node, again.gpu_kind, again.mem_per_node, again.interface) == (
            platform.gpus_per_node, platform.gpu_kind, platform.mem_per_node, platform.interface)


def test_user_profiles_are_found_and_override_shipped_ones(tmp_path: Path,
                                                           monkeypatch) -> None:
    write(tmp_path, GOOD)
    write(tmp_path, GOOD.replace('"mycluster"', '"frontier"').replace("= 16", "= 8"),
          "mine.toml")
    monkeypatch.setenv("PILOTFISH_PLATFORMS", str(tmp_path))
    known = available_platforms()
    assert known["mycluster"].usable_cores == tuple(range(1, 16))
    assert known["frontier"].cores_per_node == 8  # the user's wins
    assert load_platform("mycluster").source == str(tmp_path / "mycluster.toml")


def test_a_toml_path_is_a_platform(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    desc = PilotDescription(platform=str(path), nodes=2)
    assert (desc.cores_per_node, desc.gpus_per_node, desc.mem_per_node) == (15, 2, 64 * 1024)
    assert desc.core_ids == tuple(range(1, 16))


@pytest.mark.parametrize(("edit", "key"), [
    (("launcher", "lanucher"), "lanucher"),  # a typo is not ignored
    (("cores_per_node = 16", 'cores_per_node = "16"'), "cores_per_node"),
    (("blocked_cores = [0]", "blocked_cores = [16]"), "blocked_cores"),
    (("blocked_cores = [0]", "blocked_cores = [0, 0]"), "blocked_cores"),
    (("cores_per_node = 16", "cores_per_node = 1"), "blocked_cores"),  # none left
    (('gpu_kind = "cuda"', 'gpu_kind = "none"'), "gpu_kind"),
    (('gpu_kind = "cuda"', 'gpu_kind = "nvidia"'), "gpu_kind"),
    (("mem_per_node_gib = 64", "mem_per_node_gib = 0"), "mem_per_node_gib"),
    (('batch_system = "slurm"', 'batch_system = "sge"'), "batch_system"),
    (('name = "mycluster"', 'name = "My Cluster"'), "name"),
    (('launcher = "srun"', 'launcher = "builtin"'), "launcher"),  # not a launcher's name
    (('launcher = "srun"', 'launcher = "local"'), "launcher"),  # cannot span a cluster's nodes
    (('description = "a test cluster"\n', ""), "description"),
    (('batch_system = "slurm"', 'batch_system = "slurm"\ninterface = "hsn0 eth0"'),
     "interface"),
    (('batch_system = "slurm"', 'batch_system = "slurm"\ninterface = 0'), "interface"),
])
def test_a_bad_profile_names_the_file_and_key(tmp_path: Path, edit: tuple[str, str],
                                              key: str) -> None:
    path = write(tmp_path, GOOD.replace(*edit))
    with pytest.raises(InvalidPlatform, match=f"^mycluster.toml: {key}: "):
        read_platform(path)


def test_a_syntax_error_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidPlatform, match=r"^mycluster\.toml: not valid TOML"):
        read_platform(write(tmp_path, GOOD + "gpus = [\n"))


def test_a_bad_user_profile_is_refused_when_the_pilot_is_described(tmp_path: Path,
                                                                   monkeypatch) -> None:
    write(tmp_path, GOOD.replace("threads_per_core = 2", "threads_per_core = 0"))
    monkeypatch.setenv("PILOTFISH_PLATFORMS", str(tmp_path))
    with pytest.raises(InvalidDescription, match="threads_per_core: must be >= 1"):
        PilotDescription(platform="frontier", mode="local")


def test_a_pilot_takes_the_profile_and_overrides_it() -> None:
    desc = PilotDescription(platform="frontier", mode="local", nodes=2)
    assert (desc.cores_per_node, desc.gpus_per_node, desc.mem_per_node) == (56, 8, 512 * 1024)
    assert 0 not in desc.core_ids and 8 not in desc.core_ids and len(desc.core_ids) == 56
    small = PilotDescription(platform="frontier", mode="local", cores_per_node=8,
                             gpus_per_node=2, mem_per_node=1024)
    assert small.core_ids == (1, 2, 3, 4, 5, 6, 7, 9)  # blocked ids are still skipped
    assert (small.gpus_per_node, small.mem_per_node) == (2, 1024)
    assert small.profile.gpu_env == "ROCR_VISIBLE_DEVICES"


def test_the_platforms_command(capsys) -> None:
    assert main(["platforms"]) == 0
    out = capsys.readouterr().out
    assert "frontier" in out and "56 (64, 8 blocked) x SMT2" in out and "8 rocm" in out
    assert main(["platforms", "show", "frontier"]) == 0
    out = capsys.readouterr().out
    assert "blocked_cores = [0, 8, 16, 24, 32, 40, 48, 56]" in out
    assert 'gpu_kind = "rocm"' in out
    assert main(["platforms", "show", "summit"]) == 2
    assert "unknown platform 'summit'" in capsys.readouterr().err


def test_a_pilots_mode_says_where_its_nodes_come_from(monkeypatch) -> None:
    for name in ("SLURM_JOB_ID", "SLURM_JOBID"):
        monkeypatch.delenv(name, raising=False)
    assert PilotDescription().mode == "local"
    assert PilotDescription(platform="frontier", backend="simulated").mode == "local"
    with pytest.raises(InvalidDescription, match="'allocation' runs inside a Slurm job"):
        PilotDescription(platform="slurm-local", mode="allocation")
    with pytest.raises(InvalidDescription, match="needs a Slurm platform"):
        PilotDescription(mode="batch")
    with pytest.raises(InvalidDescription, match="mode: one of local, allocation, batch"):
        PilotDescription(mode="cloud")
    monkeypatch.setenv("PATH", "/nonexistent")  # no sbatch
    with pytest.raises(InvalidDescription, match=r"no Slurm here .*mode='local' for virtual"):
        PilotDescription(platform="slurm-local")
    # Inside a job: its nodes, all of them or the first few, their CPUs.
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    monkeypatch.setenv("SLURM_JOB_NODELIST", "node[1-4]")
    monkeypatch.setenv("SLURM_JOB_CPUS_PER_NODE", "16(x3),8")
    whole = PilotDescription(platform="slurm-local")
    assert whole.mode == "allocation" and whole.nodes == 4
    assert whole.hosts == ("node1", "node2", "node3", "node4")
    assert whole.cores_per_node == 8 and whole.gpus_per_node == 4  # the least of the job's
    first = PilotDescription(platform="slurm-local", nodes=2)
    assert first.hosts == ("node1", "node2") and first.cores_per_node == 16
    with pytest.raises(InvalidDescription, match="nodes: must be <= 4"):
        PilotDescription(platform="slurm-local", nodes=5)
    assert PilotDescription(platform="slurm-local", mode="local", nodes=2).hosts == ()


def test_batch_fields_are_checked() -> None:
    d = PilotDescription(platform="slurm-local", mode="local", queue="debug", account="p1",
                         batch_directives=["--exclusive", "--constraint=gpu"])
    assert d.batch_directives == ("--exclusive", "--constraint=gpu")
    with pytest.raises(TypeError, match="batch_directives must be a list of str"):
        PilotDescription(platform="slurm-local", mode="local", batch_directives="--exclusive")
    with pytest.raises(InvalidDescription, match="batch_directives: one line each"):
        PilotDescription(platform="slurm-local", mode="local", batch_directives=["a\nb"])
    with pytest.raises(TypeError, match="queue must be a non-empty str"):
        PilotDescription(platform="slurm-local", mode="local", queue="")


def test_the_agent_listens_for_node_executors_where_the_profile_says() -> None:
    import socket

    from pilotfish.backends.nodes.backend import listen_on

    assert listen_on("hsn0") == "hsn0"  # (ZeroMQ binds an interface by its name)
    assert listen_on("") == socket.gethostbyname(socket.gethostname())


def test_command_line_mistakes_are_one_line_not_a_traceback(capsys) -> None:
    assert main(["simulate", "--platform", "summit", "--tasks", "10"]) == 2
    assert capsys.readouterr().err.startswith(
        "pilotfish simulate: PilotDescription.platform: unknown platform 'summit'")
    for argv, says in ((["simulate", "--nodes", "0"], "--nodes: must be >= 1, got 0"),
                       (["run", "--tasks", "x"], "--tasks: not a whole number: 'x'")):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2 and says in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith("pilotfish 0.")
