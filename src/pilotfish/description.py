"""What a user asks for: task and pilot descriptions, validated when they are built.

A bad description raises at construction (`InvalidDescription`, a `ValueError`, or a
`TypeError`), naming the field and the numbers, so nothing is ever submitted with it.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import hashlib
import importlib.util
import io
import itertools
import os
import pickle
import shutil
import types
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import cloudpickle
import msgspec

from .backends import registry
from .launchers import check_launcher
from .messages import TASK_REF, Service, TaskSpec
from .partitions import Partition, PartitionError, PartitionSpec, resolve_partitions
from .pilots.batch import check_directives
from .pilots.slurm import current_allocation
from .platforms import InvalidPlatform, Platform, load_platform
from .routing import RoutingPolicy

PLACEMENT_TAGS = ("colocate", "exclusive")
KNOWN_TAGS = (*PLACEMENT_TAGS, "partition", "pmi")  # what pilotfish reads; others: labels
PMI_KINDS = ("cray", "pmix")  # tags={"pmi": ...}: an MPI process group under Dragon
# GPU shares are accounted in 1/1024ths (resources.py); a finer fraction would round to 0.
MAX_GPU_SHARING = 1024
# Bounds that keep every description within what the wire, the journal and the agent's
# memory take (msgpack and SQLite integers, C timers, one object per node).
MAX_COUNT = 2**31 - 1  # ranks, cores, MiB, retries, ... and |priority|
MAX_SECONDS = 1e9  # about 31 years: timeouts, durations, runtimes
MAX_NODES = 100_000  # per pilot (the largest machines have about 10,000)
MAX_CORES_PER_NODE, MAX_GPUS_PER_NODE = 4096, 256
MODES = ("local", "allocation", "batch")  # where a pilot's nodes come from


class InvalidDescription(ValueError):
    """A description that will fail again whatever the system does; names the field."""

    def __init__(self, owner: str, field_name: str, message: str) -> None:
        super().__init__(f"{owner}.{field_name}: {message}")
        self.field = field_name


def _check_int(owner: str, name: str, value: object, minimum: int,
               maximum: int = MAX_COUNT) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{owner}.{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise InvalidDescription(owner, name, f"must be >= {minimum}, got {value}")
    if value > maximum:
        raise InvalidDescription(owner, name, f"must be <= {maximum}, got {value}")
    return value


def _check_seconds(owner: str, name: str, value: object, zero_ok: bool) -> float:
    """A number of seconds: finite, > 0 (or >= 0), at most MAX_SECONDS."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{owner}.{name} must be a number of seconds, got "
                        f"{type(value).__name__}")
    if not (value >= 0 if zero_ok else value > 0) or not value <= MAX_SECONDS:
        raise InvalidDescription(owner, name, f"must be {'>=' if zero_ok else '>'} 0 s and at "
                                 f"most {MAX_SECONDS:g} s, got {value}")
    return float(value)


def _check_text(owner: str, name: str, value: str, c_string: bool = False) -> None:
    """A str that must cross the wire (UTF-8) and, for what a process is started with
    (`c_string`), become a C string (no NUL)."""
    if c_string and "\0" in value:
        raise InvalidDescription(owner, name, f"must not contain a NUL character: {value!r}")
    if not value.isascii():
        try:
            value.encode()
        except UnicodeEncodeError as exc:
            raise InvalidDescription(owner, name, f"cannot be encoded as UTF-8 ({exc.reason} "
                                     f"at {exc.start}): {value!r}") from None


def _check_strings(owner: str, name: str, value: object, c_string: bool = False) -> None:
    """A mapping of str to str (environment: keys without '=')."""
    if type(value) is not dict and not isinstance(value, Mapping):
        raise TypeError(f"{owner}.{name} must be a mapping of str to str, got "
                        f"{type(value).__name__}")
    for k, v in value.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise TypeError(f"{owner}.{name} must be a mapping of str to str, got {k!r}: {v!r}")
        _check_text(owner, name, k, c_string)
        _check_text(owner, name, v, c_string)
        if c_string and (not k or "=" in k):
            raise InvalidDescription(owner, name, f"a variable name must be non-empty and "
                                     f"without '=', got {k!r}")


# Pickled functions are cached by identity, as dask does: a workload submits the same
# function many times, and pickling a closure by value costs tens of microseconds.
_FUNCTION_CACHE: OrderedDict[Any, tuple[str, bytes]] = OrderedDict()
_FUNCTION_CACHE_SIZE = 256


def pickle_function(function: Callable[..., Any]) -> tuple[str, bytes]:
    """Return (content key, pickled bytes) for a function; raise TypeError if it cannot be."""
    # Only plain functions are cached: a callable object or a closure may change state
    # (unless it says it does not, as `PilotExecutor.map`'s chunks do).
    cacheable = (isinstance(function, types.BuiltinFunctionType)
                 or (isinstance(function, types.FunctionType) and function.__closure__ is None)
                 or getattr(function, "pickle_once", False) is True)
    hit = _FUNCTION_CACHE.get(function) if cacheable else None
    if hit is not None:
        return hit
    try:
        blob = cloudpickle.dumps(function, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        raise TypeError(
            f"TaskDescription.function: {function!r} cannot be serialised: {exc}"
        ) from exc
    entry = (hashlib.blake2b(blob, digest_size=12).hexdigest(), blob)
    if not cacheable:
        return entry
    _FUNCTION_CACHE[function] = entry
    if len(_FUNCTION_CACHE) > _FUNCTION_CACHE_SIZE:
        _FUNCTION_CACHE.popitem(last=False)
    return entry


def is_task(value: Any) -> bool:
    """A pilotfish Task (task.py imports this module: it is known by its mark)."""
    return getattr(type(value), "_pilotfish_task", False) is True


class _ArgumentsPickler(cloudpickle.Pickler):
    """cloudpickle, with each pilotfish Task pickled as a reference to its result."""

    def __init__(self, file: io.BytesIO) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.tasks: dict[str, Any] = {}

    def persistent_id(self, obj: Any) -> tuple[str, str] | None:
        if is_task(obj):
            self.tasks[obj.uid] = obj
            return (TASK_REF, obj.uid)
        return None


def pickle_arguments(args: tuple[Any, ...], kwargs: Mapping[str, Any]
                     ) -> tuple[bytes | None, tuple[Any, ...]]:
    """The pickled (args, kwargs) and the tasks among them (each stands for its result:
    the worker gets it in their place)."""
    if not args and not kwargs:
        return None, ()
    payload = (args, dict(kwargs))
    try:
        return pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL), ()
    except Exception:
        pass  # (a Task refuses plain pickling: it goes as a reference, below)
    buffer = io.BytesIO()
    pickler = _ArgumentsPickler(buffer)
    try:
        pickler.dump(payload)
    except Exception as exc:
        future = _a_future(payload)
        if future is not None:
            raise TypeError(f"TaskDescription.args/kwargs hold a future ({future!r}) that is "
                            "not a pilotfish Task: pass its result instead") from None
        raise TypeError(f"TaskDescription.args/kwargs cannot be serialised: {exc}") from exc
    return buffer.getvalue(), tuple(pickler.tasks.values())


def _a_future(value: Any, depth: int = 4) -> Future[Any] | None:
    """A Future (a Task) inside `value` (containers searched `depth` deep), if any."""
    if isinstance(value, Future):
        return value
    if depth and isinstance(value, list | tuple | set | frozenset | dict):
        items = [*value.keys(), *value.values()] if isinstance(value, dict) else value
        for item in items:
            found = _a_future(item, depth - 1)
            if found is not None:
                return found
    return None


def _check_service(owner: str, d: TaskDescription) -> None:
    service = d.service
    if not isinstance(service, Service):
        raise TypeError(f"{owner}.service must be a pilotfish Service, got {service!r}")
    if d.function is not None:
        raise InvalidDescription(owner, "service", "a service is an executable (a server, a "
                                 "database), not a function")
    given = [name for name in ("port", "file", "command") if getattr(service, name)]
    if len(given) != 1:
        raise InvalidDescription(owner, "service", "give one readiness check: port, file or "
                                 f"command (got {', '.join(given) or 'none'})")
    if service.port is not None:
        _check_int(owner, "service.port", service.port, 1, 65535)
    if service.command is not None and (
            not isinstance(service.command, list)
            or not all(isinstance(a, str) for a in service.command)):
        raise TypeError(f"{owner}.service.command must be a list of str, got "
                        f"{service.command!r}")
    _check_seconds(owner, "service.timeout", service.timeout, zero_ok=False)
    _check_seconds(owner, "service.interval", service.interval, zero_ok=False)


class TaskDescription(msgspec.Struct, frozen=True, kw_only=True, repr_omit_defaults=True):
    """One task: an executable (with arguments) or a Python function (with args).

    Resources: `ranks` processes, each with `cores_per_rank` cores, `gpus_per_rank` GPUs
    (a fraction 0.5, 0.25, ... shares one GPU) and `mem_per_rank` MiB of memory. Ranks may
    span nodes: `ranks_per_node` puts exactly that many on each node (the last takes the
    rest); unset, the scheduler uses as few nodes as are free. A single-rank task stays on
    one node. `timeout` is in seconds: the task is killed and FAILED with the reason when
    it runs longer. `retries` is how many times the task may be placed again elsewhere
    when the partition running it is lost (its runtime died), or its pilot ends under it
    (canceled, lost, out of time: then on another live pilot). `duration` is how long the
    task "runs" on a simulated pilot (default: N for `sleep N`, else 0); real backends
    ignore it.

    Tags place tasks: `tags={"colocate": "g"}` puts every task of group g on the node(s)
    its first task got; `tags={"exclusive": "x"}` keeps a node holding an x task for x
    tasks only. `partition` (or the tag `{"partition": ...}`) pins the task to one of the
    pilot's partitions; by default the pilot's routing policy picks one (routing.py).
    `tags={"pmi": "cray"}` (or "pmix") runs a multi-rank task on a Dragon partition as an
    MPI process group wired with that PMI (other backends launch MPI with their own tools).
    Other tags are labels, kept in the journal (a key close to one of these is refused
    as a typo).
    `sandbox` is the working directory (default: the pilot's shared task directory);
    stdout and stderr go to `<sandbox>/<uid>.out` and `.err`.

    `launcher` (a name of `launchers.LAUNCHERS`: "srun", "srun.pmix", "srun.pmi2",
    "mpiexec", "mpiexec.openmpi", "mpiexec.mpich", "local") starts the task's ranks on a
    pilot holding real nodes: an MPI program needs the one its MPI is wired by (Open MPI:
    "srun.pmix" or "mpiexec.openmpi"; MPICH: "srun.pmi2" or "mpiexec.mpich"). Unset, a task
    spanning nodes goes through the platform profile's launcher and a task on one node is
    started by the pilot itself. On virtual nodes (a local pilot) it is ignored: they are
    all this host, with no host names to give srun or mpiexec, and every rank is a local
    process, as for any task there (so a workflow runs there unchanged).

    (A frozen `msgspec.Struct`, not a dataclass: built in C, it costs a tenth of the
    time, which counts when a workflow makes a million of them.)
    """

    executable: str | None = None
    arguments: Sequence[Any] = ()
    environment: Mapping[str, str] = {}
    sandbox: str | os.PathLike[str] | None = None
    function: Callable[..., Any] | None = None
    args: Sequence[Any] = ()
    kwargs: Mapping[str, Any] = {}
    ranks: int = 1
    cores_per_rank: int = 1
    gpus_per_rank: float = 0.0
    ranks_per_node: int | None = None
    mem_per_rank: int = 0
    priority: int = 0
    timeout: float | None = None
    duration: float | None = None
    name: str | None = None
    tags: Mapping[str, str] = {}
    partition: str | None = None
    retries: int = 0
    launcher: str | None = None
    after: Sequence[Any] = ()  # Tasks (submitted before) that must end DONE first
    service: Service | None = None  # a long-running task, READY once its check passes
    # Derived at construction, not given: the pickled function and arguments, so that an
    # unserialisable function is refused here and submit does no pickling; the tasks
    # among the arguments (each stands for its result, and is waited for).
    function_key: str | None = None
    function_blob: bytes | None = None
    args_blob: bytes | None = None
    inputs: tuple[Any, ...] = ()

    def __post_init__(self) -> None:
        owner = "TaskDescription"
        set_ = msgspec.structs.force_setattr
        if self.function_key is not None or self.function_blob is not None or (
                self.args_blob is not None) or self.inputs:
            raise TypeError(f"{owner}: function_key, function_blob, args_blob and inputs "
                            "are derived from function and args; do not give them")
        if self.function is None:
            if self.executable is None:
                raise InvalidDescription(owner, "executable", "give an executable or a function")
            if not isinstance(self.executable, str) or not self.executable:
                raise TypeError(f"{owner}.executable must be a non-empty str, got "
                                f"{self.executable!r}")
            _check_text(owner, "executable", self.executable, c_string=True)
            if self.args or self.kwargs:
                raise InvalidDescription(owner, "args", "args/kwargs are for functions; "
                                         "use arguments for an executable")
            if type(self.arguments) not in (list, tuple) and (
                    isinstance(self.arguments, str | bytes)
                    or not isinstance(self.arguments, Sequence)):
                raise TypeError(f"{owner}.arguments must be a list of str, got "
                                f"{type(self.arguments).__name__}")
            arguments = tuple(str(a) if isinstance(a, int | float) and not isinstance(a, bool)
                              else a for a in self.arguments)
            for a in arguments:
                if not isinstance(a, str):
                    raise TypeError(f"{owner}.arguments must be a list of str, got {a!r}")
                _check_text(owner, "arguments", a, c_string=True)
            set_(self, "arguments", arguments)
        else:
            if self.executable is not None:
                raise InvalidDescription(owner, "function", "give an executable or a function, "
                                         "not both")
            if not callable(self.function):
                raise TypeError(f"{owner}.function must be callable, got {self.function!r}")
            if self.arguments:
                raise InvalidDescription(owner, "arguments", "arguments are for executables; "
                                         "use args/kwargs for a function")
            if not isinstance(self.args, tuple | list):
                raise TypeError(f"{owner}.args must be a tuple or list, got "
                                f"{type(self.args).__name__}")
            if type(self.kwargs) is not dict and not isinstance(self.kwargs, Mapping):
                raise TypeError(f"{owner}.kwargs must be a mapping, got "
                                f"{type(self.kwargs).__name__}")
            if not all(isinstance(k, str) for k in self.kwargs):
                raise TypeError(f"{owner}.kwargs must have str keys, got {list(self.kwargs)!r}")
            if self.ranks != 1:
                raise InvalidDescription(owner, "ranks", f"a function runs as one rank, got "
                                         f"{self.ranks} (use cores_per_rank for more cores)")
            if self.launcher is not None:
                raise InvalidDescription(owner, "launcher", "a launcher starts an executable's "
                                         "ranks; a function runs in the pilot's workers")
            key, blob = pickle_function(self.function)
            set_(self, "function_key", key)
            set_(self, "function_blob", blob)
            args_blob, inputs = pickle_arguments(tuple(self.args), self.kwargs)
            set_(self, "args_blob", args_blob)
            set_(self, "inputs", inputs)
        if self.environment:
            _check_strings(owner, "environment", self.environment, c_string=True)
        elif type(self.environment) is not dict:
            _check_strings(owner, "environment", self.environment)
        if self.sandbox is not None:  # relative to where the user is, not the agent
            try:
                sandbox: object = os.fspath(self.sandbox)
            except TypeError:
                sandbox = None
            if not isinstance(sandbox, str):
                raise TypeError(f"{owner}.sandbox must be a path (str or os.PathLike of str), "
                                f"got {self.sandbox!r}")
            _check_text(owner, "sandbox", sandbox, c_string=True)
            set_(self, "sandbox", os.path.abspath(sandbox))
        if type(self.ranks) is not int or self.ranks != 1:
            _check_int(owner, "ranks", self.ranks, 1)
        if type(self.cores_per_rank) is not int or self.cores_per_rank != 1:
            _check_int(owner, "cores_per_rank", self.cores_per_rank, 1)
        if type(self.gpus_per_rank) is not float or self.gpus_per_rank:
            set_(self, "gpus_per_rank", check_gpus(owner, "gpus_per_rank", self.gpus_per_rank))
        if self.ranks_per_node is not None:
            _check_int(owner, "ranks_per_node", self.ranks_per_node, 1)
        if type(self.mem_per_rank) is not int or self.mem_per_rank:
            _check_int(owner, "mem_per_rank", self.mem_per_rank, 0)
        if type(self.priority) is not int or self.priority:
            _check_int(owner, "priority", self.priority, -MAX_COUNT)
        if type(self.retries) is not int or self.retries:
            _check_int(owner, "retries", self.retries, 0)
        if self.timeout is not None:
            _check_seconds(owner, "timeout", self.timeout, zero_ok=False)
        if self.duration is not None:
            _check_seconds(owner, "duration", self.duration, zero_ok=True)
        if self.name is not None:
            if not isinstance(self.name, str):
                raise TypeError(f"{owner}.name must be a str, got {type(self.name).__name__}")
            _check_text(owner, "name", self.name)
        if self.partition is not None:
            if not isinstance(self.partition, str) or not self.partition:
                raise TypeError(f"{owner}.partition must be a non-empty str, got "
                                f"{self.partition!r}")
            _check_text(owner, "partition", self.partition)
        if self.launcher is not None:
            why = check_launcher(self.launcher)
            if why is not None:
                raise InvalidDescription(owner, "launcher", why)
        if self.service is not None:
            _check_service(owner, self)
        if self.after:
            if isinstance(self.after, str | bytes) or not isinstance(self.after, Sequence):
                raise TypeError(f"{owner}.after must be a list of tasks, got "
                                f"{type(self.after).__name__}")
            for t in self.after:
                if not is_task(t):
                    raise TypeError(f"{owner}.after must be a list of tasks (pilotfish "
                                    f"Task, as submit returns), got {t!r}")
            set_(self, "after", tuple(self.after))
        tags = self.tags
        if tags or type(tags) is not dict:
            _check_strings(owner, "tags", tags)
        if tags:
            for key in tags:  # other keys are labels; one close to a known tag is a typo
                near = difflib.get_close_matches(key, KNOWN_TAGS, n=1, cutoff=0.75)
                if near and key not in KNOWN_TAGS:
                    raise InvalidDescription(owner, "tags", f"unknown tag {key!r}: did you "
                                             f"mean {near[0]!r}? (tags pilotfish reads: "
                                             f"{', '.join(KNOWN_TAGS)}; others are labels)")
            for key in PLACEMENT_TAGS:
                if key in tags and not tags[key]:
                    raise InvalidDescription(owner, "tags", f"{key!r} needs a group name")
            if "pmi" in tags and tags["pmi"] not in PMI_KINDS:
                raise InvalidDescription(owner, "tags", f"'pmi' is one of {PMI_KINDS}, not "
                                         f"{tags['pmi']!r}")

    @property
    def kind(self) -> str:
        return "function" if self.function is not None else "executable"

    def to_spec(self, uid: str, after: list[str] | None = None,
                inputs: dict[str, bytes | None] | None = None) -> TaskSpec:
        """The task as the agent gets it (and the journal keeps it): the wire spec's fields
        are this description's, by name (a unit test holds the two lists together),
        less what stays in the client (the function object, args, kwargs and the
        function's pickled bytes, which travel once per pilot). Dependencies go by
        uid: by default every task named or among the arguments, whose results the agent
        fills in; the session passes those it resolved itself (`after`, `inputs`)."""
        if after is None:
            after = list(dict.fromkeys(t.uid for t in (*self.after, *self.inputs)))
        if inputs is None:
            inputs = dict.fromkeys((t.uid for t in self.inputs), None)
        return TaskSpec(uid, self.kind, self.executable, list(self.arguments),
                        dict(self.environment), self.sandbox, self.function_key,  # type: ignore[arg-type]
                        self.args_blob, self.ranks, self.cores_per_rank, self.gpus_per_rank,
                        self.priority, self.timeout, self.name, dict(self.tags),
                        self.ranks_per_node, self.mem_per_rank, self.duration, self.partition,
                        self.retries, self.launcher, after, inputs, self.service)

    @property
    def depends_on(self) -> tuple[Any, ...]:
        """The tasks it waits for: those named in `after` and those among its arguments."""
        if not self.inputs:
            return tuple(self.after)
        return tuple({id(t): t for t in (*self.after, *self.inputs)}.values())

    @property
    def cores(self) -> int:
        return self.ranks * self.cores_per_rank

    @property
    def gpus(self) -> float:
        return self.ranks * self.gpus_per_rank


def check_gpus(owner: str, name: str, value: object) -> float:
    """GPUs per rank: a whole number, or a fraction 1/k that shares one GPU between k ranks."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{owner}.{name} must be a number, got {type(value).__name__}")
    if not 0 <= value <= MAX_GPUS_PER_NODE:  # NaN too
        raise InvalidDescription(owner, name, f"must be >= 0 and <= {MAX_GPUS_PER_NODE}, got "
                                 f"{value}")
    if value > 1 and value != int(value):
        raise InvalidDescription(owner, name, f"above 1 must be a whole number, got {value}")
    if 0 < value < 1 / MAX_GPU_SHARING:
        raise InvalidDescription(owner, name, f"a fraction must be at least "
                                 f"1/{MAX_GPU_SHARING}, got {value}")
    if 0 < value < 1 and abs(1 / value - round(1 / value)) > 1e-9:
        raise InvalidDescription(owner, name, f"a fraction must be 1/k (0.5, 0.25, ...), "
                                 f"got {value}")
    return float(value)


@dataclass(frozen=True, slots=True, kw_only=True)
class PilotDescription:
    """Where and how big a pilot is.

    `platform` names a profile (`pilotfish platforms`) or a `.toml` file: it gives the
    node shape (usable cores, GPUs, memory in MiB), which `cores_per_node`,
    `gpus_per_node` and `mem_per_node` override. On the `local` platform nodes, cores and
    GPUs are virtual: any shape can be exercised on one small machine. `runtime` is the
    pilot's lifetime in seconds (None: until the session closes). `function_workers` is
    the number of persistent Python worker processes per node: given, they all start with
    the pilot; by default, one per core, as many as the host has CPUs started with the
    pilot and the others at their first task.
    `backend` is the backend of the pilot's one partition when no `partitions` are
    given (`pilotfish backends` lists them); `backend="simulated"` runs nothing: every
    partition's tasks take their `duration` on a virtual clock (backends/simulated.py).
    `reserve_after` is how long (seconds) a task passed over by smaller ones waits before
    nodes are drained for it (see scheduler.py). `routing` picks each task's partition
    (default: `routing.RoutingPolicy()`; a subclass changes the rules; it is pickled to
    the agent and runs there). `detach_grace` is how long (seconds) the pilot runs on
    when its client disappears, waiting for a new one (`Session.attach`); 0: it stops.

    `mode` says where the nodes come from: "local" (virtual nodes of the platform's
    shape on this machine), "allocation" (the nodes of the Slurm job this runs in:
    `nodes=None` takes all of them, else the first `nodes`; their real host names, CPUs
    from the job) or "batch" (a Slurm job submitted for the pilot from a login node:
    `nodes` whole nodes, `runtime` its time limit, `queue` its partition, `account`, and
    `batch_directives`: extra `#SBATCH` lines as sbatch options, e.g. `--qos=debug`,
    `-C gpu`, `--exclusive`; not those set from the fields above; see pilots/batch.py).
    By default "local" on the `local` platform and on simulated pilots; on a Slurm
    platform, "allocation" inside a job and "batch" outside one.
    """

    platform: str = "local"
    nodes: int | None = None
    cores_per_node: int | None = None
    gpus_per_node: int | None = None
    mem_per_node: int | None = None
    runtime: float | None = None
    function_workers: int | None = None
    heartbeat_timeout: float = 5.0
    backend: str = "builtin"
    reserve_after: float = 30.0
    partitions: Sequence[PartitionSpec] = ()
    routing: RoutingPolicy | None = None
    detach_grace: float = 0.0
    mode: str | None = None
    queue: str | None = None
    account: str | None = None
    batch_directives: Sequence[str] = ()
    # Derived: the allocation's hosts the pilot uses, in order ("allocation" mode).
    hosts: tuple[str, ...] = dataclasses.field(default=(), init=False)

    def __post_init__(self) -> None:
        owner = "PilotDescription"
        if not isinstance(self.backend, str) or self.backend not in registry.names():
            raise InvalidDescription(owner, "backend", f"unknown backend {self.backend!r}; "
                                     f"known: {', '.join(registry.names())}")
        _check_seconds(owner, "reserve_after", self.reserve_after, zero_ok=True)
        _check_seconds(owner, "detach_grace", self.detach_grace, zero_ok=True)
        if not isinstance(self.platform, str):
            raise TypeError(f"{owner}.platform must be a str, got {self.platform!r}")
        try:
            profile = load_platform(self.platform)
        except KeyError as exc:
            raise InvalidDescription(owner, "platform", exc.args[0]) from None
        except InvalidPlatform as exc:
            raise InvalidDescription(owner, "platform", str(exc)) from None
        cores_default = self._check_mode(owner, profile)
        _check_int(owner, "nodes", self.nodes, 1, MAX_NODES)
        for name, default in (("cores_per_node", cores_default),
                              ("gpus_per_node", profile.gpus_per_node),
                              ("mem_per_node", profile.mem_per_node)):
            if getattr(self, name) is None:
                object.__setattr__(self, name, default)
        _check_int(owner, "cores_per_node", self.cores_per_node, 1, MAX_CORES_PER_NODE)
        _check_int(owner, "gpus_per_node", self.gpus_per_node, 0, MAX_GPUS_PER_NODE)
        _check_int(owner, "mem_per_node", self.mem_per_node, 0)
        if self.function_workers is not None:
            _check_int(owner, "function_workers", self.function_workers, 1,
                       MAX_CORES_PER_NODE)
        if self.runtime is not None:
            _check_seconds(owner, "runtime", self.runtime, zero_ok=False)
        _check_seconds(owner, "heartbeat_timeout", self.heartbeat_timeout, zero_ok=False)
        if not 2 <= self.heartbeat_timeout <= 3600:
            raise InvalidDescription(owner, "heartbeat_timeout", f"must be >= 2 s (heartbeats "
                                     f"go every second) and <= 3600 s (a hung agent must be "
                                     f"noticed), got {self.heartbeat_timeout}")
        self._check_partitions(owner)
        if self.routing is not None:
            if not isinstance(self.routing, RoutingPolicy):
                raise InvalidDescription(owner, "routing", f"must be a routing.RoutingPolicy "
                                         f"(or a subclass), got {self.routing!r}")
            self.routing_blob  # noqa: B018  (it must travel to the agent)

    def _check_mode(self, owner: str, profile: Platform) -> int:
        """Resolve `mode` (and, inside an allocation, `nodes` and `hosts`); return the
        default cores per node."""
        set_ = functools.partial(object.__setattr__, self)
        cores = len(profile.usable_cores)
        slurm = profile.batch_system == "slurm"
        allocation = current_allocation(os.environ) if slurm else None
        mode = self.mode
        if mode is None:
            mode = ("local" if not slurm or self.backend == "simulated" else
                    "allocation" if allocation is not None else "batch")
            set_("mode", mode)
        if mode not in MODES:
            raise InvalidDescription(owner, "mode", f"one of {', '.join(MODES)}, got {mode!r}")
        if mode != "local" and not slurm:
            raise InvalidDescription(owner, "mode", f"{mode!r} needs a Slurm platform "
                                     f"(slurm-local, frontier, ...); {profile.name!r} has "
                                     f"batch system {profile.batch_system!r}")
        if mode != "local" and self.backend == "simulated":
            raise InvalidDescription(owner, "mode", "a simulated pilot runs on virtual nodes: "
                                     "mode='local'")
        for name in ("queue", "account"):
            value = getattr(self, name)
            if value is not None:
                if not isinstance(value, str) or not value:
                    raise TypeError(f"{owner}.{name} must be a non-empty str, got {value!r}")
                _check_text(owner, name, value, c_string=True)
        directives = self.batch_directives
        if isinstance(directives, str) or not isinstance(directives, Sequence) or not all(
                isinstance(d, str) for d in directives):
            raise TypeError(f"{owner}.batch_directives must be a list of str")
        for d in directives:
            _check_text(owner, "batch_directives", d, c_string=True)
            if "\n" in d or "\r" in d:
                raise InvalidDescription(owner, "batch_directives", f"one line each: {d!r}")
        try:
            set_("batch_directives", check_directives(directives))
        except ValueError as exc:
            raise InvalidDescription(owner, "batch_directives", str(exc)) from None
        if mode == "batch":
            if shutil.which("sbatch") is None:
                raise InvalidDescription(owner, "mode", "no Slurm here (no sbatch on PATH): "
                                         "submit from a login node of the cluster, or use "
                                         "mode='local' for virtual nodes of this shape")
            if importlib.util.find_spec("psij") is None:
                raise InvalidDescription(owner, "mode", "batch pilots submit their jobs "
                                         "through PSI/J: pip install 'pilotfish[batch]'")
            if self.detach_grace:
                raise InvalidDescription(owner, "detach_grace", "a batch pilot cannot be "
                                         "reattached yet (its agent runs on a compute node): "
                                         "0, or run it in an allocation")
            if self.nodes is None:
                set_("nodes", 1)
            return cores
        if mode == "local":
            if self.nodes is None:
                set_("nodes", 1)
            return cores
        if allocation is None:
            raise InvalidDescription(owner, "mode", "'allocation' runs inside a Slurm job "
                                     "(SLURM_JOB_ID is not set): run it in salloc or sbatch, "
                                     "use mode='batch' from a login node, or mode='local' "
                                     "for virtual nodes of this shape")
        count = len(allocation.hosts) if self.nodes is None else self.nodes
        _check_int(owner, "nodes", count, 1, len(allocation.hosts))
        set_("nodes", count)
        set_("hosts", allocation.hosts[:count])
        return min(allocation.cpus[:count]) if allocation.cpus else cores

    @property
    def routing_blob(self) -> bytes | None:
        """The routing policy, pickled for the agent (None: the default policy)."""
        if self.routing is None:
            return None
        try:
            return cloudpickle.dumps(self.routing)
        except Exception as exc:
            raise InvalidDescription("PilotDescription", "routing", f"cannot be pickled for "
                                     f"the agent: {exc}") from None

    def _check_partitions(self, owner: str) -> None:
        specs = self.partitions
        if isinstance(specs, PartitionSpec) or not isinstance(specs, Sequence) or not all(
                isinstance(p, PartitionSpec) for p in specs):
            raise TypeError(f"{owner}.partitions must be a list of PartitionSpec")
        object.__setattr__(self, "partitions", tuple(specs))
        if specs and self.backend not in ("builtin", "simulated"):
            raise InvalidDescription(owner, "backend", f"{self.backend!r} with partitions: give "
                                     "each partition its backend (PartitionSpec.backend)")
        if self.backend != "simulated":  # a simulated pilot simulates every kind
            for name in dict.fromkeys([s.backend for s in specs] or [self.backend]):
                entry = registry.get(name)
                why = entry.unavailable()
                if why is None and entry.real_nodes and self.mode == "local":
                    why = ("it runs only on real nodes, and this pilot's are virtual "
                           "(mode='local'): start it inside a Slurm allocation (salloc, "
                           "sbatch) with a Slurm platform (slurm-local, frontier, ...)")
                if why is not None:
                    raise InvalidDescription(owner, "partitions" if specs else "backend",
                                             f"no {name} here: {why} (a simulated pilot "
                                             f"can model {name} partitions)")
        assert self.nodes is not None  # (resolved by _check_mode)
        try:
            resolve_partitions(tuple(specs), self.nodes)
        except PartitionError as exc:
            raise InvalidDescription(owner, "partitions", str(exc)) from None

    @property
    def layout(self) -> list[Partition]:
        """The pilot's partitions: names, backends and node slices."""
        assert self.nodes is not None
        return resolve_partitions(tuple(self.partitions) or (PartitionSpec(backend=self.backend),),
                                  self.nodes)

    @property
    def profile(self) -> Platform:
        return load_platform(self.platform)

    @property
    def core_ids(self) -> tuple[int, ...]:
        """The physical ids of a node's usable cores: the profile's, or, when
        `cores_per_node` says otherwise, the first that many ids not blocked."""
        profile = self.profile
        usable = profile.usable_cores
        if self.cores_per_node == len(usable):
            return usable
        blocked = set(profile.blocked_cores)
        ids = (c for c in itertools.count() if c not in blocked)
        return tuple(itertools.islice(ids, self.cores_per_node))

    @property
    def workers_per_node(self) -> int:
        assert self.cores_per_node is not None
        if self.function_workers is not None:
            return self.function_workers
        return self.cores_per_node  # each core can run a function
