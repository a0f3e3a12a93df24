"""What every `hse` command module shares: the global options, the way a command is
declared, and the `Session` a handler works with (its arguments and its RunQueue).

Nothing heavy is imported here or at the top of a command module: `hse --help`,
`hse status` and `hse ls` must not load pandas, scipy, matplotlib, Sacred or torch.
Handlers import what they need when they run.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import HSEError
from ..storage import redact_uri

if TYPE_CHECKING:
    from ..queue import RunQueue

PROG = "hse"
DEFAULT_TASKS_DIR = "tasks"

Handler = Callable[["Session"], int]
SubParsers = argparse._SubParsersAction


def fail(message: str) -> None:
    """Print `hse: error: <message>` (password-free) on stderr."""
    print(f"{PROG}: error: {redact_uri(message)}", file=sys.stderr)


def checked(check: Callable[..., Any], *bounds: Any,
            convert: Callable[[str], Any] = int) -> Callable[[str], Any]:
    """An argparse type: the text converted (`int` by default), then passed through
    `check`, one of the validators of `errors` (`positive_int`, `bounded_int` with its
    `bounds`, `seconds`) that the API applies too. A bad value is refused while the
    command line is parsed, before any database is reached, and the error names the
    option as typed (`argument --max-attempts: must be a positive integer, got 0`),
    where the API's names its argument (`max_attempts`)."""
    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"invalid {convert.__name__} value: {text!r}") from None
        try:
            return check(value, "", *bounds)
        except HSEError as exc:  # "<name> must be ...", the name left empty
            raise argparse.ArgumentTypeError(str(exc).strip()) from None

    return parse


def add_global_options(parser: argparse.ArgumentParser, *, top_level: bool) -> None:
    """--mongo-uri/--db/--tasks-dir/--study, on the main parser and on each subcommand.

    On subcommands their default is SUPPRESS, so that an option given before the
    subcommand is not overwritten by the subcommand's default.
    """
    def default(value: Any) -> Any:
        return value if top_level else argparse.SUPPRESS

    group = parser.add_argument_group("global options")
    group.add_argument("--mongo-uri", metavar="URI", default=default(None),
                       help="MongoDB URI (default: $HSE_MONGO_URI, else the embedded server "
                            "of this machine, started on demand)")
    group.add_argument("--db", metavar="NAME", default=default(os.environ.get("HSE_DB")),
                       help="database of the Study (default: $HSE_DB)")
    group.add_argument("--tasks-dir", metavar="DIR",
                       default=default(os.environ.get("HSE_TASKS_DIR") or DEFAULT_TASKS_DIR),
                       help="directory of the task .json files (default: $HSE_TASKS_DIR, "
                            "else ./tasks)")
    group.add_argument("--study", metavar="NAME", default=default(None),
                       help="Study name in the queue (default: the database name)")


def command(sub: SubParsers, name: str, handler: Handler, help: str, epilog: str, *,
            global_options: bool = True) -> argparse.ArgumentParser:
    """Declare `hse NAME`: its parser, with examples in `epilog`, run by `handler`."""
    parser = sub.add_parser(name, help=help, description=help, epilog=epilog,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.set_defaults(handler=handler)
    if global_options:
        add_global_options(parser, top_level=False)
    return parser


class Session:
    """What a command works with: its arguments and, opened on first use and closed by
    `main`, the `RunQueue` of the chosen database (the same object a notebook uses)."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self._queue: RunQueue | None = None

    @property
    def db(self) -> str:
        if not self.args.db:
            raise HSEError("no database given: pass --db NAME (or set HSE_DB)")
        return self.args.db

    @property
    def study(self) -> str:
        return self.args.study or self.db

    @property
    def queue(self) -> RunQueue:
        """The Study's RunQueue. Commands that only read need no tasks directory: it is
        passed when it exists (`RunQueue.task` then reads a task's file, else the copy
        stored with its runs); `hse submit` (`needs_tasks`) always passes it."""
        if self._queue is None:
            from ..queue import RunQueue

            db = self.db  # before connecting, which may start the embedded server
            tasks_dir = self.args.tasks_dir
            if not getattr(self.args, "needs_tasks", False) and not (
                    tasks_dir and Path(tasks_dir).is_dir()):
                tasks_dir = None
            self._queue = RunQueue(self.args.mongo_uri, db, tasks_dir, study=self.args.study,
                                   study_dir=getattr(self.args, "study_dir", None))
        return self._queue

    def global_options(self) -> str:
        """The global options that reach this Study, for commands printed to be run as
        they are (`hse submit ... --db D`); the URI without its password."""
        options = []
        if self.args.mongo_uri:
            options += ["--mongo-uri", redact_uri(self.args.mongo_uri)]
        options += ["--db", self.db]
        if self.args.study:
            options += ["--study", self.args.study]
        if self.args.tasks_dir and self.args.tasks_dir != DEFAULT_TASKS_DIR:
            options += ["--tasks-dir", str(self.args.tasks_dir)]
        return " ".join(shlex.quote(o) for o in options)

    def close(self) -> None:
        if self._queue is not None:
            self._queue.close()
            self._queue = None
