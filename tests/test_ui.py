"""`hse ui`: the web page, driven in a real headless browser (the system's chromium,
through Playwright; no browser is downloaded) against a store filled by real workers,
and its security checks through Starlette's HTTP test client."""
from __future__ import annotations

import io
import json
import re
import shutil
import threading
import uuid
from collections.abc import Iterator
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import pytest
from helpers import STUDY, TASKS, run_worker, start_worker, wait_for
from pymongo import MongoClient

from hyperspace_explorer.cli import main as hse
from hyperspace_explorer.cli.render import mean_std
from hyperspace_explorer.queue import RunQueue

SCRIPT_PROBE = "<script>window.__xss=1</script>"
ATTRIBUTE_PROBE = '"><img src=x onerror="window.__xss=1">'
METRIC_PROBE = "<img src=x onerror=__xss=1>"
CHROMIUM_HINT = ("the browser tests need Debian's chromium at /usr/bin/chromium (or "
                 "`chromium` on PATH): apt-get install -y chromium")


def chromium_path() -> str:
    """The system's chromium; a clear failure (never a skip) when it is missing."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None and Path("/usr/bin/chromium").exists():
        found = "/usr/bin/chromium"
    if found is None:
        pytest.fail(CHROMIUM_HINT)
    return found


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def study_db(mongo_uri: str) -> Iterator[str]:
    """One database for the module (filling it takes real workers): unique, dropped."""
    name = f"hse_test_ui_{uuid.uuid4().hex[:10]}"
    yield name
    with MongoClient(mongo_uri, serverSelectionTimeoutMS=5000) as client:
        client.drop_database(name)


@pytest.fixture(scope="module")
def filled(mongo_uri: str, study_db: str, tmp_path_factory) -> Iterator[dict[str, Any]]:
    """The store as real workers leave it: two configs x 3 seeds of `toy` COMPLETED, a
    run that printed a script and named a metric with markup, a FAILED run, and two
    runs left QUEUED (no worker serves `quadratic`); plus an idle live worker of
    another Study, for the workers page."""
    with RunQueue(mongo_uri, study_db, TASKS, study_dir=STUDY) as q:
        ok = q.submit_grid("toy", {"model": {"className": "Linear"}},
                           {"model.lr": [0.1, 0.2], "epochs": [2, 4]}, seeds=3)
        probe = q.submit("toy", {"model": {"className": "Linear"}, "behaviour": "echo",
                                 "options": {"text": SCRIPT_PROBE, "metric": METRIC_PROBE,
                                             "label": ATTRIBUTE_PROBE}})
        failed = q.submit("toy", {"model": {"className": "Forest"}, "behaviour": "raise",
                                  "options": {"label": ATTRIBUTE_PROBE}}, max_attempts=1)
        run_worker(mongo_uri, study_db, max_runs=len(ok) + 2)
        queued = q.submit("quadratic", {"shape": {"className": "Bowl"}}, seeds=2)
        log = tmp_path_factory.mktemp("ui_worker") / "worker.log"
        idle = start_worker(mongo_uri, study_db, "--study", "another-study", log=log)
        try:
            wait_for(lambda: q.workers(), 60, "the idle worker to register")
            yield {"ok": ok, "probe": probe[0], "failed": failed[0], "queued": queued,
                   "uri": mongo_uri, "db": study_db}
        finally:
            idle.kill()
            idle.wait()


@pytest.fixture(scope="module")
def ui_queue(filled: dict[str, Any]) -> Iterator[RunQueue]:
    with RunQueue(filled["uri"], filled["db"], TASKS, study_dir=STUDY) as q:
        yield q


class Served:
    """The app on a real uvicorn server in a thread, on a free loopback port."""

    def __init__(self, app: Any):
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0,
                                                    log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        wait_for(lambda: self.server.started, 30, "the web server to start")
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


@pytest.fixture(scope="module")
def site(ui_queue: RunQueue) -> Iterator[str]:
    from hyperspace_explorer.web.app import create_app

    served = Served(create_app(ui_queue))
    yield served.url
    served.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    with sync_playwright() as pw:
        # software WebGL, for Plotly's parallel coordinates on machines without a GPU
        chromium = pw.chromium.launch(executable_path=executable, headless=True,
                                      args=["--enable-unsafe-swiftshader"],
                                      ignore_default_args=["--disable-gpu"])
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context()
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    tab.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    tab.errors = errors
    yield tab
    context.close()


def client(q: RunQueue, *, token: str | None = None, base_url: str = "http://127.0.0.1:8765"):
    from starlette.testclient import TestClient

    from hyperspace_explorer.web.app import create_app

    return TestClient(create_app(q, token=token), base_url=base_url, follow_redirects=False)


def cell_texts(tab: Any, selector: str) -> list[list[str]]:
    return tab.eval_on_selector_all(
        selector + " tbody tr",
        "rows => rows.map(r => Array.from(r.cells).map(c => c.textContent.trim()))")


# --------------------------------------------------------------------------- pages
def test_overview_shows_the_queue_counts(page: Any, site: str, ui_queue: RunQueue) -> None:
    page.goto(site + "/")
    counts = ui_queue.status_by_task()
    for task, per in counts.items():
        for status, n in per.items():
            text = page.text_content(f'[data-field="count:{task}:{status}"]')
            assert text is not None and text.strip() == str(n), (task, status)
        total = page.text_content(f'[data-field="total:{task}"]')
        assert total is not None and total.strip() == str(sum(per.values()))
    toy = counts["toy"]
    finished = sum(toy.values())  # every toy run has finished
    assert page.text_content('[data-field="progress:toy"]') == "100.0%"
    assert page.text_content('[data-field="eta:toy"]') == "done"
    assert finished == 14
    assert "/min" in (page.text_content('[data-field="throughput:toy"]') or "")
    assert not page.errors


def test_workers_page_lists_live_workers(page: Any, site: str, ui_queue: RunQueue) -> None:
    page.goto(site + "/workers")
    workers = ui_queue.workers()
    assert workers
    rows = cell_texts(page, "#workers")
    for w in workers:
        row = next(r for r in rows if r[0] == w["_id"])
        assert row[1] == w["host"] and row[2] == str(w["pid"]) and row[3] == "another-study"
        assert row[4] == w["state"] == "alive"
        assert row[6].endswith("ago")
        assert row[8] == (w.get("code_digest") or "-")


def test_runs_list_filters_sorts_and_links(page: Any, site: str, ui_queue: RunQueue,
                                           filled: dict[str, Any]) -> None:
    page.goto(site + "/runs?task=toy&status=COMPLETED&sort=metric:score&order=asc")
    rows = cell_texts(page, "#runs")
    expected = ui_queue.runs_page("toy", status="COMPLETED", sort="metrics.score",
                                  descending=False, limit=50)
    assert [r[1] for r in rows] == [d["_id"] for d in expected]
    scores = [float(r[5].split("=", 1)[1]) for r in rows]
    assert scores == sorted(scores) and len(rows) == 13
    assert all(r[3] == "COMPLETED" for r in rows)
    page.goto(site + "/runs?config=" + "model.className%3DForest")
    rows = cell_texts(page, "#runs")
    assert [r[1] for r in rows] == [filled["failed"]] and rows[0][3] == "FAILED"
    assert "1 matching run(s)" in (page.text_content("#runs-count") or "")
    page.click(f'a[href="/runs/{filled["failed"]}"]')
    page.wait_for_selector("#error")
    assert "boom from user code" in (page.text_content("#error") or "")


def test_runs_list_pages_through_every_run(ui_queue: RunQueue, filled: dict[str, Any],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from hyperspace_explorer.web import views

    monkeypatch.setattr(views, "PAGE_SIZE", 4)
    everything = ui_queue.runs_page(limit=100, fields=["order"])
    assert len(everything) == 16
    with client(ui_queue) as http:
        by_number, by_link = [], []
        for number in range(1, 5):
            html = http.get(f"/runs?page={number}").text
            by_number += re.findall(r'<tr data-run="([0-9a-f]+)">', html)
        assert "page 4 of 4" in html
        address: str | None = "/runs"
        while address:  # the "next" links: each page continues after the last run shown
            html = http.get(address).text
            by_link += re.findall(r'<tr data-run="([0-9a-f]+)">', html)
            found = re.search(r'rel="next" href="([^"]+)"', html)
            address = found.group(1).replace("&amp;", "&") if found else None
        back = re.search(r'rel="prev" href="([^"]+)"', html)
        assert back is not None and "before=" in back.group(1)
        previous = http.get(back.group(1).replace("&amp;", "&")).text
    assert by_number == by_link == [d["_id"] for d in everything]
    assert re.findall(r'<tr data-run="([0-9a-f]+)">', previous) == by_number[8:12]


def test_run_page_shows_everything_recorded(page: Any, site: str, ui_queue: RunQueue,
                                            filled: dict[str, Any]) -> None:
    run_id = filled["ok"][0]
    record = ui_queue.record(run_id)
    page.goto(f"{site}/runs/{run_id}")
    assert page.text_content('[data-field="status"]') == "COMPLETED"
    assert json.loads(page.text_content("#config-complete") or "") == json.loads(
        json.dumps(record["run"]["config"]))
    assert json.loads(page.text_content("#config-given") or "")["model"]["className"] == "Linear"
    assert "training Linear on toy" in (page.text_content("#output") or "")
    assert f"score={record['run']['metrics']['score']:.6g}" in (
        page.text_content('[data-field="metrics"]') or "")
    # the loss curve, drawn by Plotly from the stored series
    page.wait_for_selector("#plot-curves .main-svg")
    steps = page.evaluate("document.getElementById('plot-curves').data[0].x")
    assert steps == record["series"][0]["steps"]
    assert page.text_content('[data-field="attempt"]') == "1 of 3"
    assert not page.errors


def test_results_page_has_the_numbers_of_hse_results(page: Any, site: str, ui_queue: RunQueue,
                                                     filled: dict[str, Any]) -> None:
    summary = ui_queue.summary("toy")
    out = io.StringIO()
    with redirect_stdout(out):
        assert hse(["results", "toy", "--mongo-uri", filled["uri"], "--db", filled["db"],
                    "--tasks-dir", str(TASKS)]) == 0
    printed = out.getvalue()
    page.goto(f"{site}/tasks/toy/results")
    rows = cell_texts(page, "#summary")
    assert len(rows) == len(summary)
    means = page.eval_on_selector_all('#summary td[data-metric="score"]',
                                      "cells => cells.map(c => Number(c.dataset.mean))")
    assert means == pytest.approx(summary["score_mean"].tolist(), rel=1e-12, abs=0)
    for (_, row), cells in zip(summary.iterrows(), rows):
        text = mean_std(row["score_mean"], row["score_std"])
        assert text in cells and text in printed
        assert cells[0] == str(int(row["rank"]))
    # the plots: one box per config group, parameter and parallel coordinates
    page.wait_for_selector("#plot-box .main-svg")
    assert page.evaluate("document.getElementById('plot-box').data.length") == len(summary)
    page.wait_for_selector("#plot-param .main-svg")
    page.wait_for_selector("#plot-parcoords .main-svg")
    assert "WebGL is not supported" not in (page.text_content("#plot-parcoords") or "")
    dims = page.evaluate("document.getElementById('plot-parcoords').data[0].dimensions.length")
    assert dims == len(summary.attrs["config_columns"]) + 1
    assert not page.errors


def test_compare_page_shows_config_and_code_differences(page: Any, site: str,
                                                        ui_queue: RunQueue,
                                                        filled: dict[str, Any]) -> None:
    page.goto(site + "/runs?task=toy&status=COMPLETED")
    a, b = filled["ok"][0], filled["ok"][-1]
    page.check(f'input[value="{a}"]')
    page.check(f'input[value="{b}"]')
    page.click("text=Compare the ticked runs")
    page.wait_for_selector("#config-diff")
    shown = page.eval_on_selector_all("#config-diff thead th",
                                      "cells => cells.map(c => c.textContent.trim())")[1:]
    assert sorted(shown) == sorted([a, b])
    diff = ui_queue.diff(*shown)
    rows = {r[0]: r[1:] for r in cell_texts(page, "#config-diff")}
    from hyperspace_explorer.analysis import format_value

    assert diff["config"] and len(rows) == len(diff["config"])
    for path, va, vb in diff["config"]:
        assert rows[path] == [format_value(va), format_value(vb)]
    page.wait_for_selector("#plot-curve0 .main-svg")
    assert page.evaluate("document.getElementById('plot-curve0').data.length") == 2


def test_tuning_page_shows_studies(page: Any, site: str, ui_queue: RunQueue) -> None:
    import optuna

    storage = ui_queue.store.optuna_storage()
    study = optuna.create_study(study_name="ui-probe", storage=storage, direction="maximize")
    for value in (1.0, 3.0, 2.0):
        trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
        study.tell(trial, value)
    page.goto(site + "/tuning")
    assert page.text_content(".best-value") == "3"
    page.wait_for_selector("#plot-best0 .main-svg")
    best = page.evaluate("document.getElementById('plot-best0').data[1].y")
    assert best == [1.0, 3.0, 3.0]
    page.wait_for_selector("#plot-importance0 .main-svg")
    importances = optuna.importance.get_param_importances(study)
    assert page.evaluate("document.getElementById('plot-importance0').data[0].y") == list(
        importances)[::-1]


def test_xss_probes_stay_inert_on_every_page(page: Any, site: str,
                                             filled: dict[str, Any]) -> None:
    probe, failed = filled["probe"], filled["failed"]
    paths = ["/", "/workers", "/runs", "/runs?task=toy", f"/runs/{probe}", f"/runs/{failed}",
             "/tasks/toy/results", f"/compare?ids={probe}&ids={failed}", "/tuning",
             f"/runs/{probe}/rerun", f"/runs/{failed}/requeue",
             "/runs?config=" + "options.label%3D%22%3E%3Cimg%20src%3Dx%20onerror%3D%22"
             "window.__xss%3D1%22%3E", "/runs/%3Cscript%3Ewindow.__xss=1%3C%2Fscript%3E"]
    for path in paths:
        page.goto(site + path)
        page.wait_for_load_state("load")
        assert page.evaluate("typeof window.__xss") == "undefined", path
    page.goto(f"{site}/runs/{probe}")
    assert SCRIPT_PROBE in (page.text_content("#output") or "")
    given = json.loads(page.text_content("#config-given") or "")
    assert given["options"]["label"] == ATTRIBUTE_PROBE
    assert METRIC_PROBE in (page.text_content('[data-field="metrics"]') or "")
    assert page.evaluate("typeof window.__xss") == "undefined"


def test_pages_update_without_reloading_and_not_while_hidden(page: Any, site: str,
                                                             ui_queue: RunQueue,
                                                             filled: dict[str, Any]) -> None:
    calls: list[str] = []
    page.on("request", lambda r: calls.append(r.url) if "/api/" in r.url else None)
    page.clock.install()
    page.goto(site + "/")
    cell = '[data-field="count:quadratic:CANCELLED"]'
    before = int(page.text_content(cell) or "0")
    ui_queue.cancel(ids=[filled["queued"][0]])
    page.clock.run_for(5_000)
    wait_for(lambda: page.text_content(cell) == str(before + 1), 30,
             "the overview to show the cancelled run")
    assert calls and all(c.startswith(site + "/api/") for c in calls)
    # hidden: no more requests however long it stays so; visible again: at once
    page.evaluate("""() => {
        Object.defineProperty(document, 'hidden', {configurable: true, get: () => true});
        document.dispatchEvent(new Event('visibilitychange'));
    }""")
    count = len(calls)
    page.clock.run_for(120_000)
    page.evaluate("() => fetch('/static/hse.css')")  # a round trip: any poll would be in
    assert len(calls) == count
    page.evaluate("""() => {
        Object.defineProperty(document, 'hidden', {configurable: true, get: () => false});
        document.dispatchEvent(new Event('visibilitychange'));
    }""")
    wait_for(lambda: len(calls) > count, 30, "polling to resume")


# --------------------------------------------------------------------------- actions
def test_cancel_is_confirmed_in_the_page_and_changes_the_queue(
        page: Any, site: str, ui_queue: RunQueue, filled: dict[str, Any]) -> None:
    run_id = filled["queued"][1]
    page.goto(f"{site}/runs/{run_id}")
    page.click("text=Cancel…")
    page.wait_for_selector("#confirm")
    assert ui_queue.get(run_id)["status"] == "QUEUED"  # nothing happens before confirming
    page.click("#confirm")
    page.wait_for_selector(".notice")
    assert ui_queue.get(run_id)["status"] == "CANCELLED"
    assert page.text_content('[data-field="status"]') == "CANCELLED"


def test_requeue_failed_runs_of_a_task(page: Any, site: str, ui_queue: RunQueue,
                                       filled: dict[str, Any]) -> None:
    page.goto(site + "/")
    page.click('tr[data-task="toy"] >> text=re-queue failed')
    page.wait_for_selector("#confirm")
    assert ui_queue.get(filled["failed"])["status"] == "FAILED"
    page.click("#confirm")
    page.wait_for_selector(".notice")
    doc = ui_queue.get(filled["failed"])
    assert doc["status"] == "QUEUED" and doc["previous_attempts"][-1]["status"] == "FAILED"


def test_rerun_with_changes(page: Any, site: str, ui_queue: RunQueue,
                            filled: dict[str, Any]) -> None:
    """Needs RunQueue.rerun (branch `repro`)."""
    assert hasattr(RunQueue, "rerun"), "RunQueue.rerun is missing (it comes with branch repro)"
    source = filled["ok"][0]
    page.goto(f"{site}/runs/{source}/rerun")
    page.fill("textarea[name=overrides]", "epochs=7")
    page.fill("input[name=seed]", "42")
    page.click("#confirm")
    page.wait_for_selector(".notice")
    new_id = page.url.split("/runs/")[1].split("?")[0]
    assert new_id != source
    doc = ui_queue.get(new_id)
    assert doc["status"] == "QUEUED" and doc["seed"] == 42 and doc["config"]["epochs"] == 7


# --------------------------------------------------------------------------- security
def test_actions_refuse_cross_site_requests(ui_queue: RunQueue, filled: dict[str, Any]) -> None:
    run_id = filled["failed"]
    before = ui_queue.get(run_id)
    with client(ui_queue) as http:
        http.get("/")  # the CSRF cookie
        csrf = http.cookies["hse_csrf"]
        own = {"origin": "http://127.0.0.1:8765"}
        refused = [
            http.post(f"/runs/{run_id}/requeue", data={"csrf": csrf},
                      headers={"origin": "http://evil.example"}),
            http.post(f"/runs/{run_id}/requeue", data={"csrf": csrf}),  # no origin at all
            http.post(f"/runs/{run_id}/requeue", data={"csrf": "forged"}, headers=own),
            http.post(f"/runs/{run_id}/requeue", data={}, headers=own),
        ]
        assert [r.status_code for r in refused] == [403] * 4
        assert http.get(f"/runs/{run_id}/requeue").status_code == 200  # only a confirm page
        assert ui_queue.get(run_id) == before
        accepted = http.post(f"/runs/{run_id}/cancel", data={"csrf": csrf}, headers=own)
        assert accepted.status_code == 303  # the same request from the page itself is let in
        for path in ("/", "/runs", f"/runs/{run_id}", "/api/", "/tasks/toy/results",
                     "/workers", "/tuning", f"/runs/{run_id}/cancel"):
            headers = http.get(path).headers
            policy = headers["content-security-policy"]
            assert "frame-ancestors 'none'" in policy
            scripts = policy.split("script-src")[1].split(";")[0].split()
            # eval only where Plotly's WebGL figures need it; inline scripts nowhere
            assert scripts == (["'self'", "'unsafe-eval'"] if path.endswith("/results")
                               else ["'self'"]), path
            assert headers["x-content-type-options"] == "nosniff"


def test_loopback_server_refuses_other_host_names(ui_queue: RunQueue) -> None:
    with client(ui_queue, base_url="http://rebound.example:8765") as http:
        assert http.get("/").status_code == 403
    with client(ui_queue, base_url="http://localhost:8765") as http:
        assert http.get("/").status_code == 200


def test_token_required_when_not_on_loopback(ui_queue: RunQueue) -> None:
    from hyperspace_explorer.web.security import is_loopback

    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3")
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    with client(ui_queue, token="s3cret", base_url="http://10.1.2.3:8765") as http:
        for path in ("/", "/runs", "/api/", "/api/runs", "/static/plotly.min.js",
                     "/tasks/toy/results", "/?token=wrong"):
            answer = http.get(path)
            assert answer.status_code == 401, path
            assert "s3cret" not in answer.text
        assert http.post("/tasks/toy/requeue", data={}).status_code == 401
        assert http.get("/api/", headers={"X-HSE-Token": "s3cret"}).status_code == 200
        login = http.get("/runs?token=s3cret&task=toy")
        assert login.status_code == 303 and login.headers["location"] == "/runs?task=toy"
        assert http.get("/").status_code == 200  # the cookie from now on


def test_no_credentials_in_pages_or_answers(ui_queue: RunQueue) -> None:
    from hyperspace_explorer.storage import connect
    from hyperspace_explorer.web.app import create_app

    store = ui_queue.store
    secret_uri = store.uri.replace("mongodb://", "mongodb://admin:hunter2@", 1)
    q = RunQueue.__new__(RunQueue)  # the same queue, as if opened with credentials
    q.__dict__.update(ui_queue.__dict__)
    q.store = connect(store.uri, store.db_name)
    q.store.uri = secret_uri
    try:
        from starlette.testclient import TestClient

        with TestClient(create_app(q), base_url="http://127.0.0.1:8765") as http:
            for path in ("/", "/workers", "/runs", "/api/", "/api/runs", "/tasks/toy/results",
                         "/runs/nonexistent"):
                assert "hunter2" not in http.get(path).text, path
    finally:
        q.store.close()


def test_ui_on_a_port_it_cannot_listen_on_says_so_in_one_line_before_its_address(
        filled: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for bad, why in ((str(port), f"cannot listen on 127.0.0.1 port {port}: Address already "
                                     f"in use: choose another port"),
                         ("70000", "port must be an integer from 1 to 65535, got 70000")):
            assert hse(["--mongo-uri", filled["uri"], "--db", filled["db"], "ui",
                        "--port", bad]) == 2
            out, err = capsys.readouterr()
            assert out == "" and err.strip() == f"hse: error: {why}"


def test_ui_without_its_extra_prints_one_actionable_line(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from hyperspace_explorer import web

    monkeypatch.setitem(web.REQUIRED, "hse_no_such_module", "starlette")
    assert hse(["ui", "--db", "anything"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'pip install "hyperspace_explorer[ui]"' in err[0]


def test_plotly_is_served_by_the_package(ui_queue: RunQueue) -> None:
    from hyperspace_explorer.web.app import plotly_js

    with client(ui_queue) as http:
        answer = http.get("/static/plotly.min.js")
        assert answer.status_code == 200
        assert answer.content == plotly_js().read_bytes()
        html = http.get("/tasks/toy/results").text
    assert re.findall(r'<script src="([^"]+)"', html) == ["/static/plotly.min.js",
                                                          "/static/hse.js"]
    assert "<script>" not in html.replace(SCRIPT_PROBE, "")


def test_hse_ui_off_loopback_prints_a_token_and_requires_it(filled: dict[str, Any],
                                                           procs: list) -> None:
    import socket
    import subprocess
    import sys
    import urllib.error
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "hyperspace_explorer.cli", "ui", "--host", "0.0.0.0", "--port",
         str(port), "--mongo-uri", filled["uri"], "--db", filled["db"]],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    procs.append(proc)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    found = re.search(r"http://0\.0\.0\.0:(\d+)/\?token=([\w-]+)", line)
    assert found and int(found.group(1)) == port, line
    token = found.group(2)
    base = f"http://127.0.0.1:{port}/api/"

    def status(headers: dict[str, str]) -> int:
        try:
            with urllib.request.urlopen(urllib.request.Request(base, headers=headers),
                                        timeout=10) as answer:
                return answer.status
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            return 0  # not listening yet

    wait_for(lambda: status({}) == 401, 60, "the server to refuse a request without the token")
    assert status({"X-HSE-Token": token}) == 200
    assert status({"X-HSE-Token": token[:-1]}) == 401


def test_pages_and_answers_never_carry_the_probes_unescaped(ui_queue: RunQueue,
                                                           filled: dict[str, Any]) -> None:
    """Byte-level: what a run wrote reaches pages (HTML, JSON in <script> blocks) and
    JSON answers only in escaped form, and still arrives intact as data."""
    probe = filled["probe"]
    with client(ui_queue) as http:
        box = None
        for path in ("/", "/runs", f"/runs/{probe}", "/tasks/toy/results",
                     f"/compare?ids={probe}&ids={filled['ok'][0]}", f"/runs/{probe}/rerun",
                     "/api/runs", f"/api/runs/{probe}", "/api/tasks/toy/results"):
            text = http.get(path).text
            for raw in (SCRIPT_PROBE, ATTRIBUTE_PROBE, METRIC_PROBE, "<img"):
                assert raw not in text, (path, raw)
            if path == "/api/tasks/toy/results":
                box = json.loads(text)["figures"]["box"]
        assert box is not None and any(SCRIPT_PROBE in trace["name"] for trace in box["data"])
        output = http.get(f"/api/runs/{probe}").json()["fields"]["output"]
        assert SCRIPT_PROBE in output


def test_run_page_follows_a_run_to_its_end_without_reloading(
        page: Any, site: str, ui_queue: RunQueue, filled: dict[str, Any], procs: list,
        tmp_path: Path) -> None:
    (run_id,) = ui_queue.submit("toy", {"model": {"className": "Linear"}, "epochs": 5,
                                        "behaviour": "sleep", "duration": 1.0},
                                force=True, priority=10)  # before the queued `quadratic` runs
    page.goto(f"{site}/runs/{run_id}")
    assert page.text_content('[data-field="status"]') == "QUEUED"
    assert "No series logged" in (page.text_content('[data-field="curves_note"]') or "")
    procs.append(start_worker(filled["uri"], filled["db"], "--max-runs", "1",
                              log=tmp_path / "worker.log"))
    wait_for(lambda: page.text_content('[data-field="status"]') == "COMPLETED", 120,
             "the run page to show the run COMPLETED")
    page.wait_for_selector("#plot-curves .main-svg")
    record = ui_queue.record(run_id)
    assert page.evaluate("document.getElementById('plot-curves').data[0].y") == \
        record["series"][0]["values"]
    assert f"score={record['run']['metrics']['score']:.6g}" in (
        page.text_content('[data-field="metrics"]') or "")
    assert "training Linear on toy" in (page.text_content("#output") or "")


def test_missing_chromium_fails_the_browser_tests_with_the_fix(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no chromium on it
    monkeypatch.setattr(Path, "exists", lambda self: False)
    with pytest.raises(pytest.fail.Exception, match="apt-get install -y chromium"):
        chromium_path()


def test_runs_list_sorts_by_a_clicked_column(page: Any, site: str, ui_queue: RunQueue) -> None:
    page.goto(site + "/runs?task=toy")
    page.click('#runs thead >> text=seed')
    page.wait_for_url("**sort=seed**")
    seeds = [int(r[4]) for r in cell_texts(page, "#runs")]
    assert seeds == sorted(seeds, reverse=True)
    page.click('#runs thead >> text=seed')  # again: the other way
    page.wait_for_url("**order=asc**")
    seeds = [int(r[4]) for r in cell_texts(page, "#runs")]
    assert seeds == sorted(seeds) and len(seeds) == sum(ui_queue.status("toy").values())
