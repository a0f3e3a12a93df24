"""The `hse ui` application: routes, templates and actions over one `RunQueue`.

Each page `P` has a JSON twin `/api/P` with the values that change (`views`), which
the page's script polls. Actions (cancel, requeue, re-run) are a confirmation page
(GET) and a POST that the `security.Guard` and `security.checked_form` let through
only from the page itself. Handlers are plain functions: Starlette runs them in its
thread pool, so a slow read never blocks other requests.
"""
from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast
from urllib.parse import quote, urlencode

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..errors import HSEError, RunNotFound, StoreUnavailable
from ..queue import RunQueue
from ..status import FAILED, STATUSES, TIMEOUT
from ..storage import redact_uri
from . import views
from .security import CSP_WITH_EVAL, CSRF_FIELD, Guard, checked_form

HERE = Path(__file__).resolve().parent
#: Polling period of a page's JSON twin (the browser never polls faster; the
#: results page, whose statistics cost more, polls less often).
POLL_MS = 5000
RESULTS_POLL_MS = 30000


def plotly_js() -> Path:
    """Plotly's bundled JavaScript as the `plotly` package ships it."""
    import plotly

    path = Path(plotly.__file__).resolve().parent / "package_data" / "plotly.min.js"
    if not path.is_file():
        raise HSEError(f"the plotly package has no bundled plotly.min.js at {path}: "
                       f"reinstall it (pip install --force-reinstall plotly)")
    return path


class SafeJSONResponse(JSONResponse):
    """JSON with `<`, `>` and `&` written as \\u escapes, as Jinja's `tojson` writes
    the JSON inside pages: whatever a run wrote never appears as markup, even to a
    client that would sniff the answer as HTML."""

    def render(self, content: Any) -> bytes:
        text = json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        return text.replace("<", "\\u003c").replace(">", "\\u003e").replace(
            "&", "\\u0026").encode("utf-8")


def create_app(queue: RunQueue, *, token: str | None = None) -> Starlette:
    """The web application on `queue`'s Study. `token`: the access token every request
    must carry (None: none, for a server bound to a loopback address only)."""
    env = Environment(loader=FileSystemLoader(HERE / "templates"),
                      autoescape=select_autoescape(default=True, default_for_string=True),
                      trim_blocks=True, lstrip_blocks=True)
    env.filters["urlpart"] = lambda value: quote(str(value), safe="")
    script = plotly_js()
    where = {"db": queue.store.db_name, "study": queue.study,
             "uri": redact_uri(queue.store.uri)}

    def render(request: Request, name: str, status_code: int = 200, **context: Any) -> Response:
        context.setdefault("poll_ms", POLL_MS)
        context.setdefault("statuses", [str(s) for s in STATUSES])
        html = env.get_template(name).render(
            request=request, csrf=request.state.csrf, csrf_field=CSRF_FIELD, where=where,
            **context)
        return HTMLResponse(html, status_code=status_code)

    def page(template: str, view: Callable[[Request], dict[str, Any]], *,
             poll_ms: int = POLL_MS, eval_scripts: bool = False
             ) -> tuple[Callable[[Request], Response], Callable[[Request], Response]]:
        """The HTML page and its JSON twin, from one view. `eval_scripts`: the page
        draws WebGL figures (see `security.CSP_WITH_EVAL`)."""
        def html(request: Request) -> Response:
            try:
                data = view(request)
            except HSEError as exc:
                return render(request, "error.html", _status_of(exc),
                              message=_message(exc))
            query = request.url.query
            live = "/api" + request.url.path + (f"?{query}" if query else "")
            response = render(request, template, live=live, poll_ms=poll_ms, **data)
            if eval_scripts:
                response.headers["Content-Security-Policy"] = CSP_WITH_EVAL
            return response

        def api(request: Request) -> Response:
            try:
                data = view(request)
            except HSEError as exc:
                return SafeJSONResponse({"error": _message(exc)},
                                    status_code=_status_of(exc))
            return SafeJSONResponse({"fields": data["fields"], "figures": data["figures"]})
        return html, api

    def arg(request: Request, name: str) -> str | None:
        value = request.query_params.get(name)
        return value if value else None

    def int_arg(request: Request, name: str, default: int) -> int:
        text = request.query_params.get(name) or str(default)
        try:
            return int(text)
        except ValueError:
            raise HSEError(f"{name} must be a whole number, got {text!r}") from None

    def runs_view(request: Request) -> dict[str, Any]:
        sort = request.query_params.get("sort") or "queued"
        data = views.runs_list(queue, task=arg(request, "task"), status=arg(request, "status"),
                               config=request.query_params.get("config") or "", sort=sort,
                               descending=request.query_params.get("order", "desc") != "asc",
                               page=int_arg(request, "page", 1), after=arg(request, "after"),
                               before=arg(request, "before"))
        params = {k: v for k, v in request.query_params.items()
                  if k not in ("page", "after", "before", "done") and v}

        def link(**changes: Any) -> str:
            return "/runs?" + urlencode({**params, **{k: str(v) for k, v in changes.items()}})
        if not request.url.path.startswith("/api/"):  # the filter form: not polled
            data.update(tasks=sorted(queue.status_by_task()), query=params, link=link,
                        sort=sort, order=request.query_params.get("order", "desc"))
        return data

    def run_view(request: Request) -> dict[str, Any]:
        return views.run_detail(queue, request.path_params["run_id"])

    def results_view(request: Request) -> dict[str, Any]:
        return views.results(queue, request.path_params["task"], arg(request, "param"))

    def compare_view(request: Request) -> dict[str, Any]:
        ids = [i for value in request.query_params.getlist("ids") for i in value.split(",")]
        return views.compare(queue, [i.strip() for i in ids])

    pages = {
        "/": page("overview.html", lambda request: views.overview(queue)),
        "/workers": page("workers.html", lambda request: views.workers(queue)),
        "/runs": page("runs.html", runs_view),
        "/runs/{run_id}": page("run.html", run_view),
        "/tasks/{task}/results": page("results.html", results_view, poll_ms=RESULTS_POLL_MS,
                                      eval_scripts=True),
        "/compare": page("compare.html", compare_view),
        "/tuning": page("tuning.html", lambda request: views.tuning(queue),
                        poll_ms=RESULTS_POLL_MS),
    }

    # ------------------------------------------------------------------ actions
    actions: dict[str, dict[str, Any]] = {
        "cancel": {"title": "Cancel run", "button": "Cancel the run",
                   "what": "A queued run never starts; a running one is stopped within a "
                           "few seconds (status CANCELLED)."},
        "requeue": {"title": "Re-queue run", "button": "Re-queue the run",
                    "what": "The finished run goes back in the queue with a fresh attempt "
                            "count; its earlier outcome is kept in its previous attempts."},
        "rerun": {"title": "Re-run with changes", "button": "Queue the new run",
                  "what": "A new run of the same task and config with your changes "
                          "(one PATH=VALUE per line, values as in hse submit --set) and, "
                          "optionally, another seed."},
    }

    def confirm_run(request: Request) -> Response:
        action = request.path_params["action"]
        if action not in actions:
            return render(request, "error.html", 404, message=f"no action {action!r}")
        try:
            doc = queue.get(request.path_params["run_id"])
        except HSEError as exc:
            return render(request, "error.html", _status_of(exc),
                          message=_message(exc))
        return render(request, "confirm.html", action=action, run=doc,
                      target=f"/runs/{quote(str(doc['_id']), safe='')}/{action}",
                      **actions[action])

    async def do_run(request: Request) -> Response:
        action, run_id = request.path_params["action"], request.path_params["run_id"]
        if action not in actions:
            return PlainTextResponse(f"no action {action!r}", status_code=404)
        try:
            form = await checked_form(request)
        except PermissionError as exc:
            return PlainTextResponse(str(exc), status_code=403)
        overrides = str(form.get("overrides") or "")
        seed = str(form.get("seed") or "").strip()
        return await _act(request, functools.partial(_run_action, queue, action, run_id,
                                                     overrides, seed))

    def confirm_requeue(request: Request) -> Response:
        task = request.path_params["task"]
        counts = queue.status(task)
        return render(request, "confirm.html", action="requeue-task", run=None, task=task,
                      count=counts.get(FAILED, 0) + counts.get(TIMEOUT, 0),
                      target=f"/tasks/{quote(task, safe='')}/requeue",
                      title=f"Re-queue the failed runs of task {task}",
                      button="Re-queue them",
                      what="Every FAILED and TIMEOUT run of the task goes back in the queue "
                           "with a fresh attempt count, its earlier outcome kept.")

    async def do_requeue(request: Request) -> Response:
        try:
            await checked_form(request)
        except PermissionError as exc:
            return PlainTextResponse(str(exc), status_code=403)
        task = request.path_params["task"]

        def requeue() -> str:
            n = queue.requeue(task=task, status=["FAILED", "TIMEOUT"])
            return f"/runs?{urlencode({'task': task, 'status': 'QUEUED', 'done': f'requeued {n}'})}"
        return await _act(request, requeue)

    async def _act(request: Request, action: Callable[[], str]) -> Response:
        from starlette.concurrency import run_in_threadpool

        try:
            target = await run_in_threadpool(action)
        except HSEError as exc:
            return render(request, "error.html", _status_of(exc),
                          message=_message(exc))
        return RedirectResponse(target, status_code=303)

    def plotly(request: Request) -> Response:
        return FileResponse(script, media_type="text/javascript",
                            headers={"Cache-Control": "public, max-age=86400"})

    def artifact(request: Request) -> Response:
        run_id = request.path_params["run_id"]
        try:
            name, content = views.artifact(queue, run_id, int(request.path_params["index"]))
        except HSEError as exc:
            return PlainTextResponse(_message(exc), status_code=404)
        # Downloaded, never rendered: an artifact is whatever a run wrote.
        return Response(content, media_type="application/octet-stream", headers={
            "Content-Disposition": f"attachment; filename*=UTF-8''{quote(name, safe='')}",
            "Content-Security-Policy": "sandbox; default-src 'none'"})

    routes = [Route("/static/plotly.min.js", plotly),
              Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
              Route("/runs/{run_id}/artifacts/{index:int}", artifact),
              Route("/runs/{run_id}/{action}", confirm_run, methods=["GET"]),
              Route("/runs/{run_id}/{action}", do_run, methods=["POST"]),
              Route("/tasks/{task}/requeue", confirm_requeue, methods=["GET"]),
              Route("/tasks/{task}/requeue", do_requeue, methods=["POST"])]
    for path, (html, api) in pages.items():
        routes.append(Route(path, html, methods=["GET"]))
        routes.append(Route("/api" + path, api, methods=["GET"]))
    app = Starlette(routes=routes)
    app.add_middleware(Guard, token=token)
    return app


def _message(exc: HSEError) -> str:
    """An error as the page shows it: without a password, and without the quotes a
    KeyError (RunNotFound) puts around its message."""
    return redact_uri(str(exc).strip("'\""))


def _status_of(exc: HSEError) -> int:
    """The HTTP status of a page that could not be shown: 404 for an unknown run, 503
    while the database is unreachable, 400 for a bad request."""
    return 404 if isinstance(exc, RunNotFound) else 503 if isinstance(
        exc, StoreUnavailable) else 400


def _run_action(queue: RunQueue, action: str, run_id: str, overrides: str, seed: str) -> str:
    """Carry out a confirmed action on one run; the address to show next."""
    if action == "cancel":
        done = queue.cancel(ids=[run_id])
        note = "cancelled" if done["cancelled"] else "stopping" if done["stopping"] else \
            "nothing to cancel (already finished)"
        return f"/runs/{quote(run_id, safe='')}?{urlencode({'done': note})}"
    if action == "requeue":
        n = queue.requeue(ids=[run_id])
        return f"/runs/{quote(run_id, safe='')}?{urlencode({'done': f'requeued {n}'})}"
    changes = views.parse_config_filter(overrides)
    if seed and not seed.lstrip("-").isdigit():
        raise HSEError(f"seed must be a whole number, got {seed!r}")
    # RunQueue.rerun(run_id, overrides, *, seed) -> the new run's id
    new_id = cast(Any, queue).rerun(run_id, changes or None, seed=int(seed) if seed else None)
    return f"/runs/{quote(new_id, safe='')}?{urlencode({'done': f're-run of {run_id}'})}"


def serve(queue: RunQueue, *, host: str = "127.0.0.1", port: int = 8765,
          say: Callable[[str], None] = print) -> None:
    """Serve the page until interrupted. On a loopback address it needs no token;
    anywhere else a fresh token is printed with the address, and required."""
    import uvicorn

    from ..ports import check_listen
    from .security import is_loopback, new_token

    check_listen(host, port)
    token = None if is_loopback(host) else new_token()
    app = create_app(queue, token=token)
    shown = f"[{host}]" if ":" in host else host
    address = f"http://{shown}:{port}/" + (f"?token={token}" if token else "")
    say(f"hse ui: Study '{queue.study}' (database '{queue.store.db_name}') at {address}"
        + ("" if token is None else "  (the token is required from every client; keep it "
                                    "private)") + "; Ctrl-C stops it")
    uvicorn.run(app, host=host, port=port, log_level="warning", server_header=False)


__all__ = ["create_app", "serve", "plotly_js"]
