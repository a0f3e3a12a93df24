"""Fixtures shared by the whole test suite.

Tests talk to a REAL MongoDB-wire server over TCP: the embedded nx-27017 server started here, or
the MongoDB named by HSE_TEST_MONGO_URI (to run the suite against a real mongod). Never a fake.
"""
from __future__ import annotations

import os
import signal
import sys
import uuid
import warnings
from pathlib import Path
from typing import Any, Iterator

import pytest
from pymongo import MongoClient
from pymongo.errors import PyMongoError

# The package is not installed in the venv: make the checkout importable under plain `pytest`.
_REPO = Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))

from hyperspace_explorer.server import EmbeddedServer, stop_server  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def hse_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Point HSE_HOME at a temp dir for the whole session, so no test touches the user's
    ~/.hyperspace_explorer or their machine-wide server; stop any server started there."""
    home = tmp_path_factory.mktemp("hse_home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HSE_HOME", str(home))
        mp.delenv("HSE_MONGO_URI", raising=False)  # tests choose their store explicitly
        yield home
        stop_server(home)


@pytest.fixture(autouse=True)
def run_thread_settings() -> Iterator[None]:
    """The runs' thread settings as they were before each test: a worker started in
    this process (`main(["worker", ...])`) sets them in os.environ, which every later
    test's subprocesses would inherit, so that a test's output depended on the tests
    run before it (a worker logs the settings it sets, and sets none already set)."""
    from hyperspace_explorer.worker import OPENBLAS_SPIN, THREAD_VARIABLES

    names = (*THREAD_VARIABLES, OPENBLAS_SPIN[0])
    before = {name: os.environ.get(name) for name in names}
    yield
    for name, value in before.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="session")
def embedded_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServer]:
    """A private nx-27017 server on a free port for the session, always provided (even with
    HSE_TEST_MONGO_URI) because outage tests need a server they can stop and restart.

    A test that stops it must start() it again before it ends (same data and port).
    """
    server = EmbeddedServer(tmp_path_factory.mktemp("nx_server") / "data")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def mongo_uri(request: pytest.FixtureRequest) -> str:
    """URI of the store the tests use: HSE_TEST_MONGO_URI if set, else the embedded server."""
    uri = os.environ.get("HSE_TEST_MONGO_URI", "").strip()
    if uri:
        return uri
    return request.getfixturevalue("embedded_server").uri


@pytest.fixture
def db_name(mongo_uri: str) -> Iterator[str]:
    """A fresh database name for this test, dropped afterwards."""
    name = f"hse_test_{uuid.uuid4().hex[:12]}"
    yield name
    client = MongoClient(mongo_uri, serverSelectionTimeoutMS=5000)
    try:
        client.drop_database(name)
    except PyMongoError as exc:  # e.g. the test left the server stopped
        warnings.warn(f"could not drop test database {name}: {exc}")
    finally:
        client.close()


@pytest.fixture
def procs() -> Iterator[list]:
    """Processes (workers) a test starts: whatever is still running at the end is
    woken (it may be SIGSTOPped) and killed, so no test leaves processes behind."""
    started: list = []
    yield started
    for proc in started:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
        proc.wait()


@pytest.fixture
def workers(procs: list) -> list:
    """The same as `procs`, under the name the resilience tests use."""
    return procs


@pytest.fixture
def queue(mongo_uri: str, db_name: str) -> Iterator[Any]:
    """A RunQueue on this test's database for the test Study (tests/study)."""
    from hyperspace_explorer.queue import RunQueue

    study = Path(__file__).resolve().parent / "study"
    with RunQueue(mongo_uri, db_name, study / "tasks", study_dir=study) as q:
        yield q


@pytest.fixture
def q(queue):
    """Short name for `queue`."""
    return queue


@pytest.fixture
def raw(mongo_uri: str, db_name: str):
    """The test database through plain pymongo, to check what is really stored."""
    with MongoClient(mongo_uri, serverSelectionTimeoutMS=5000) as client:
        yield client[db_name]
