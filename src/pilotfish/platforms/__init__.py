"""Platform profiles: the shape of a real machine's nodes, read from TOML.

Shipped profiles live next to this file (`local`, `frontier`, `perlmutter-gpu`,
`polaris`, `aurora`). A user adds their own: every `*.toml` in the directories (or files)
listed in `PILOTFISH_PLATFORMS` (os.pathsep-separated) and in
`~/.config/pilotfish/platforms/`; a user profile of the same name overrides a shipped
one. `PilotDescription(platform=...)` also takes the path of a `.toml` file.

Every key is checked: an unknown key (a typo), a wrong type or an impossible value is an
`InvalidPlatform` naming the file and the key. `interface` (optional) names the network
interface the agent listens on for its node executors (Frontier's `hsn0`, `lo` where
every node is this host; default: the address of the host's name). `launcher` names a launcher of
`launchers.LAUNCHERS`: how a task's ranks spanning real nodes are started when the task
names none ("local" only where there is no batch system).
"""

from __future__ import annotations

import functools
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..launchers import LAUNCHERS

GPU_KINDS = {"none": None, "cuda": "CUDA_VISIBLE_DEVICES", "rocm": "ROCR_VISIBLE_DEVICES",
             "level_zero": "ZE_AFFINITY_MASK"}
BATCH_SYSTEMS = ("none", "slurm", "pbs", "lsf", "flux")
_SHIPPED = Path(__file__).parent
_USER_DIR = Path("~/.config/pilotfish/platforms")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
_KEYS = ("name", "description", "cores_per_node", "blocked_cores", "threads_per_core",
         "gpus_per_node", "gpu_kind", "mem_per_node_gib", "launcher", "batch_system")
_OPTIONAL = {"interface": ""}  # key: its default
_INTERFACE = re.compile(r"^[A-Za-z0-9_.:-]*$")


class InvalidPlatform(ValueError):
    """A profile that cannot be used; the message names the file and the key."""


@dataclass(frozen=True, slots=True)
class Platform:
    name: str
    description: str
    cores_per_node: int  # physical cores per node, blocked ones included
    blocked_cores: tuple[int, ...]  # physical core ids never given to tasks
    threads_per_core: int  # SMT
    gpus_per_node: int
    gpu_kind: str  # none | cuda | rocm | level_zero
    mem_per_node: int  # MiB usable by tasks
    launcher: str  # of launchers.LAUNCHERS: how ranks spanning nodes start (real nodes)
    batch_system: str  # none | slurm | pbs | lsf | flux
    source: str  # the file it was read from
    interface: str = ""  # the agent listens there for node executors ("": the host's name)

    @property
    def usable_cores(self) -> tuple[int, ...]:
        blocked = set(self.blocked_cores)
        return tuple(c for c in range(self.cores_per_node) if c not in blocked)

    @property
    def gpu_env(self) -> str | None:
        """The variable that tells a rank its GPUs."""
        return GPU_KINDS[self.gpu_kind]


def _memory_gib() -> float:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30


def parse_platform(data: dict[str, Any], source: str) -> Platform:
    """A profile from the TOML table `data`; raises InvalidPlatform naming the key."""
    where = Path(source).name

    def bad(key: str, message: str) -> InvalidPlatform:
        return InvalidPlatform(f"{where}: {key}: {message}")

    unknown = sorted(set(data) - set(_KEYS) - set(_OPTIONAL))
    if unknown:
        raise bad(unknown[0], f"unknown key (known: {', '.join([*_KEYS, *_OPTIONAL])})")
    missing = [k for k in _KEYS if k not in data]
    if missing:
        raise bad(missing[0], "missing")

    def integer(key: str, minimum: int, auto: int | None = None) -> int:
        value = data[key]
        if value == "auto" and auto is not None:
            return auto
        if isinstance(value, bool) or not isinstance(value, int):
            hint = ' or "auto"' if auto is not None else ""
            raise bad(key, f"must be an integer{hint}, got {value!r}")
        if value < minimum:
            raise bad(key, f"must be >= {minimum}, got {value}")
        return value

    def text(key: str, choices: tuple[str, ...] | None = None) -> str:
        value = data[key]
        if not isinstance(value, str) or not value:
            raise bad(key, f"must be a non-empty string, got {value!r}")
        if choices is not None and value not in choices:
            raise bad(key, f"must be one of {', '.join(choices)}, got {value!r}")
        return value

    name = text("name")
    if not _NAME.match(name):
        raise bad("name", f"must be lower-case letters, digits, '-' or '_', got {name!r}")
    cores = integer("cores_per_node", 1, auto=os.cpu_count() or 1)
    blocked = data["blocked_cores"]
    if not isinstance(blocked, list) or not all(
            isinstance(c, int) and not isinstance(c, bool) for c in blocked):
        raise bad("blocked_cores", f"must be a list of core ids, got {blocked!r}")
    if len(set(blocked)) != len(blocked):
        raise bad("blocked_cores", f"has duplicates: {blocked}")
    outside = [c for c in blocked if not 0 <= c < cores]
    if outside:
        raise bad("blocked_cores", f"ids {outside} are not among the {cores} cores")
    if len(blocked) >= cores:
        raise bad("blocked_cores", f"blocks all {cores} cores: none is left for tasks")
    gpus = integer("gpus_per_node", 0)
    kind = text("gpu_kind", tuple(GPU_KINDS))
    if gpus and kind == "none":
        raise bad("gpu_kind", f"is 'none' but gpus_per_node is {gpus}")
    mem = data["mem_per_node_gib"]
    if mem == "auto":
        mem = _memory_gib()
    elif isinstance(mem, bool) or not isinstance(mem, int | float) or not mem > 0:
        raise bad("mem_per_node_gib", f'must be a number of GiB > 0 or "auto", got {mem!r}')
    interface = data.get("interface", _OPTIONAL["interface"])
    if not isinstance(interface, str) or not _INTERFACE.match(interface):
        raise bad("interface", f"must be a network interface's name (hsn0, eth0, lo), got "
                  f"{interface!r}")
    launcher = text("launcher", tuple(LAUNCHERS))
    batch = text("batch_system", BATCH_SYSTEMS)
    if launcher == "local" and batch != "none":
        raise bad("launcher", f"'local' starts ranks on one host only; on a {batch} cluster "
                  f"tasks spanning nodes need one of "
                  f"{', '.join([n for n in LAUNCHERS if n != 'local'])}")
    return Platform(name=name, description=text("description"), cores_per_node=cores,
                    blocked_cores=tuple(blocked), threads_per_core=integer("threads_per_core", 1),
                    gpus_per_node=gpus, gpu_kind=kind, mem_per_node=round(mem * 1024),
                    launcher=launcher, batch_system=batch, source=source,
                    interface=interface)


def read_platform(path: str | os.PathLike[str]) -> Platform:
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidPlatform(f"{path.name}: not valid TOML: {exc}") from exc
    except OSError as exc:
        raise InvalidPlatform(f"{path}: cannot be read: {exc.strerror}") from exc
    return parse_platform(data, str(path))


@functools.cache
def _shipped() -> dict[str, Platform]:
    return {p.name: p for p in map(read_platform, sorted(_SHIPPED.glob("*.toml")))}


def _user_files() -> list[Path]:
    places = [p for p in os.environ.get("PILOTFISH_PLATFORMS", "").split(os.pathsep) if p]
    places.append(str(_USER_DIR.expanduser()))
    files: list[Path] = []
    for place in map(Path, places):
        if place.is_dir():
            files.extend(sorted(place.glob("*.toml")))
        elif place.suffix == ".toml" and place.is_file():
            files.append(place)
    return files


def available_platforms() -> dict[str, Platform]:
    """Shipped and user profiles by name (user ones win); user files are re-read."""
    found = dict(_shipped())
    for path in _user_files():
        platform = read_platform(path)
        found[platform.name] = platform
    return found


def load_platform(name_or_path: str) -> Platform:
    """A profile by name, or from a `.toml` file; KeyError lists the known names."""
    if name_or_path.endswith(".toml") or os.sep in name_or_path:
        return read_platform(name_or_path)
    known = available_platforms()
    if name_or_path not in known:
        raise KeyError(f"unknown platform {name_or_path!r}; known: {', '.join(sorted(known))}")
    return known[name_or_path]


def platform_to_toml(p: Platform) -> str:
    """The profile as TOML (what `pilotfish platforms show` prints)."""

    def value(v: object) -> str:
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, tuple | list):
            return "[" + ", ".join(map(str, v)) + "]"
        return str(v)

    mem = p.mem_per_node / 1024
    fields: dict[str, object] = {
        "name": p.name, "description": p.description, "cores_per_node": p.cores_per_node,
        "blocked_cores": p.blocked_cores, "threads_per_core": p.threads_per_core,
        "gpus_per_node": p.gpus_per_node, "gpu_kind": p.gpu_kind,
        "mem_per_node_gib": int(mem) if mem == int(mem) else mem,
        "launcher": p.launcher, "batch_system": p.batch_system}
    if p.interface:
        fields["interface"] = p.interface
    lines = [f"# from {p.source}"] + [f"{k} = {value(v)}" for k, v in fields.items()]
    return "\n".join(lines) + "\n"
