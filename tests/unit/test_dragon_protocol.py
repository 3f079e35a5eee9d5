"""Agent <-> Dragon executor messages, and both ends receiving what they cannot use
(over real ZeroMQ sockets; no Dragon runtime needed)."""

from __future__ import annotations

import pickle
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from pilotfish.backends import base
from pilotfish.backends.dragon import executor as executor_module
from pilotfish.backends.dragon.backend import DragonBackend
from pilotfish.backends.dragon.protocol import (
    Calls,
    Cancel,
    Done,
    Exec,
    ExecTask,
    Exited,
    FromExecutor,
    Functions,
    Outcome,
    PoolCall,
    Rank,
    Ready,
    Requeued,
    Result,
    Signal,
    Started,
    StartWorker,
    Stop,
    ToExecutor,
)
from pilotfish.keys import Keys
from pilotfish.messages import TaskSpec, encode
from pilotfish.states import TaskState
from pilotfish.wire import Receiver

TO_EXECUTOR: list[Any] = [
    Functions({"k": b"fn"}),
    Calls([PoolCall("t1", "k", b"args", 1.5, {"CUDA_VISIBLE_DEVICES": "0"}, 3),
           PoolCall("t2", "k", None, None, None, -1)]),
    Exec([ExecTask("t3", [Rank(["/bin/true"], {"A": "1"}, 0, [0, 1]),
                          Rank(["/bin/true"], {}, 1, [])],
                   "/tmp", "/tmp/t3.out", "/tmp/t3.err", None, "cray")]),
    StartWorker("w0", ["python", "-m", "x"], {"B": "2"}, "/tmp", "/tmp/w0.log", 1),
    Signal("w0", 10),
    Cancel(["t1", "t3"]),
    Stop(),
]
FROM_EXECUTOR: list[Any] = [
    Ready(42),
    Started("t3", 1.0),
    Done([Result("t1", Outcome.OK, b"r", None, 1.0, 2.0),
          Result("t3", Outcome.ERROR, None, None, 1.0, 2.0, exit_code=3)]),
    Requeued(["t2"]),
    Exited("w0", None),
    Exited("w1", -9),
]

KEYS = Keys.generate()  # the session's: the executor and backend speak through them


@pytest.mark.parametrize("msg", TO_EXECUTOR, ids=lambda m: type(m).__name__)
def test_messages_to_the_executor_round_trip(msg: Any) -> None:
    receiver: Receiver[ToExecutor] = Receiver("test", ToExecutor)
    assert receiver.decode(encode(msg)) == msg
    assert Receiver("test", FromExecutor).decode(encode(msg)) is None  # not the other way


@pytest.mark.parametrize("msg", FROM_EXECUTOR, ids=lambda m: type(m).__name__)
def test_messages_from_the_executor_round_trip(msg: Any) -> None:
    receiver: Receiver[FromExecutor] = Receiver("test", FromExecutor)
    assert receiver.decode(encode(msg)) == msg


@pytest.mark.parametrize("data", [
    b"\xc1" * 20,
    encode(Exec([ExecTask("t3", [], "/", "o", "e", None, None)]))[:-4],  # truncated
    encode(["Exec", [["t3", [["/bin/true"]], "/", "o", "e", None, None]]]),  # rank short
    encode(["Signal", "w0", "SIGTERM"]),
    encode(["Calls", [["t1", "k", None, None, None, "worker"]]]),
    encode(["Launch", []]),
])
def test_what_the_agent_cannot_have_sent_is_dropped(data: bytes) -> None:
    receiver: Receiver[ToExecutor] = Receiver("test", ToExecutor)
    assert receiver.decode(data) is None and receiver.dropped == 1


# ---- the executor's receiving end (its loop, without a runtime) -----------------------


class _FakePool:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def apply_async(self, fn: Callable[..., Any], args: tuple[Any, ...],
                    callback: Callable[[Any], None]) -> None:
        self.calls.append(args)

    def terminate(self) -> None:
        pass


@pytest.fixture
def agent_end() -> Iterator[tuple[zmq.Socket[bytes], str]]:
    sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.PAIR)
    sock.setsockopt(zmq.LINGER, 0)
    KEYS.serve(sock)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    yield sock, f"tcp://127.0.0.1:{port}"
    sock.close(0)


def _recv(sock: zmq.Socket[bytes]) -> Any:
    assert sock.poll(5000), "nothing came"
    return Receiver("test", FromExecutor).decode(sock.recv())


def test_the_executor_drops_what_it_cannot_use_and_keeps_going(
        agent_end: tuple[zmq.Socket[bytes], str], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(executor_module, "_hostnames", lambda: ["localhost"])
    sock, address = agent_end
    ex = executor_module.Executor(address, 0, str(tmp_path / "calls"), KEYS)
    thread = threading.Thread(target=ex.run, daemon=True)
    thread.start()
    assert isinstance(_recv(sock), Ready)
    sock.send(b"\xc1 twenty bytes junk!")
    sock.send(encode(Ready(1)))  # well-formed, but from the executor's side
    sock.send(encode(Signal("w9", 15)))  # a worker that is not there (any more)
    sock.send(encode(Cancel(["gone"])))  # a task that is not there (any more)
    sock.send(encode(Calls([PoolCall("t1", "k", None, None, None, 0)])))  # no pool here
    deadline = time.monotonic() + 5
    while ex.receiver.dropped < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    ex.pool = _FakePool()  # type: ignore[assignment]
    sock.send(encode(Functions({"k": pickle.dumps(len)})))
    sock.send(encode(Calls([PoolCall("t2", "k", None, None, None, 0),
                            PoolCall("t3", "never sent", None, None, None, 0)])))
    done = _recv(sock)
    assert isinstance(done, Done) and [r.uid for r in done.results] == ["t3"]
    assert done.results[0].outcome is Outcome.ERROR
    assert done.results[0].error == "its function never reached the Dragon executor"
    sock.send(encode(Stop()))
    thread.join(10)
    assert not thread.is_alive()
    assert ex.receiver.dropped == 4 and ex.receiver.stale == 2
    assert [args[2][0].uid for args in ex.pool.calls] == ["t2"]  # type: ignore[attr-defined]
    ex.sock.close(0)


# ---- the backend's receiving end -----------------------------------------------------------


def test_the_dragon_backend_drops_and_counts_what_it_cannot_use(
        agent_end: tuple[zmq.Socket[bytes], str], tmp_path: Path) -> None:
    executor_end, address = agent_end
    backend = DragonBackend("dragon", str(tmp_path), base.NodeLayout((0, 1)), {},
                            str(tmp_path), 1, 1, [], str(KEYS.save(tmp_path / "keys")),
                            dragon_pool=True)
    events: list[base.BackendEvent] = []
    backend._emit = events.append
    backend._ready = True
    sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.PAIR)
    sock.setsockopt(zmq.LINGER, 0)
    KEYS.connect(sock)
    sock.connect(address.replace("127.0.0.1", "localhost"))
    backend._sock = executor_end  # the backend's own end, as if bound in start()
    spec = TaskSpec("t1", "function", function_key="k")
    backend._tasks["t1"] = base.DispatchedTask(spec, 0, 0, 0)
    try:
        for data in [b"\xc1" * 20, encode(Calls([])), encode(Ready(2)),
                     encode(Exited("w0", 0)),  # this runtime runs no workers: not ours
                     encode(Started("gone", 1.0)), encode(Requeued(["gone"])),
                     encode(Done([Result("gone", Outcome.OK, None, None, 1.0, 2.0),
                                  Result("t1", Outcome.OK, b"42", None, 1.0, 2.0)]))]:
            sock.send(data)
        deadline = time.monotonic() + 5
        while not events and time.monotonic() < deadline:
            executor_end.poll(100)
            backend._on_message()
    finally:
        sock.close(0)
        backend._sock = None
    assert events == [base.TaskFinished("t1", TaskState.DONE, 1.0, 2.0, result=b"42")]
    assert backend.receiver.dropped == 4 and backend.receiver.stale == 3
