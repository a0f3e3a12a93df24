"""optuna-dashboard on the Optuna studies kept in a Study's database.

`open_dashboard(uri, db)` serves the dashboard (blocking) on the journal storage of
database `db` (`storage.journal`), where every `Tuner` of that database keeps its
study: `hse tune-dashboard` calls it. Needs `pip install -e ".[optuna]"`.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import HSEError
from ..ports import check_listen
from ..storage import connect, redact_uri


def dashboard_storage(mongo_uri: str | None, db: str) -> Any:
    """The Optuna storage of database `db` (what the dashboard reads)."""
    from ..server import resolve_uri

    store = connect(resolve_uri(mongo_uri), db)
    try:
        return store.optuna_storage()
    finally:
        store.close()  # the journal keeps its own connection


def open_dashboard(mongo_uri: str | None, db: str, study: str | None = None, *,
                   host: str = "127.0.0.1", port: int = 8080,
                   say: Callable[[str], None] = print) -> None:
    """Serve optuna-dashboard for the Optuna studies of database `db` until
    interrupted. `study` only checks that the study exists and prints its address."""
    try:
        import optuna_dashboard
    except ImportError:
        raise HSEError("the dashboard needs optuna-dashboard: pip install -e \".[optuna]\"") \
            from None
    check_listen(host, port)
    storage = dashboard_storage(mongo_uri, db)
    names = [s.study_name for s in storage.get_all_studies()]
    address = f"http://{host}:{port}/dashboard"
    if study is not None:
        if study not in names:
            raise HSEError(f"no Optuna study '{study}' in database '{db}'; studies there: "
                           f"{', '.join(names) or '(none: run hse tune first)'}")
        sid = storage.get_study_id_from_name(study)
        address += f"/studies/{sid}"
    say(f"optuna-dashboard for database '{db}' ({len(names)} stud{'y' if len(names) == 1 else 'ies'}"
        f") at {address} (Ctrl-C stops it); MongoDB: {redact_uri(str(mongo_uri or 'default'))}")
    optuna_dashboard.run_server(storage, host=host, port=port)
