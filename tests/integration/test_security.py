"""A session only its owner can touch: its files are private."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import zmq

import pilotfish as pf
from pilotfish.backends.dragon import unavailable as dragon_unavailable
from pilotfish.keys import Keys

from .test_faults import nothing_left_of

pytestmark = pytest.mark.timeout(60)

TD = pf.TaskDescription


def _mode(path: Path | str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_a_sessions_files_are_its_owners_only(tmp_path: Path) -> None:
    old = os.umask(0o022)  # a permissive umask, as on many login nodes
    try:
        with pf.Session(path=tmp_path) as session:
            pilot = session.start_pilot(pf.PilotDescription(nodes=1, cores_per_node=2))
            task = session.submit(TD(executable="/bin/sh", arguments=["-c", "echo out; echo e >&2"],
                                     environment={"TOKEN": "secret"}))
            assert task.result(timeout=30) == 0
            session.journal.flush()
            root = session.path
            assert _mode(root) == 0o700
            for name in ("session.db", "session.db-wal"):
                assert _mode(root / name) == 0o600, name
            assert _mode(pilot.sandbox) == 0o700
            assert _mode(pilot.sandbox / "agent.log") == 0o600
            for suffix in (".out", ".err"):
                assert _mode(pilot.sandbox / "tasks" / f"{task.uid}{suffix}") == 0o600
        assert _mode(pilot.sandbox / "agent-stats.json") == 0o600
    finally:
        os.umask(old)


def _cmdlines() -> dict[int, str]:
    found = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/cmdline", "rb") as f:
                    found[int(name)] = f.read().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                pass
    return found


def test_a_peer_without_the_keys_gets_nothing_and_changes_nothing(session: pf.Session) -> None:
    """As the attacker did before: read a worker's address off its command line (anyone
    can), connect under its identity, and listen for the next tasks' code and arguments."""
    session.start_pilot(pf.PilotDescription(nodes=1, cores_per_node=1))
    assert session.submit(TD(function=pow, args=(2, 3))).result(timeout=30) == 8
    worker = next(cmd for cmd in _cmdlines().values()
                  if "pilotfish.backends.functions.worker" in cmd and str(session.path) in cmd)
    address = next(arg for arg in worker.split() if arg.startswith("tcp://"))
    thief = zmq.Context.instance().socket(zmq.DEALER)
    thief.setsockopt(zmq.IDENTITY, b"w0")
    thief.setsockopt(zmq.LINGER, 0)
    thief.connect(address)
    try:
        thief.send(b"anything")
        tasks = session.submit([TD(function=pow, args=(3, i)) for i in range(20)])
        assert [t.result(timeout=30) for t in tasks] == [3 ** i for i in range(20)]
        assert thief.poll(1000) == 0  # it received nothing
    finally:
        thief.close()


def test_no_key_is_ever_in_a_command_line(session: pf.Session) -> None:
    session.start_pilot(pf.PilotDescription(nodes=1, cores_per_node=2))
    assert session.submit(TD(function=pow, args=(2, 3))).result(timeout=30) == 8
    keys = Keys.load(session.keys_file)
    assert _mode(session.keys_file) == 0o600
    secrets = [k.decode() for k in (keys.server_secret, keys.client_secret,
                                    keys.server_public, keys.client_public)]
    ours = [cmd for cmd in _cmdlines().values() if str(session.path) in cmd]
    assert any("pilotfish.agent" in cmd for cmd in ours)
    assert any("functions.worker" in cmd for cmd in ours)
    assert not [cmd for cmd in ours if any(s in cmd for s in secrets)]


# ---- an attacker in a process of its own, as another user --------------------------------

ATTACKER = r'''
"""Attack a pilotfish session from outside, as a real attacker would: find its processes'
addresses and files in their command lines (anyone may read those), then try to read
the files, and connect to every address without the session's keys (without CURVE; with
a key pair of its own; with that pair and the session's server key, as if it had
leaked), under the identities the command lines give away, send forged and malformed
messages (one asks for a command of the attacker's to be run), and listen for anything.
Prints what it found and got, as JSON."""
import json, os, pickle, re, sys, time
import zmq
from zmq.utils.monitor import recv_monitor_message
from pilotfish import messages as m
from pilotfish.backends.functions import protocol as fp
from pilotfish.backends.dragon import protocol as dp

args = json.loads(sys.argv[1])
if args["uid"] is not None:  # everything is imported: now become another user
    os.setgroups([])
    os.setgid(args["uid"])
    os.setuid(args["uid"])

ours = []  # the session's processes, by their command lines
for name in filter(str.isdigit, os.listdir("/proc")):
    try:
        with open(f"/proc/{name}/cmdline", "rb") as f:
            argv = f.read().decode(errors="replace").split("\0")
    except OSError:
        continue
    if any(args["hint"] in a for a in argv) and int(name) != os.getpid():
        ours.append(argv)

targets, files = {}, set()
for argv in ours:
    text = " ".join(argv)
    files.update(re.findall(r"(/[^\s\"']*(?:keys|\.log|\.started))", text))
    for address in re.findall(r"tcp://127\.0\.0\.1:\d+", text):
        if "pilotfish.agent" in text:
            role, identities = "client", [b""]
        elif "pilotfish.backends.functions.worker" in text:
            ident = argv[argv.index(address) + 1]
            role, identities = "pool", [ident.encode(), (ident + "+announcer").encode()]
        else:
            role, identities = "executor", [b""]
        targets.setdefault(address, (role, set()))[1].update(identities)
for argv in ours:  # the session's journal, next to its keys
    for path in list(files):
        if path.endswith("/keys"):
            files.add(path[:-len("keys")] + "session.db")

read = {}
for path in sorted(files):
    try:
        with open(path, "rb") as f:
            read[path] = f"read {len(f.read())} bytes"
    except OSError as exc:
        read[path] = type(exc).__name__

uids = [f"task.{i:06d}" for i in range(1, 41)]  # they are numbered: guess them
now = time.time()
forged_result = pickle.dumps("forged")
run_mine = m.Submit([m.TaskSpec("task.999999", "executable", "/bin/sh",
                                ["-c", f"touch {args['marker']}"])])
junk = [b"\xc1" * 20, b"", os.urandom(1 << 20)]
forged = {
    "client": [m.encode(m.Hello(m.WIRE_VERSION, 1, now, 1, 1, 0)),
               m.encode(m.Accepted(uids, now)),
               m.encode(m.Updates([m.TaskUpdate(u, "DONE", result=forged_result)
                                   for u in uids])),
               m.encode(m.Updates([m.TaskUpdate(u, "FAILED", error="forged") for u in uids])),
               m.encode(m.Bye("forged")), m.encode(run_mine)],
    "pool": [m.encode(fp.Ready(1)), *(m.encode(fp.Started(u, now)) for u in uids),
             m.encode(fp.Done([fp.Result(u, fp.Outcome.OK, forged_result, None, now, now)
                               for u in uids])), m.encode(run_mine)],
    "executor": [m.encode(dp.Ready(1)),
                 m.encode(dp.Done([dp.Result(u, dp.Outcome.OK, forged_result, None, now, now)
                                   for u in uids])),
                 m.encode(dp.Requeued(uids)), m.encode(dp.Exited("w0", -9)),
                 m.encode(run_mine)],
}

mine_public, mine_secret = zmq.curve_keypair()
guessed_public, _ = zmq.curve_keypair()
modes = {"no CURVE": None, "its own keys": guessed_public,
         "its own keys and the leaked server key": args["server_key"].encode()}
ctx = zmq.Context()
attempts = []
for mode, server_key in modes.items():
    for address, (role, identities) in sorted(targets.items()):
        for identity in sorted(identities):
            sock = ctx.socket(zmq.PAIR if role == "executor" else zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SNDTIMEO, 0)
            if identity:
                sock.setsockopt(zmq.IDENTITY, identity)
            if server_key is not None:
                sock.curve_serverkey = server_key
                sock.curve_publickey = mine_public
                sock.curve_secretkey = mine_secret
            monitor = sock.get_monitor_socket()
            sock.connect(address)
            sent = 0
            for data in forged[role] + junk:
                try:
                    sock.send(data)
                    sent += 1
                except zmq.Again:  # no peer took it
                    pass
            received, events = 0, set()
            deadline = time.monotonic() + args["listen"]
            while (left := deadline - time.monotonic()) > 0:
                if sock.poll(min(left, 0.05) * 1000):
                    sock.recv()
                    received += 1
                while monitor.poll(0):
                    events.add(zmq.Event(recv_monitor_message(monitor)["event"]).name)
            sock.disable_monitor()
            monitor.close(0)
            sock.close(0)
            attempts.append({"mode": mode, "address": address, "role": role,
                             "identity": identity.decode(), "queued": sent,
                             "received": received, "events": sorted(events)})
ctx.term()
print(json.dumps({"processes": len(ours), "files": read, "attempts": attempts}))
'''


def greet(name: str) -> str:
    return f"hello {name}"


def mark_and_wait(runs: str, label: str, go: str) -> str:
    """Marks its run, then runs until the file `go` appears."""
    with open(runs, "a") as f:
        f.write(f"{label} {os.getpid()}\n")
    deadline = time.monotonic() + 50
    while not os.path.exists(go) and time.monotonic() < deadline:
        time.sleep(0.02)
    return label


def _attack(hint: str, marker: Path, server_key: bytes, uid: int | None,
            listen: float = 0.2) -> dict[str, Any]:
    """Run the attacker (as user `uid`) and return its report."""
    args = {"hint": hint, "marker": str(marker), "server_key": server_key.decode(),
            "uid": uid, "listen": listen}
    out = subprocess.run([sys.executable, "-c", ATTACKER, json.dumps(args)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    report: dict[str, Any] = json.loads(out.stdout)
    return report


def test_an_attacker_process_of_another_user_gets_nothing_and_changes_nothing(
        tmp_path: Path) -> None:
    """It reads the session's addresses, worker identities and file names off command
    lines, as anyone may; it can read none of the files, and every connection, with or
    without keys of its own, under every identity, is refused before a message goes
    either way. The session's tasks, running as it strikes and submitted after, end as
    they would have, each run once; the attacker's command never runs."""
    home = Path(tempfile.mkdtemp(prefix="pilotfish-attacked-"))  # others may pass through
    home.chmod(0o755)
    marker = tmp_path / "pwned"  # where the attacker's command would leave its mark
    runs = tmp_path / "runs"
    dragon = dragon_unavailable() is None
    partitions = ({"partitions": [pf.PartitionSpec(backend="dragon", nodes=1),
                                  pf.PartitionSpec(backend="builtin", nodes=1)]}
                  if dragon else {})
    try:
        session = pf.Session(path=home)
        with session:
            pilot = session.start_pilot(pf.PilotDescription(
                nodes=2, cores_per_node=2, **partitions))  # type: ignore[arg-type]
            assert pilot.process is not None
            agent = pilot.process.pid
            go = tmp_path / "go"  # the running tasks run until the attack is over
            during = session.submit(
                [TD(function=mark_and_wait, args=(str(runs), f"f{i}", str(go)), name=f"f{i}")
                 for i in range(2)]
                + [TD(executable="/bin/sh", name="x0", arguments=[
                    "-c", f'echo "x0 $$" >> {runs}; while [ ! -e {go} ]; do sleep 0.02; '
                    'done'], partition="builtin" if dragon else None)])
            assert session.wait_for(during, pf.TaskState.RUNNING, timeout=60)
            assert {t.state for t in during} == {pf.TaskState.RUNNING}
            report = _attack(str(session.path), marker,
                             Keys.load(session.keys_file).server_public, uid=65534)
            go.touch()
            assert session._channel.gatekeeper.refused >= 1  # the leaked-key attempts
            after = session.submit([TD(function=greet, args=(str(i),)) for i in range(20)]
                                   + [TD(executable="/bin/echo", arguments=["still ours"])])
            assert session.wait(timeout=60)
            assert [t.result() for t in during] == ["f0", "f1", 0]
            assert [t.result() for t in after[:20]] == [f"hello {i}" for i in range(20)]
            assert after[20].stdout == "still ours\n"
            assert all(t.attempt == 1 for t in during + after)
            assert session.dropped_messages == 0  # nothing it sent was even decoded
            assert pilot.active
        assert pilot.state == "DONE"
        assert pilot.stats["messages_dropped"] == 0  # nor by the agent
        agent_log = (pilot.sandbox / "agent.log").read_text()
    finally:
        shutil.rmtree(home, ignore_errors=True)
    # What it found: the client's address (agent), the workers' (with their identities)
    # and Dragon's executor's; the keys, the journal and the workers' counters by name.
    # Function workers: the built-in partition's started with the pilot (as many as the
    # CPUs, up to its cores), and with Dragon, Dragon's 2 (one per core of its node).
    builtin = min(2 if dragon else 4, os.cpu_count() or 1)
    started = builtin + (2 if dragon else 0)  # each pool's workers are w0, w1, ...
    roles = Counter(a["role"] for a in report["attempts"])  # 3 kinds of keys each
    assert roles == Counter({"client": 3, "pool": 3 * 2 * started,
                             **({"executor": 3} if dragon else {})})
    assert len(report["files"]) == 2 + started  # the keys, the journal, workers' counters
    posed_as = {a["identity"] for a in report["attempts"] if a["role"] == "pool"}
    workers = {i for i in posed_as if not i.endswith("+announcer")}
    assert workers == {f"w{i}" for i in range(max(builtin, 2 if dragon else 0))}
    assert posed_as == workers | {f"{w}+announcer" for w in workers}
    assert any(path.endswith("/keys") for path in report["files"])
    assert any(path.endswith("/session.db") for path in report["files"])
    # What it got: no file, no handshake, no message.
    assert set(report["files"].values()) == {"PermissionError"}, report["files"]
    for attempt in report["attempts"]:
        assert attempt["received"] == 0, attempt
        assert "HANDSHAKE_SUCCEEDED" not in attempt["events"], attempt
    leaked = [a for a in report["attempts"]
              if a["mode"] == "its own keys and the leaked server key"]
    assert any("HANDSHAKE_FAILED_AUTH" in a["events"] for a in leaked), leaked  # the ZAP
    assert "refused a connection from a peer without this session's keys" in agent_log
    assert not marker.exists()  # its command never ran
    assert Counter(line.split()[0] for line in runs.read_text().splitlines()) == Counter(
        {"f0": 1, "f1": 1, "x0": 1})
    nothing_left_of(agent)
