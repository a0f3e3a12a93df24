"""Lifecycle of the embedded MongoDB-wire server (nx-27017) shared by every process on a machine.

hyperspace_explorer keeps its run queue in MongoDB. A user with a real MongoDB points us at it
(`HSE_MONGO_URI` or `--mongo-uri`); everyone else gets `nx-27017`, a MongoDB-wire-protocol
server backed by SQLite, started on demand by whichever process needs it first and then shared
by all the others (workers, CLI, notebooks). Hence:

* `EmbeddedServer` owns one server process on one data directory. Tests use it directly to get a
  private server, and to stop/restart it on the same data and port to simulate a store outage.
* `ensure_server` is the machine-wide variant: the server it starts is recorded in
  `<home>/server.json`, guarded by an `flock` so N concurrent callers start exactly one, and it
  runs in its own session so that it outlives the process that started it.
* `resolve_uri` is what every entry point calls: explicit URI > `HSE_MONGO_URI` > embedded server.

nx-27017 0.8.1 quirks handled here (see the notes next to the code that handles each):
  - the package has no `__main__`, so `python -m nx_27017` fails; we run its `main()` via `-c`;
  - it logs every command with its arguments at INFO level (the log would grow without bound
    under polling workers); the launcher keeps only warnings and lifecycle lines;
  - in the foreground it logs both to stderr and to `--log-file`, so pointing both at one file
    doubles every line: stderr goes to `server.log` and `--log-file` to /dev/null;
  - it refuses to start while its pid file names a live process, and leaves the pid file behind
    when killed with SIGKILL; a stale pid file is removed before starting.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from hyperspace_explorer.errors import ServerError
from hyperspace_explorer.logs import tail
from hyperspace_explorer.processes import stop as stop_processes

__all__ = [
    "DEFAULT_PORT",
    "EmbeddedServer",
    "home_dir",
    "ensure_server",
    "stop_server",
    "server_status",
    "resolve_uri",
]

#: The port a machine-wide embedded server tries first, so that tools which assume the MongoDB
#: default (a `mongosh`, an Omniboard) find it without configuration.
DEFAULT_PORT = 27017

_LOG_NAME = "server.log"
_PID_NAME = "server.pid"
_STATE_NAME = "server.json"
_LOCK_NAME = "server.lock"

# Runs nx-27017's `main()` (`python -m nx_27017` cannot be used: the package has no __main__)
# with two logging fixes: its per-command INFO lines are dropped (set HSE_SERVER_VERBOSE=1 to keep
# them), and so are the asyncio tracebacks that its SIGTERM handler (sys.exit inside the event
# loop) makes every open client connection print on shutdown.
_LAUNCHER = r"""
import logging, os, sys
import nx_27017.daemon as daemon

_stopping = []

class _Quiet(logging.Filter):
    KEEP = ("Starting NX-27017", "Listening on", "Shutting down")

    def filter(self, record):
        if _stopping:
            return record.levelno >= logging.WARNING and record.name != "asyncio"
        return record.levelno >= logging.WARNING or str(record.msg).startswith(self.KEEP)

_exit_on_signal = daemon._signal_exit_handler

def _signal_exit_handler(signum, frame):
    logging.getLogger("nx_27017").info("Shutting down on signal %s", signum)
    _stopping.append(signum)
    _exit_on_signal(signum, frame)

daemon._signal_exit_handler = _signal_exit_handler
if not os.environ.get("HSE_SERVER_VERBOSE"):
    logging.getLogger("nx_27017").addFilter(_Quiet())
    logging.getLogger("asyncio").addFilter(_Quiet())
from nx_27017.nx_27017 import main
sys.exit(main())
"""

# Servers started by `ensure_server` in this process. Keeping their Popen objects alive stops
# Python from warning "subprocess is still running" when they are garbage collected, and lets
# `stop_server` reap them instead of leaving zombies behind.
_DETACHED: dict[int, subprocess.Popen] = {}


class EmbeddedServer:
    """One nx-27017 server process serving `data_dir` (one SQLite file per logical database).

    The process runs in its own session (so Ctrl-C in a terminal or the death of the caller does
    not take it down) and keeps its log and pid file in `data_dir`. `stop()` followed by `start()`
    brings it back on the same data and the same port, which is how tests simulate a store outage.
    """

    def __init__(self, data_dir: Path | str, port: int | None = None, host: str = "127.0.0.1"):
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.host = host
        #: Chosen on the first `start()` when None, then kept so that a restart reuses it.
        self.port: int | None = port
        self._proc: subprocess.Popen | None = None

    # -- read-only facts -------------------------------------------------------------------------
    @property
    def log_file(self) -> Path:
        return self.data_dir / _LOG_NAME

    @property
    def pid_file(self) -> Path:
        return self.data_dir / _PID_NAME

    @property
    def uri(self) -> str:
        """`mongodb://HOST:PORT` to connect to (a wildcard bind address is reached via loopback)."""
        if self.port is None:
            raise ServerError("the embedded server has no port yet: call start() first")
        return f"mongodb://{_format_host(_connect_host(self.host))}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def is_alive(self) -> bool:
        """True while the server process exists (it may still be starting up)."""
        return self._proc is not None and self._proc.poll() is None

    def __repr__(self) -> str:
        state = "alive" if self.is_alive() else "stopped"
        return f"EmbeddedServer(data_dir={str(self.data_dir)!r}, port={self.port}, pid={self.pid}, {state})"

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self, timeout: float = 20.0) -> EmbeddedServer:
        """Launch the server and return once it answers; idempotent while it runs.

        "Answers" means ping succeeds and serverStatus reports this process's pid, so that a
        different server which got hold of the port is never mistaken for ours.

        Raises ServerError (with the tail of the server log) when the port is taken, the process
        exits during start-up, or it does not answer within `timeout` seconds; in the latter case
        the half-started process is killed so that nothing is left behind.
        """
        if self.is_alive():
            return self
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.port is None:
            self.port = _free_port(self.host)
        elif not _port_is_free(self.host, self.port):
            raise ServerError(
                f"cannot start the embedded MongoDB server on {self.host}:{self.port}: the port is "
                f"already in use by another program. Stop that program, choose another port, or "
                f"point hyperspace_explorer at an existing MongoDB with HSE_MONGO_URI."
            )
        self._remove_stale_pid_file()

        cmd = [
            sys.executable, "-c", _LAUNCHER,
            "--data-dir", str(self.data_dir),
            "-p", str(self.port),
            "--host", self.host,
            # stderr already goes to server.log; a second copy via --log-file would double lines.
            "--log-file", os.devnull,
            "--pid-file", str(self.pid_file),
        ]
        log_offset = self.log_file.stat().st_size if self.log_file.exists() else 0
        with open(self.log_file, "ab") as log:
            stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
            log.write(f"--- {stamp} hyperspace_explorer: starting nx-27017 on "
                      f"{self.host}:{self.port} ---\n".encode())
            log.flush()
            try:
                self._proc = subprocess.Popen(
                    cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    cwd=self.data_dir, start_new_session=True, close_fds=True,
                )
            except OSError as exc:
                raise ServerError(f"cannot launch the embedded MongoDB server ({cmd[0]}): {exc}") from exc

        deadline = time.monotonic() + timeout
        while True:
            code = self._proc.poll()
            if code is not None:
                self._proc = None
                raise ServerError(
                    f"the embedded MongoDB server (nx-27017) on {self.host}:{self.port} exited "
                    f"with code {code} during start-up. Log ({self.log_file}):\n"
                    f"{_log_tail(self.log_file, log_offset)}"
                )
            # Up means: answering, and answering from OUR process. Another server that grabbed
            # the port in the meantime (e.g. a concurrent start on 27017 from another HSE_HOME)
            # must not be mistaken for ours: our process will then fail to bind and exit.
            if (_accepts_tcp(_connect_host(self.host), self.port)
                    and _answering_pid(self.uri, 2000) == self._proc.pid):
                return self
            if time.monotonic() > deadline:
                self.stop()
                raise ServerError(
                    f"the embedded MongoDB server (nx-27017) did not answer on {self.uri} within "
                    f"{timeout:.0f}s; it was stopped. Log ({self.log_file}):\n"
                    f"{_log_tail(self.log_file, log_offset)}"
                )
            # Waits for the process to exit, or 50 ms: the poll interval for "is it up yet".
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=0.05)

    def stop(self, timeout: float = 10.0) -> bool:
        """SIGTERM the server, SIGKILL it after `timeout` s, and wait for it; True if it was running.

        The listening socket is closed when the process is gone, so `start()` can rebind the
        same port at once (nx-27017 binds with SO_REUSEADDR, so TIME_WAIT does not block it).
        """
        proc, self._proc = self._proc, None
        if proc is None:
            return False
        was_running = proc.poll() is None
        if was_running:
            try:
                stop_processes([proc], timeout)
            except subprocess.TimeoutExpired as exc:
                raise ServerError(f"the embedded MongoDB server (pid {proc.pid}) "
                                  f"survived SIGKILL") from exc
        # After SIGKILL nx-27017 cannot remove its pid file; a stale one would block the restart.
        self._remove_stale_pid_file()
        return was_running

    def __enter__(self) -> EmbeddedServer:
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    def _detach(self) -> None:
        """Forget the process without stopping it (it is now the machine-wide server)."""
        if self._proc is not None:
            _DETACHED[self._proc.pid] = self._proc
        self._proc = None

    def _remove_stale_pid_file(self) -> None:
        """Delete the pid file unless it names a live nx-27017 serving this same data dir."""
        pid = _read_pid(self.pid_file)
        if pid is not None and _pid_alive(pid):
            if _server_port(pid, self.data_dir) is not None:
                raise ServerError(
                    f"another embedded MongoDB server (nx-27017, pid {pid}) already serves "
                    f"{self.data_dir}; two servers must not share one data directory. Stop it "
                    f"first (kill {pid}) or use another data directory."
                )
            if _cmdline(pid) is None:  # cannot tell (no /proc): assume it is that server
                raise ServerError(
                    f"{self.pid_file} names a running process (pid {pid}); if it is not an "
                    f"nx-27017 server, delete the file and retry."
                )
        with contextlib.suppress(FileNotFoundError):
            self.pid_file.unlink()


# -- the machine-wide server ---------------------------------------------------------------------
def home_dir() -> Path:
    """Where hyperspace_explorer keeps machine-wide state: `HSE_HOME`, else ~/.hyperspace_explorer."""
    return Path(os.environ.get("HSE_HOME") or "~/.hyperspace_explorer").expanduser().absolute()


def ensure_server(home: Path | str | None = None) -> str:
    """Return the URI of the machine-wide embedded server, starting it if none is running.

    The recorded server (`<home>/server.json`) is reused when its pid is alive and it answers
    ping (serverStatus confirms the pid). Otherwise a new one is started on `<home>/data`, on
    port 27017 when free, else on a free port, and a note about where the data lives is printed
    to stderr (only by the caller that started it). An flock on `<home>/server.lock` serialises
    concurrent callers, across processes and threads, so that exactly one server is started.
    """
    home = _home(home)
    home.mkdir(parents=True, exist_ok=True)
    with _locked(home):
        state = _read_state(home)
        if state is not None:
            uri = _live_uri(state)
            if uri is not None:
                return uri
            _reap(state.get("pid"))
        data_dir = (home / "data").resolve()
        adopted = _adopt_running(data_dir)
        if adopted is not None:
            pid, port = adopted
            server = EmbeddedServer(data_dir, port)
            _write_state(home, server, pid)
            return server.uri

        server = _start_preferring(data_dir, DEFAULT_PORT)
        started_pid = server.pid
        if started_pid is None:
            raise ServerError("the embedded MongoDB server exited right after starting")
        pid = started_pid
        _write_state(home, server, pid)
        server._detach()
        print(
            f"hyperspace_explorer: started the embedded MongoDB-compatible server "
            f"(nx-27017, pid {pid}) at {server.uri}.\n"
            f"  Your runs are stored in {data_dir} (log: {server.log_file}).\n"
            f"  This embedded server is meant for single-machine use; it keeps running in the "
            f"background and is shared by every hyperspace_explorer process on this machine.\n"
            f"  To use a real MongoDB instead (e.g. workers on several machines), set "
            f"HSE_MONGO_URI=mongodb://host:27017 or pass --mongo-uri mongodb://host:27017.",
            file=sys.stderr, flush=True,
        )
        return server.uri


def stop_server(home: Path | str | None = None, timeout: float = 10.0) -> bool:
    """Stop the machine-wide embedded server; True if one was running.

    SIGTERM, then SIGKILL after `timeout` seconds. The data stays in `<home>/data`; the next
    `ensure_server` starts a fresh server on it.
    """
    home = _home(home)
    if not home.is_dir():
        return False
    with _locked(home):
        state = _read_state(home) or {}
        data_dir = Path(state.get("data_dir") or home / "data")
        # Without server.json (deleted by hand?), the server's own pid file still finds it.
        pid = state.get("pid") if state else _read_pid(data_dir / _PID_NAME)
        running = isinstance(pid, int) and _pid_alive(pid) and _is_our_server(pid, data_dir)
        if running and isinstance(pid, int):
            _terminate(pid, timeout)
            with contextlib.suppress(FileNotFoundError):
                (data_dir / _PID_NAME).unlink()
        with contextlib.suppress(FileNotFoundError):
            (home / _STATE_NAME).unlink()
        return running


def server_status(home: Path | str | None = None) -> dict[str, Any]:
    """Describe the machine-wide embedded server without starting anything.

    Keys: running (its pid is alive and it answers ping), pid, port, uri, data_dir, log_file,
    started_at. pid/port/uri/started_at are None when no server is recorded.
    """
    home = _home(home)
    state = _read_state(home) or {}
    data_dir = Path(state.get("data_dir") or home / "data")
    return {
        "running": bool(state) and _recorded_server(state)[0] == "up",
        "pid": state.get("pid"),
        "port": state.get("port"),
        "uri": state.get("uri"),
        "data_dir": str(data_dir),
        "log_file": str(data_dir / _LOG_NAME),
        "started_at": state.get("started_at"),
    }


def resolve_uri(mongo_uri: str | None = None) -> str:
    """The MongoDB URI every entry point should use.

    An explicit `mongo_uri` (e.g. from `--mongo-uri`) wins, then the `HSE_MONGO_URI` environment
    variable, and only when neither is given is the embedded server started (or reused).
    """
    if mongo_uri and mongo_uri.strip():
        return mongo_uri.strip()
    env = os.environ.get("HSE_MONGO_URI", "").strip()
    if env:
        return env
    return ensure_server()


# -- helpers -------------------------------------------------------------------------------------
def _home(home: Path | str | None) -> Path:
    return Path(home).expanduser().absolute() if home is not None else home_dir()


@contextlib.contextmanager
def _locked(home: Path) -> Iterator[None]:
    """Exclusive flock on <home>/server.lock. Each call opens its own file description, so the
    lock also serialises threads of one process, not only separate processes."""
    with open(home / _LOCK_NAME, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _read_state(home: Path) -> dict[str, Any] | None:
    try:
        state = json.loads((home / _STATE_NAME).read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def _write_state(home: Path, server: EmbeddedServer, pid: int | None) -> None:
    """Write server.json atomically (readers such as server_status never see half a file)."""
    state = {
        "pid": pid,
        "port": server.port,
        "uri": server.uri,
        "data_dir": str(server.data_dir),
        "log_file": str(server.log_file),
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    tmp = home / f".{_STATE_NAME}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    os.replace(tmp, home / _STATE_NAME)


def _recorded_server(state: dict[str, Any]) -> tuple[str, str | None]:
    """("up", uri) if the recorded server's pid is alive and it answers ping; ("hung", uri) if it
    is alive and is our server but does not answer; ("gone", None) otherwise (dead, or the pid
    was reused by an unrelated process)."""
    pid, uri = state.get("pid"), state.get("uri")
    if not isinstance(pid, int) or not isinstance(uri, str) or not _pid_alive(pid):
        return "gone", None
    if not _is_our_server(pid, Path(state.get("data_dir") or "")):
        return "gone", None
    return ("up" if _answering_pid(uri, 5000) == pid else "hung"), uri


def _live_uri(state: dict[str, Any]) -> str | None:
    """The recorded server's URI if it is up, None if it is gone.

    A live pid that is our server but does not answer is an error rather than a reason to start
    a second server on the same data (SQLite files must have one owner).
    """
    status, uri = _recorded_server(state)
    if status == "hung":
        data_dir = Path(state.get("data_dir") or "")
        raise ServerError(
            f"the embedded MongoDB server (nx-27017, pid {state['pid']}) is running but does not "
            f"answer on {uri}. See {data_dir / _LOG_NAME}; stop it "
            f"(hyperspace_explorer.server.stop_server() or kill {state['pid']}) and retry."
        )
    return uri


def _adopt_running(data_dir: Path) -> tuple[int, int] | None:
    """(pid, port) of an answering nx-27017 already serving data_dir though server.json does not
    record it (e.g. the file was deleted), so that we reuse it rather than fail to start."""
    pid = _read_pid(data_dir / _PID_NAME)
    if pid is None or not _pid_alive(pid):
        return None
    port = _server_port(pid, data_dir)
    if port is None or _answering_pid(f"mongodb://127.0.0.1:{port}", 5000) != pid:
        return None
    return pid, port


def _start_preferring(data_dir: Path, port: int) -> EmbeddedServer:
    """Start on `port` if it is free, else (or if another program grabs it meanwhile) anywhere."""
    if _port_is_free("127.0.0.1", port):
        try:
            return EmbeddedServer(data_dir, port).start()
        except ServerError:
            if _port_is_free("127.0.0.1", port):
                raise  # the failure was not about the port
    return EmbeddedServer(data_dir).start()


def _reap(pid: Any) -> None:
    """Collect the exit status of a dead server this process started, so no zombie lingers."""
    proc = _DETACHED.pop(pid, None) if isinstance(pid, int) else None
    if proc is not None:
        try:  # it may still be exiting (its /proc entry is already empty then)
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            _DETACHED[pid] = proc


def _terminate(pid: int, timeout: float) -> None:
    """SIGTERM `pid`, SIGKILL it after `timeout`, and wait until it is gone."""
    proc = _DETACHED.pop(pid, None)
    if proc is not None:  # our own child: Popen can wait for (and reap) it
        stop_processes([proc], timeout)
        return
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while _pid_alive(pid):
            if time.monotonic() > deadline:
                break
            time.sleep(0.02)  # polling for another session's process to disappear
        else:
            return
    raise ServerError(f"the embedded MongoDB server (pid {pid}) did not exit after SIGKILL")


def _pid_alive(pid: int) -> bool:
    """True if `pid` is a running process; a zombie (exited, not yet reaped) counts as dead."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc (macOS): trust kill(0)
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def _cmdline(pid: int) -> list[str] | None:
    """argv of `pid`, or None when it cannot be read (no /proc, or the process is gone)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [arg.decode(errors="replace") for arg in raw.split(b"\0") if arg]


def _server_port(pid: int, data_dir: Path) -> int | None:
    """The port of `pid` if its argv shows an nx-27017 server on `data_dir`, else None."""
    argv = _cmdline(pid)
    if not argv or not any("nx_27017" in arg or "nx-27017" in arg for arg in argv):
        return None
    try:
        if Path(argv[argv.index("--data-dir") + 1]).resolve() != Path(data_dir).resolve():
            return None
        return int(argv[argv.index("-p") + 1])
    except (ValueError, IndexError):
        return None


def _is_our_server(pid: int, data_dir: Path) -> bool:
    """Whether `pid` is the nx-27017 serving `data_dir`; without /proc we cannot tell: assume so."""
    if _cmdline(pid) is None:
        return True
    return _server_port(pid, data_dir) is not None


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _connect_host(host: str) -> str:
    return {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)


def _format_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _port_is_free(host: str, port: int) -> bool:
    """Whether a server could bind host:port now. SO_REUSEADDR, as nx-27017 uses, so sockets
    left in TIME_WAIT by a server we just stopped do not count as "in use"."""
    with socket.socket(_family(host), socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise ServerError(f"cannot bind {host}:{port}: {exc}") from exc
    return True


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def _free_port(host: str) -> int:
    """A free port *below* the kernel's ephemeral range.

    A port from bind(0) lies inside that range, where, while the server is down (stop/restart),
    a client's outgoing connection may take it as its local port (or even TCP-self-connect to
    it), and the restart would then fail or talk to itself.
    """
    low, _ = _ephemeral_range()
    if low > 20000:
        candidates = random.sample(range(20000, low), k=min(200, low - 20000))
        for port in candidates:
            if _port_is_free(host, port):
                return port
    with socket.socket(_family(host), socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _accepts_tcp(host: str, port: int) -> bool:
    """Cheap "is anything listening yet" check, so start-up polling does not wait out pymongo's
    server-selection timeout on every attempt."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _answering_pid(uri: str, timeout_ms: int) -> int | None:
    """The pid of the MongoDB-wire server answering at `uri` (None: no answer within about
    `timeout_ms`; 0: it answers but does not say its pid).

    `ping` alone proves that *a* server answers; nx-27017 (like mongod) reports its pid in
    `serverStatus`, which proves it is the process we started or recorded.
    """
    from .storage import server_pid

    return server_pid(uri, timeout_ms / 1000)


def _log_tail(path: Path, offset: int = 0, max_bytes: int = 4000) -> str:
    """The end of the server log written since `offset` (this start attempt), for error messages."""
    return tail(path, max_bytes, offset) or f"(log {path} is empty or unreadable)"
