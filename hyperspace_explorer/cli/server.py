"""`hse server start|stop|status`: this machine's embedded MongoDB-wire server."""
from __future__ import annotations

import os

from . import render
from .common import Session, SubParsers, command


def register(sub: SubParsers) -> None:
    p = command(sub, "server", cmd_server,
                "start, stop or describe this machine's embedded MongoDB-wire server",
                "examples:\n  hse server start    # prints the URI workers elsewhere can use\n"
                "  hse server status   # exit status 1 when it is not running\n"
                "  hse server stop\n\n"
                "The server (nx-27017, data in $HSE_HOME/data) is shared by every process on "
                "this machine\nand is started automatically by any command that needs it, "
                "unless HSE_MONGO_URI is set.", global_options=False)
    p.add_argument("action", choices=("start", "stop", "status"))


def cmd_server(session: Session) -> int:
    from ..server import ensure_server, server_status, stop_server

    args = session.args
    console = render.console()
    if os.environ.get("HSE_MONGO_URI", "").strip():
        console.print(render.text("note: HSE_MONGO_URI is set, so hse and workers use that "
                                  "server, not the embedded one", "yellow"))
    if args.action == "start":
        uri = ensure_server()
        state = server_status()
        console.print(render.text(f"embedded server running at {uri} (pid {state['pid']}); "
                                  f"data in {state['data_dir']}"))
        return 0
    if args.action == "stop":
        console.print(render.text("embedded server stopped" if stop_server()
                                  else "no embedded server was running"))
        return 0
    state = server_status()
    console.print(render.text("running" if state["running"] else "not running",
                              "green" if state["running"] else "red"))
    for key in ("uri", "pid", "started_at", "data_dir", "log_file"):
        if state.get(key) is not None:
            console.print(render.text(f"  {key}: {state[key]}"))
    return 0 if state["running"] else 1
