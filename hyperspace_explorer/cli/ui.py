"""`hse ui`: serve the web page on the Study (`web.serve`; the ui extra)."""
from __future__ import annotations

from .common import Session, SubParsers, command

DEFAULT_PORT = 8765


def register(sub: SubParsers) -> None:
    p = command(sub, "ui", cmd_ui,
                "serve a web page on the Study: queue, workers, runs, results, tuning",
                "examples:\n"
                "  hse --db digits ui                     # http://127.0.0.1:8765\n"
                "  hse --db digits ui --port 9000\n"
                "  hse --db digits ui --host 0.0.0.0      # other machines: needs the "
                "printed token\n\n"
                "On 127.0.0.1 (the default) only this machine can open the page. On any "
                "other address\nevery request must carry the access token printed at "
                "start. Needs the ui extra:\npip install \"hyperspace_explorer[ui]\".")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to serve on (default %(default)s: this machine only)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT,
                   help="port (default %(default)s)")


def cmd_ui(session: Session) -> int:
    from ..web import require_dependencies

    require_dependencies()  # one actionable line, before connecting to anything
    from ..web.app import serve

    args = session.args
    serve(session.queue, host=args.host, port=args.port)
    return 0
