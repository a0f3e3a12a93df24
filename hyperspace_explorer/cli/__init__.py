"""`hse`: the command line of hyperspace_explorer.

One subcommand per thing a user does with a Study's queue. Each lives in the module of
its group, so a reader finds a command by its name:

- `server.py`   hse server start|stop|status
- `worker.py`   hse worker, and the `hyperspace_worker` command
- `submit.py`   hse submit (and the PATH=VALUE parsing of --set / --grid)
- `runs.py`     hse status, ls, show, cancel
- `results.py`  hse results, best, diff, plot
- `admin.py`    hse recover, workers
- `demo.py`     hse demo
- `ui.py`       hse ui (the web page, `hyperspace_explorer.web`)

The commands are a thin layer over the public API: each calls the `RunQueue` (or
other library) function a notebook would and only parses arguments and renders the
answer (`render.py`: rich tables and cells). Global options can be given before or
after the subcommand (`hse --db s ls` and `hse ls --db s` are the same). Every
deliberate error (`HSEError`) is printed as `hse: error: <message>` with exit status
2, never with a traceback, and URIs are always printed with their password removed.
"""
from __future__ import annotations

import argparse
import sys

from ..errors import HSEError
from . import admin, demo, results, runs, server, submit, tune, ui, worker
from .common import PROG, Handler, Session, add_global_options, fail
from .submit import parse_assignment, parse_grid, parse_value, split_top_level

__all__ = ["main", "build_parser", "parse_assignment", "parse_grid", "parse_value",
           "split_top_level"]

_EPILOG = """\
examples:
  hse server start                          # the embedded MongoDB-wire server
  cd examples/digits_study && hse worker ../../tasks digits &
  hse --db digits submit digits --set model.className=LogisticModel \\
        --grid model.C=0.1,1,10 --seeds 3
  hse --db digits status
  hse --db digits ls --status FAILED
  hse --db digits show 3f9a0c1b2d4e         # or a Sacred id: hse show 12
  hse --db digits results digits --format md
  hse --db digits best digits               # the best run and how to run it again
  hse --db digits diff 3f9a0c1b2d4e 12      # what differs between two runs
  hse --db digits plot digits box -o accuracy.png
  hse demo                                  # everything above, on a bundled example
  hse --db digits ui                        # the web page: http://127.0.0.1:8765

environment: HSE_MONGO_URI (server), HSE_DB (database), HSE_TASKS_DIR (tasks),
HSE_HOME (embedded server data, default ~/.hyperspace_explorer).
"""


def main(argv: list[str] | None = None) -> int:
    """Run `hse` with `argv` (default: sys.argv[1:]); returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error argparse already printed
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    session = Session(args)
    try:
        return handler(session)
    except HSEError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    finally:
        session.close()
    return 2


def build_parser() -> argparse.ArgumentParser:
    """The `hse` parser; defaults are read from the environment at call time. Building
    it imports no heavy module (see `common`)."""
    parser = argparse.ArgumentParser(
        prog=PROG, formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_EPILOG,
        description="Queue, execute and analyse the runs of a hyperspace_explorer Study.")
    add_global_options(parser, top_level=True)
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    for module in (server, worker, submit, runs, results, tune, admin, demo, ui):
        module.register(sub)  # in the order `hse --help` lists them
    return parser
