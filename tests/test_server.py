"""Lifecycle of the embedded nx-27017 server: EmbeddedServer, ensure_server and friends.

Every server started here is a real process spoken to over TCP; every test stops what it starts.
"""
from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import pytest
from helpers import wait_for
from pymongo import MongoClient

from hyperspace_explorer import server as srv
from hyperspace_explorer.errors import ServerError
from hyperspace_explorer.server import (
    EmbeddedServer,
    ensure_server,
    home_dir,
    resolve_uri,
    server_status,
    stop_server,
)

REPO = Path(__file__).resolve().parents[1]
STARTED_NOTE = "runs are stored in"  # part of the note ensure_server prints when it starts one


# -- helpers -------------------------------------------------------------------------------------
def client_for(uri: str) -> MongoClient:
    return MongoClient(uri, serverSelectionTimeoutMS=5000)


def servers_on(data_dir: Path) -> list[int]:
    """Pids of live nx-27017 processes serving data_dir (found via /proc, not via our state)."""
    target = str(data_dir.resolve())
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[-1].split()[0]
        except OSError:
            continue
        args = [a.decode(errors="replace") for a in argv]
        if state != "Z" and "--data-dir" in args and target in args and any("nx_27017" in a for a in args):
            pids.append(int(entry.name))
    return pids


def refuses_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except OSError:
        return True


pytestmark = pytest.mark.skipif(not Path("/proc/self/cmdline").exists(),
                                reason="process checks read /proc (Linux)")


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private HSE_HOME; whatever machine-wide server a test starts there is stopped after."""
    path = tmp_path / "hse_home"
    monkeypatch.setenv("HSE_HOME", str(path))
    monkeypatch.delenv("HSE_MONGO_URI", raising=False)
    yield path
    stop_server(path)
    assert servers_on(path / "data") == []


@pytest.fixture
def private_server(tmp_path: Path) -> Iterator[EmbeddedServer]:
    server = EmbeddedServer(tmp_path / "data")
    try:
        yield server
    finally:
        server.stop()


# -- EmbeddedServer ------------------------------------------------------------------------------
def test_session_server_fixture_is_real_and_consistent(embedded_server: EmbeddedServer, mongo_uri: str, db_name: str):
    assert embedded_server.is_alive()
    assert embedded_server.uri == f"mongodb://127.0.0.1:{embedded_server.port}"
    assert int(embedded_server.pid_file.read_text()) == embedded_server.pid
    assert servers_on(embedded_server.data_dir) == [embedded_server.pid]
    with client_for(mongo_uri) as client:
        client[db_name].things.insert_one({"x": 1})
        assert client[db_name].things.find_one({"x": 1}, {"_id": 0}) == {"x": 1}


def test_start_stop_restart_on_same_data_and_port_keeps_data(private_server: EmbeddedServer):
    server = private_server.start()
    port, first_pid = server.port, server.pid
    client = client_for(server.uri)
    try:
        client.hse.runs.insert_one({"_id": "run-1", "metric": 0.5})

        assert server.stop() is True
        assert not server.is_alive() and server.pid is None
        assert refuses_connections(port)
        assert not server.pid_file.exists()
        assert server.stop() is False  # already stopped

        server.start()  # rebinding the same port right away must work
        assert server.port == port and server.pid != first_pid
        assert server.uri == f"mongodb://127.0.0.1:{port}"
        # the client that was connected before the outage works again after it
        assert client.hse.runs.find_one({"_id": "run-1"}) == {"_id": "run-1", "metric": 0.5}
    finally:
        client.close()


def test_restart_after_crash_removes_stale_pid_file(private_server: EmbeddedServer):
    server = private_server.start()
    with client_for(server.uri) as client:
        client.hse.runs.insert_one({"_id": "committed"})
    os.kill(server.pid, signal.SIGKILL)
    wait_for(lambda: not server.is_alive(), 10, "the killed server to exit")
    assert server.pid_file.exists()  # nx-27017 cannot clean up after SIGKILL

    server.start()
    assert int(server.pid_file.read_text()) == server.pid
    with client_for(server.uri) as client:
        assert client.hse.runs.find_one({"_id": "committed"}) == {"_id": "committed"}


def test_start_is_idempotent_while_running(private_server: EmbeddedServer):
    server = private_server.start()
    pid = server.pid
    assert server.start() is server and server.pid == pid
    assert servers_on(server.data_dir) == [pid]


def test_port_taken_by_another_program_is_a_clear_server_error(tmp_path: Path):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        server = EmbeddedServer(tmp_path / "data", port=port)
        with pytest.raises(ServerError, match=rf"127\.0\.0\.1:{port}.*already in use"):
            server.start()
        assert not server.is_alive()
        assert servers_on(tmp_path / "data") == []


def test_server_exiting_during_startup_reports_its_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    # Skip our pre-check so that nx-27017 itself hits the taken port and dies.
    monkeypatch.setattr(srv, "_port_is_free", lambda host, port: True)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        server = EmbeddedServer(tmp_path / "data", port=port)
        with pytest.raises(ServerError) as info:
            server.start(timeout=20)
    message = str(info.value)
    assert "exited with code" in message
    assert "address already in use" in message.lower()  # the tail of the server's own log
    assert not server.is_alive()


def test_two_servers_never_share_a_data_dir(private_server: EmbeddedServer):
    private_server.start()
    intruder = EmbeddedServer(private_server.data_dir)
    with pytest.raises(ServerError, match="already serves"):
        intruder.start()
    assert servers_on(private_server.data_dir) == [private_server.pid]


def test_log_keeps_lifecycle_lines_but_not_every_command(private_server: EmbeddedServer):
    server = private_server.start()
    with client_for(server.uri) as client:
        for i in range(20):
            client.hse.noise.insert_one({"i": i})
            client.admin.command("ping")
    server.stop()
    log = server.log_file.read_text()
    assert "Listening on" in log and "Shutting down" in log
    assert "Calling db.command" not in log
    assert "Traceback" not in log


# -- machine-wide server -------------------------------------------------------------------------
def test_home_dir_from_env_or_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HSE_HOME", str(tmp_path / "custom"))
    assert home_dir() == tmp_path / "custom"
    monkeypatch.delenv("HSE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    assert home_dir() == tmp_path / "user" / ".hyperspace_explorer"


def test_status_and_stop_when_nothing_runs(home: Path):
    status = server_status()
    assert status["running"] is False and status["pid"] is None and status["uri"] is None
    assert status["data_dir"] == str(home / "data")
    assert status["log_file"] == str(home / "data" / "server.log")
    assert stop_server() is False


def test_ensure_server_starts_once_then_reuses(home: Path, capsys: pytest.CaptureFixture):
    uri = ensure_server()
    note = capsys.readouterr().err
    assert STARTED_NOTE in note and str((home / "data").resolve()) in note
    assert "nx-27017" in note and "single-machine" in note
    assert "HSE_MONGO_URI=mongodb://host:27017" in note and "--mongo-uri" in note

    assert ensure_server() == uri
    assert capsys.readouterr().err == ""  # the note is printed only by the caller that started it

    status = server_status()
    assert status["running"] is True and status["uri"] == uri
    assert servers_on(home / "data") == [status["pid"]]
    with client_for(uri) as client:
        assert client.admin.command("ping")["ok"] == 1

    assert stop_server() is True
    assert server_status()["running"] is False
    assert servers_on(home / "data") == []
    assert stop_server() is False


def test_ensure_server_prefers_27017_else_any_free_port(home: Path):
    with socket.socket() as squatter:  # take 27017 so ensure_server must fall back
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            squatter.bind(("127.0.0.1", srv.DEFAULT_PORT))
            squatter.listen()
        except OSError as exc:  # taken already (another program, a parallel test process)
            assert exc.errno == errno.EADDRINUSE, exc
        uri = ensure_server()
    assert uri != f"mongodb://127.0.0.1:{srv.DEFAULT_PORT}"
    assert server_status()["port"] != srv.DEFAULT_PORT


def test_ensure_server_replaces_a_dead_server_and_keeps_data(home: Path, capsys: pytest.CaptureFixture):
    uri = ensure_server()
    with client_for(uri) as client:
        client.hse.runs.insert_one({"_id": "kept"})
    old_pid = server_status()["pid"]
    os.kill(old_pid, signal.SIGKILL)
    wait_for(lambda: not server_status()["running"], 10,
             "the killed server to be seen as down")
    capsys.readouterr()

    new_uri = ensure_server()
    assert STARTED_NOTE in capsys.readouterr().err
    new_pid = server_status()["pid"]
    assert new_pid != old_pid and servers_on(home / "data") == [new_pid]
    with client_for(new_uri) as client:
        assert client.hse.runs.find_one({"_id": "kept"}) == {"_id": "kept"}


def test_concurrent_processes_start_exactly_one_server_that_outlives_them(home: Path):
    script = "from hyperspace_explorer.server import ensure_server; print(ensure_server())"
    env = dict(os.environ, HSE_HOME=str(home),
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    procs = [subprocess.Popen([sys.executable, "-c", script], env=env, cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(4)]
    results = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], results

    uris = {out.strip() for out, _ in results}
    assert len(uris) == 1
    assert sum(STARTED_NOTE in err for _, err in results) == 1
    # every caller has exited; the server they share is still there, and it is the only one
    status = server_status()
    assert status["running"] is True and status["uri"] in uris
    assert servers_on(home / "data") == [status["pid"]]
    assert ensure_server() == status["uri"]


def test_concurrent_threads_start_exactly_one_server(home: Path, capsys: pytest.CaptureFixture):
    barrier = threading.Barrier(4)

    def call() -> str:
        barrier.wait()
        return ensure_server(home)

    with ThreadPoolExecutor(4) as pool:
        uris = set(pool.map(lambda _: call(), range(4)))
    assert len(uris) == 1
    assert capsys.readouterr().err.count(STARTED_NOTE) == 1
    assert servers_on(home / "data") == [server_status(home)["pid"]]


def test_resolve_uri_precedence(home: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HSE_MONGO_URI", "mongodb://from-env:27017")
    assert resolve_uri("mongodb://explicit:1234") == "mongodb://explicit:1234"
    assert resolve_uri() == "mongodb://from-env:27017"
    assert resolve_uri("") == "mongodb://from-env:27017"
    assert not (home / "server.json").exists()  # no embedded server when a URI is configured
    assert servers_on(home / "data") == []

    monkeypatch.delenv("HSE_MONGO_URI")
    uri = resolve_uri()
    assert uri == server_status()["uri"] and server_status()["running"] is True
    assert resolve_uri() == uri


def test_concurrent_homes_each_get_their_own_server(tmp_path: Path):
    """Two HSE_HOMEs racing for port 27017: each must end up with its own server and data, never
    with a URI that points at the other home's server."""
    homes = [tmp_path / f"home{i}" for i in range(3)]
    script = ("import os; from hyperspace_explorer.server import ensure_server, server_status; "
              "ensure_server(); s = server_status(); print(s['uri'], s['pid'])")
    base = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    try:
        procs = [subprocess.Popen([sys.executable, "-c", script], env=dict(base, HSE_HOME=str(h)), cwd=REPO,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for h in homes]
        results = [p.communicate(timeout=60) for p in procs]
        assert [p.returncode for p in procs] == [0, 0, 0], results
        uris = [out.split()[0] for out, _ in results]
        assert len(set(uris)) == 3
        for h, (out, _) in zip(homes, results):
            uri, pid = out.split()
            assert servers_on(h / "data") == [int(pid)]
            with client_for(uri) as client:
                assert client.admin.command("serverStatus")["pid"] == int(pid)
    finally:
        for h in homes:
            stop_server(h)
    assert all(servers_on(h / "data") == [] for h in homes)


def test_lost_state_file_adopts_the_running_server_instead_of_starting_another(home: Path, capsys: pytest.CaptureFixture):
    uri = ensure_server()
    pid = server_status()["pid"]
    capsys.readouterr()
    (home / "server.json").unlink()

    assert ensure_server() == uri  # found through <data>/server.pid, verified by serverStatus
    assert capsys.readouterr().err == ""
    assert server_status()["pid"] == pid and servers_on(home / "data") == [pid]

    (home / "server.json").unlink()
    assert stop_server() is True
    assert servers_on(home / "data") == []
