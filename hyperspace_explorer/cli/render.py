"""Rendering helpers shared by the `hse` commands: rich consoles, table cells, times
and JSON-ready values. rich is imported inside the helpers, never at module import."""
from __future__ import annotations

import math
import sys
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from ..status import RUNNING

STATUS_STYLE = {"QUEUED": "cyan", "RUNNING": "yellow", "COMPLETED": "green", "FAILED": "red",
                "TIMEOUT": "magenta", "CANCELLED": "dim", "PRUNED": "blue"}


def console(stderr: bool = False):
    """A rich console; wide when piped, so ids and values are never cut or wrapped."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr, highlight=False, soft_wrap=False,
                   width=None if stream.isatty() else 200)


def text(value: Any, style: str = ""):
    """A table cell that is never parsed as rich markup (configs contain [...])."""
    from rich.text import Text

    return Text("-" if value is None else str(value), style=style)


def status_text(status: Any):
    """A status cell, coloured by status."""
    return text(status, STATUS_STYLE.get(str(status), ""))


def epoch(value: Any) -> float | None:
    """Seconds since the epoch from a stored time (epoch number or datetime)."""
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=timezone.utc)).timestamp()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


def when(value: Any) -> str:
    """A stored time as local "YYYY-mm-dd HH:MM:SS" ("-" when absent)."""
    ts = epoch(value)
    return "-" if ts is None else datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def seconds(value: float | None) -> str:
    """A duration: 12.3s, 4m05s, 2h07m ("-" when unknown)."""
    if value is None or not math.isfinite(value):
        return "-"
    if value < 60:
        return f"{value:.1f}s"
    minutes, secs = divmod(int(value), 60)
    return f"{minutes}m{secs:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


def duration(doc: Mapping[str, Any]) -> str:
    """Recorded duration of a finished run; time so far for a running one."""
    if doc.get("duration") is not None:
        return seconds(float(doc["duration"]))
    started = epoch(doc.get("started_at"))
    if doc.get("status") == RUNNING and started is not None:
        return seconds(time.time() - started) + " so far"
    return "-"


def json_ready(value: Any) -> Any:
    """Plain JSON values: NaN/inf -> None, tuples -> lists, numpy scalars -> Python."""
    if isinstance(value, Mapping):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if type(value).__module__ == "numpy":  # a numpy scalar (numpy is not imported here)
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def summary_table(summary: Any, title: str | None = None):
    """A `summarize()` frame as a rich table: one "mean ± std" cell per metric."""
    import pandas as pd
    from rich.table import Table

    from ..analysis import format_value

    attrs = summary.attrs
    main, direction = attrs.get("metric"), attrs.get("direction")
    metrics = sorted(attrs.get("metrics", []), key=lambda m: m != main)
    config_columns = attrs.get("config_columns", [])
    table = Table(title=title)
    table.add_column("rank", justify="right")
    for col in config_columns:
        table.add_column(col)
    table.add_column("n", justify="right")
    for m in metrics:
        arrow = (" ↑" if direction == "maximize" else " ↓") if m == main else ""
        table.add_column(f"{m}{arrow}", justify="right", style="bold" if m == main else "")
    table.add_column("p (Holm)", justify="right")
    table.add_column("not worse")
    for _, row in summary.iterrows():
        cells = [text(row["rank"])]
        cells += [text(format_value(row[col])) for col in config_columns]
        cells.append(text(row["n"]))
        cells += [text(mean_std(row[f"{m}_mean"], row[f"{m}_std"])) for m in metrics]
        p = row.get("p_welch_holm")
        cells.append(text("-" if pd.isna(p) else f"{p:.3g}"))
        flag = row.get("not_worse")
        cells.append(text("-" if pd.isna(flag) else ("yes" if flag else "no")))
        table.add_row(*cells)
    return table


def mean_std(mean: float, std: float) -> str:
    """A "mean ± std" cell as `hse results` prints it (the web page shows the same)."""
    if not math.isfinite(mean):
        return "-"
    return f"{mean:.4f} ± {std:.4f}" if math.isfinite(std) else f"{mean:.4f}"
