"""Agent <-> function worker messages, their one result record, and how calls end."""

from __future__ import annotations

import pickle
import threading
from collections.abc import Iterator

import pytest
import zmq

from pilotfish.backends.functions import calls
from pilotfish.backends.functions.protocol import (
    STATES,
    Call,
    Cancel,
    Done,
    FromWorker,
    Outcome,
    Ready,
    Result,
    Run,
    Started,
    Stop,
    ToWorker,
)
from pilotfish.backends.functions.worker import FunctionWorker
from pilotfish.keys import Keys
from pilotfish.messages import encode
from pilotfish.states import TaskState
from pilotfish.wire import Receiver


def test_messages_to_a_worker_round_trip() -> None:
    receiver: Receiver[ToWorker] = Receiver("test", ToWorker)
    run = Run([Call("t1", "k", b"\x80args", 2.5), Call("t2", "k", None, None)], {"k": b"fn"})
    for msg in (run, Cancel(["t1"]), Stop()):
        assert receiver.decode(encode(msg)) == msg
    assert receiver.dropped == 0


def test_messages_from_a_worker_round_trip() -> None:
    receiver: Receiver[FromWorker] = Receiver("test", FromWorker)
    done = Done([Result("t1", Outcome.OK, b"\x80", None, 1.0, 2.0),
                 Result("t2", Outcome.TIMEOUT, None, "timed out", 1.0, 3.0),
                 Result("t3", Outcome.ERROR, None, "exit code 1", None, 3.0, exit_code=1)])
    for msg in (Ready(123), Started("t1", 1.0), done):
        assert receiver.decode(encode(msg)) == msg
    decoded = receiver.decode(encode(done))
    assert isinstance(decoded, Done) and decoded.results[1].outcome is Outcome.TIMEOUT


@pytest.mark.parametrize("data", [
    b"\xc1" * 20,
    encode(Done([Result("t1", Outcome.OK, None, None, 1.0, 2.0)]))[:-3],  # truncated
    encode(["Done", [["t1", 7, None, None, 1.0, 2.0, None]]]),  # no such outcome
    encode(["Done", [["t1", 0, None, None, 1.0]]]),  # a field short
    encode(["Started", "t1"]),
    encode(Run([])),  # well-formed, but for the worker
    encode(["Ready", "pid"]),
])
def test_what_a_worker_cannot_have_sent_is_dropped(data: bytes) -> None:
    receiver: Receiver[FromWorker] = Receiver("test", FromWorker)
    assert receiver.decode(data) is None
    assert receiver.dropped == 1


def test_per_task_records_are_frozen_and_untracked() -> None:
    import gc

    result = Result("t1", Outcome.OK, b"", None, 1.0, 2.0)
    call = Call("t1", "k", None, None)
    assert not gc.is_tracked(result) and not gc.is_tracked(call)
    with pytest.raises(AttributeError):
        result.uid = "t2"  # type: ignore[misc]


def test_each_outcome_has_its_final_state() -> None:
    assert STATES == {Outcome.OK: TaskState.DONE, Outcome.ERROR: TaskState.FAILED,
                      Outcome.CANCELED: TaskState.CANCELED, Outcome.TIMEOUT: TaskState.FAILED}


# ---- calls.py ---------------------------------------------------------------------------


def _raise(message: str) -> None:
    raise ValueError(message)


def test_a_return_value_is_pickled() -> None:
    result = calls.returned("t1", {"a": [1, 2]}, 1.0, 2.0)
    assert result.outcome is Outcome.OK and result.error is None
    assert result.result is not None and pickle.loads(result.result) == {"a": [1, 2]}
    assert (result.uid, result.exec_start, result.exec_stop) == ("t1", 1.0, 2.0)


def test_a_return_value_plain_pickle_cannot_take_goes_through_cloudpickle() -> None:
    result = calls.returned("t1", lambda: 42, 1.0, 2.0)
    assert result.outcome is Outcome.OK and result.result is not None
    assert pickle.loads(result.result)() == 42


def test_a_return_value_nothing_can_serialise_is_an_error() -> None:
    result = calls.returned("t1", threading.Lock(), 1.0, 2.0)
    assert result.outcome is Outcome.ERROR
    assert result.error is not None and result.error.startswith(
        "return value of type lock cannot be serialised: ")
    assert result.result is not None
    exc = pickle.loads(result.result)
    assert isinstance(exc, TypeError) and str(exc) == result.error


def test_a_failure_carries_the_exception_and_the_users_traceback() -> None:
    try:
        _raise("boom")
    except ValueError as exc:
        result = calls.failed("t1", exc, 1.0, 2.0)
    assert result.outcome is Outcome.ERROR and result.result is not None
    assert repr(pickle.loads(result.result)) == "ValueError('boom')"
    assert result.error is not None and result.error.startswith("Traceback")
    assert "_raise" in result.error and result.error.endswith("ValueError: boom")


def test_an_exception_that_cannot_be_pickled_is_none() -> None:
    class Unpicklable(Exception):
        def __reduce__(self) -> str:
            raise TypeError("no")

    assert calls.pickle_exception(Unpicklable()) is None
    assert calls.pickle_exception(ValueError("x")) is not None


# ---- a worker's receiving end -------------------------------------------------------------


@pytest.fixture
def worker() -> Iterator[FunctionWorker]:
    ctx = zmq.Context.instance()
    keys = Keys.generate()
    agent = ctx.socket(zmq.ROUTER)
    keys.serve(agent)
    port = agent.bind_to_random_port("tcp://127.0.0.1")
    worker = FunctionWorker(f"tcp://127.0.0.1:{port}", "w0", None, keys)
    yield worker
    worker.sock.close(0)
    worker.announcer.sock.close(0)
    agent.close(0)


def test_a_worker_drops_what_it_cannot_decode_and_takes_the_rest(
        worker: FunctionWorker) -> None:
    worker._handle(b"\xc1 twenty bytes junk")
    worker._handle(encode(Ready(1)))  # well-formed, but not for a worker
    worker._handle(encode(Run([Call("t1", "k", None, None)], {"k": b"fn"})))
    worker._handle(encode(Cancel(["t1"])))
    assert worker.receiver.dropped == 2
    assert [c.uid for c in worker.queue] == ["t1"] and worker.blobs == {"k": b"fn"}
    assert worker.canceled == {"t1"}
    result = worker._run_one(worker.queue.popleft())
    assert result.outcome is Outcome.CANCELED
    worker._handle(encode(Stop()))
    assert worker.stopping


def test_a_worker_imports_none_of_the_client() -> None:
    """Workers start per core: their start-up is what importing them costs, so the
    package's public names load lazily and a worker loads only what it uses."""
    import subprocess
    import sys

    code = ("import sys, pilotfish.backends.functions.worker\n"
            "heavy = {'pilotfish.session', 'pilotfish.description', 'pilotfish.journal',"
            " 'pilotfish.channel', 'concurrent.futures'} & set(sys.modules)\n"
            "assert not heavy, heavy\n"
            "import pilotfish as pf\n"
            "assert pf.TaskState.DONE.value == 'DONE' and 'Session' in dir(pf)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
