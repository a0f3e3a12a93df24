"""Render a `summarize(...)` table as Markdown, LaTeX, CSV, HTML or JSON text.

Markdown, LaTeX and HTML are for reading: one "mean ± std" cell per metric (SEM and the
confidence interval are left out), Holm-adjusted p-values, and numbers rounded to a
precision that fits the spread (two significant digits of the typical std). CSV and JSON
are for machines: every column of the summary at full precision.

`export(summary, fmt, ...)` dispatches on the format name. Every function returns a
string; write it wherever it is needed.

Config values are written as they were given: integer parameters stay integers (``20``,
not ``20.0``), and a parameter set to None differs from one the configuration does not
have (another model class's parameter):

=============  =====================  ==========================================
format         explicit None          parameter not in the configuration (NaN)
=============  =====================  ==========================================
md/LaTeX/HTML  ``None``               ``-``
CSV            ``None``               empty field
JSON           ``null``               key left out of that row's object
=============  =====================  ==========================================
"""
from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .analysis import (
    DIRECTIONS,
    STAT_SUFFIXES,
    TEST_COLUMNS,
    check_direction,
    format_value,
    is_not_set,
)
from .errors import AnalysisError

__all__ = ["to_markdown", "to_latex", "to_csv", "to_html", "to_json", "export", "FORMATS"]

_MISSING = "-"


# --------------------------------------------------------------------------- layout

@dataclass
class _Layout:
    config: list[str]
    metrics: list[str]
    main: str | None
    direction: str | None


def _layout(summary: object) -> _Layout:
    """Which columns of a summary are config values and which metrics it has."""
    if not isinstance(summary, pd.DataFrame):
        raise AnalysisError(
            f"expected a summary DataFrame from summarize(), got {type(summary).__name__}")
    cols = [c for c in summary.columns]
    attrs = summary.attrs or {}
    metrics = [m for m in attrs.get("metrics", []) if f"{m}_mean" in cols]
    if not metrics:  # attrs lost (e.g. a frame read back from CSV): infer from the names
        metrics = [c[:-5] for c in cols if isinstance(c, str) and c.endswith("_mean")
                   and f"{c[:-5]}_std" in cols]
    if not metrics:
        raise AnalysisError(
            "the summary has no '<metric>_mean'/'<metric>_std' columns; pass the frame "
            f"returned by summarize() (columns: {', '.join(map(str, cols))})")
    stat_cols = {f"{m}_{s}" for m in metrics for s in STAT_SUFFIXES}
    other = {"rank", "n", *TEST_COLUMNS} | stat_cols
    if "config_columns" in attrs:
        config = [c for c in attrs["config_columns"] if c in cols]
    else:
        config = [c for c in cols if c not in other]
    main = attrs.get("metric") if attrs.get("metric") in metrics else None
    direction = attrs.get("direction") if attrs.get("direction") in DIRECTIONS else None
    return _Layout(config=config, metrics=metrics, main=main, direction=direction)


def _resolve_main(layout: _Layout, metric: str | None, direction: str | None) -> tuple[str, str]:
    metric = metric if metric is not None else layout.main
    direction = direction if direction is not None else layout.direction
    if isinstance(metric, str) and metric.startswith("metrics."):
        metric = metric[len("metrics."):]
    if metric not in layout.metrics:
        raise AnalysisError(
            f"unknown metric {metric!r}; the summary has: {', '.join(map(repr, layout.metrics))}")
    return str(metric), check_direction(direction)


_MINIMIZE_WORDS = {"loss", "err", "error", "errors", "mse", "mae", "rmse", "nll", "perplexity",
                   "ppl", "time", "duration", "latency", "regret", "cost", "wer", "cer"}


def guess_direction(name: str) -> str:
    """A metric's direction guessed from its name: "minimize" for loss/error/mse/time/...

    ``neg_*`` names (scikit-learn's negated errors) are maximized. Everything else is
    assumed to be maximized; pass `directions=` to the exporters to say otherwise.
    """
    words = [w for w in re.split(r"[^a-z0-9]+", name.lower()) if w]
    if words and words[0] == "neg":
        return "maximize"
    return "minimize" if any(w in _MINIMIZE_WORDS for w in words) else "maximize"


# --------------------------------------------------------------------------- numbers

def _decimals(mean: np.ndarray, std: np.ndarray) -> int | None:
    """Decimals showing two significant digits of the median std (None: use `g`)."""
    spread = std[np.isfinite(std) & (std > 0)]
    if spread.size:
        d = 1 - math.floor(math.log10(float(np.median(spread))))
    else:
        size = np.abs(mean[np.isfinite(mean) & (mean != 0)])
        d = 3 - math.floor(math.log10(float(np.median(size)))) if size.size else 3
    if d > 6:
        return None
    return max(d, 0)


def _number(x: float, decimals: int | None) -> str:
    if x is None or pd.isna(x):
        return _MISSING
    if not np.isfinite(x):
        return str(float(x))
    if decimals is None:
        return f"{x:.3g}"
    text = f"{x:.{decimals}f}"
    return "0" + text[2:] if text.startswith("-0") and float(text) == 0 else text


def _pvalue(p: object) -> str:
    if p is None or pd.isna(p):
        return _MISSING
    p = float(p)  # type: ignore[arg-type]
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def _latex_pvalue(p: object) -> str:
    text = _pvalue(p)
    if text == _MISSING:
        return "--"
    if "e" in text:
        mantissa, exponent = text.split("e")
        return rf"${mantissa} \times 10^{{{int(exponent)}}}$"
    return text


def _is_numeric(values: pd.Series) -> bool:
    """A config column of numbers (ints/floats, perhaps None or missing): right-aligned."""
    if pd.api.types.is_bool_dtype(values):
        return False
    if pd.api.types.is_numeric_dtype(values):
        return True
    present = [v for v in values if v is not None and not is_not_set(v)]
    return bool(present) and all(
        isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))
        for v in present)


def _flag(value: object) -> str:
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return _MISSING
    return "yes" if bool(value) else "no"


def _metric_cells(summary: pd.DataFrame, m: str, pm: str) -> tuple[list[str], list[str]]:
    """("mean ± std" cells, formatted means) of metric `m`; `pm` is the ± separator."""
    mean = summary[f"{m}_mean"].to_numpy(dtype=float, na_value=np.nan)
    std = summary[f"{m}_std"].to_numpy(dtype=float, na_value=np.nan)
    d = _decimals(mean, std)
    means = [_number(x, d) for x in mean]
    cells = [mu if (pd.isna(s) or mu == _MISSING) else f"{mu}{pm}{_number(s, d)}"
             for mu, s in zip(means, std)]
    return cells, means


def _display(summary: pd.DataFrame, pm: str = " ± ") -> tuple[list[str], list[list[str]], list[bool]]:
    """Headers, rows of cell text, and per-column "is numeric" for the readable formats."""
    layout = _layout(summary)
    arrow = {"maximize": " ↑", "minimize": " ↓"}
    headers: list[str] = []
    columns: list[list[str]] = []
    numeric: list[bool] = []

    def add(header: str, cells: list[str], is_numeric: bool) -> None:
        headers.append(header)
        columns.append(cells)
        numeric.append(is_numeric)

    if "rank" in summary.columns:
        add("rank", [_MISSING if pd.isna(r) else str(int(r)) for r in summary["rank"]], True)
    for c in layout.config:
        values = summary[c]
        add(str(c), [format_value(v) for v in values], _is_numeric(values))
    if "n" in summary.columns:
        add("n", [_MISSING if pd.isna(v) else str(int(v)) for v in summary["n"]], True)
    for m in layout.metrics:
        cells, _ = _metric_cells(summary, m, pm)
        mark = arrow[layout.direction] if (m == layout.main and layout.direction) else ""
        add(f"{m}{mark}", cells, True)
    for col, header in (("p_welch_holm", "p Welch (Holm)"), ("p_mwu_holm", "p MWU (Holm)")):
        if col in summary.columns:
            add(header, [_pvalue(p) for p in summary[col]], True)
    if "not_worse" in summary.columns:
        add("not worse", [_flag(v) for v in summary["not_worse"]], False)
    rows = [list(r) for r in zip(*columns)] if columns else []
    return headers, rows, numeric


# --------------------------------------------------------------------------- formats

def to_markdown(summary: pd.DataFrame) -> str:
    """A GitHub-flavoured pipe table, padded so it also lines up in a terminal.

    Columns: rank, the varying config values, n, "mean ± std" per metric (the main metric
    marked ↑/↓), the Holm-adjusted Welch and Mann-Whitney p-values, and "not worse"
    (yes/no, "-" where untestable). Missing values show as "-".
    """
    headers, rows, numeric = _display(summary)

    def esc(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    headers = [esc(h) for h in headers]
    rows = [[esc(c) for c in r] for r in rows]
    widths = [max([3, len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        padded = [c.rjust(w) if num else c.ljust(w) for c, w, num in zip(cells, widths, numeric)]
        return "| " + " | ".join(padded) + " |"

    rule = "| " + " | ".join(("-" * (w - 1) + ":") if num else (":" + "-" * (w - 1))
                             for w, num in zip(widths, numeric)) + " |"
    return "\n".join([line(headers), rule, *(line(r) for r in rows)]) + "\n"


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
}


def latex_escape(text: object) -> str:
    """`text` with LaTeX's special characters (& % $ # _ { } ~ ^ \\) escaped."""
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))


def to_latex(summary: pd.DataFrame, metric: str | None = None, direction: str | None = None,
             *, directions: Mapping[str, str] | None = None, pvalues: bool = True,
             caption: str | None = None, label: str | None = None) -> str:
    """A booktabs table (\\toprule/\\midrule/\\bottomrule) of the summary.

    Cells are "mean $\\pm$ std" at a precision fitting the spread; the best mean of every
    metric column is set in \\textbf{} (every row that shows the same rounded best value).
    "Best" follows `direction` for the main `metric`, `directions[name]` for other
    metrics, else `guess_direction(name)` (minimize for loss/error/mse/time..., maximize
    otherwise). `metric`/`direction` default to the ones summarize() recorded. With
    `pvalues`, a column of Holm-adjusted Welch p-values against the best group is added.
    With a caption or label the tabular is wrapped in a centred table environment.
    Needs ``\\usepackage{booktabs}``.
    """
    layout = _layout(summary)
    main, direction = _resolve_main(layout, metric, direction)
    directions = dict(directions or {})
    for name, d in directions.items():
        check_direction(d, f" for metric {name!r}")

    headers: list[str] = []
    columns: list[list[str]] = []
    align: list[str] = []
    if "rank" in summary.columns:
        headers.append("rank")
        columns.append([_MISSING if pd.isna(r) else str(int(r)) for r in summary["rank"]])
        align.append("r")
    for c in layout.config:
        headers.append(latex_escape(c))
        columns.append([latex_escape(format_value(v)) for v in summary[c]])
        align.append("r" if _is_numeric(summary[c]) else "l")
    if "n" in summary.columns:
        headers.append("$n$")
        columns.append([str(int(v)) if pd.notna(v) else _MISSING for v in summary["n"]])
        align.append("r")
    for m in layout.metrics:
        d = direction if m == main else directions.get(m, guess_direction(m))
        cells, means = _metric_cells(summary, m, r" $\pm$ ")
        values = summary[f"{m}_mean"].to_numpy(dtype=float, na_value=np.nan)
        if np.isfinite(values).any():
            best = np.nanargmax(values) if d == "maximize" else np.nanargmin(values)
            cells = [rf"\textbf{{{cell}}}" if mu == means[best] else cell
                     for cell, mu in zip(cells, means)]
        arrow = r" $\uparrow$" if d == "maximize" else r" $\downarrow$"
        headers.append(latex_escape(m) + arrow)
        columns.append(["--" if c == _MISSING else c for c in cells])
        align.append("r")
    if pvalues and "p_welch_holm" in summary.columns:
        headers.append(r"$p_{\mathrm{Holm}}$")
        columns.append([_latex_pvalue(p) for p in summary["p_welch_holm"]])
        align.append("r")

    rows = list(zip(*columns)) if columns else []
    body = [r"\begin{tabular}{" + "".join(align) + "}", r"\toprule",
            " & ".join(headers) + r" \\", r"\midrule",
            *(" & ".join(r) + r" \\" for r in rows),
            r"\bottomrule", r"\end{tabular}"]
    if caption is None and label is None:
        return "\n".join(body) + "\n"
    wrapped = [r"\begin{table}[ht]", r"\centering"]
    if caption is not None:
        wrapped.append(r"\caption{" + latex_escape(caption) + "}")
    if label is not None:
        wrapped.append(r"\label{" + label + "}")
    return "\n".join([*wrapped, *body, r"\end{table}"]) + "\n"


def to_csv(summary: pd.DataFrame) -> str:
    """Every column at full precision; missing values are empty fields, a config value
    set to None is written ``None`` (pandas' `read_csv` reads both back as NaN unless
    given ``keep_default_na=False``); integer config values stay integers."""
    layout = _layout(summary)
    out = summary.copy()
    for c in layout.config:
        if out[c].dtype == object:
            out[c] = pd.Series(["None" if v is None else v for v in out[c]],
                               index=out.index, dtype=object)
    return out.to_csv(index=False, lineterminator="\n")


def to_html(summary: pd.DataFrame) -> str:
    """An HTML <table> (class "hse-summary") with the same cells as `to_markdown`."""
    headers, rows, _ = _display(summary)
    frame = pd.DataFrame(rows, columns=headers)
    return frame.to_html(index=False, escape=True, border=0, classes="hse-summary",
                         justify="left")


def _plain(value: object) -> object:
    """A JSON-ready value: NaN/NA/inf -> None, numpy scalars -> Python, tuples -> lists."""
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (tuple, list, np.ndarray)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (pd.Timestamp, pd.Timedelta)):
        return value.isoformat()
    return value


def to_json(summary: pd.DataFrame) -> str:
    """A JSON array of records (one object per row, every column); NaN/NA become null.

    Config columns: a value set to None is null, and a parameter the row's
    configuration does not have (NaN) is left out of that row's object.
    """
    layout = _layout(summary)
    config = {str(c) for c in layout.config}
    names = [str(c) for c in summary.columns]
    records = [{k: _plain(v) for k, v in zip(names, row)
                if not (k in config and is_not_set(v))}
               for row in summary.itertuples(index=False, name=None)]
    return json.dumps(records, allow_nan=False, ensure_ascii=False, default=str)


FORMATS: dict[str, str] = {"md": "markdown", "markdown": "markdown", "latex": "latex",
                           "tex": "latex", "csv": "csv", "html": "html", "json": "json"}


def export(summary: pd.DataFrame, fmt: str, metric: str | None = None,
           direction: str | None = None, **options: object) -> str:
    """`summary` as text in `fmt`: md/markdown, latex/tex, csv, html or json.

    `metric` and `direction` are used by LaTeX (to bold the best value) and default to
    the ones summarize() recorded; `options` go to the LaTeX writer (directions=,
    pvalues=, caption=, label=).
    """
    kind = FORMATS.get(fmt.lower().lstrip(".")) if isinstance(fmt, str) else None
    if kind is None:
        raise AnalysisError(f"unknown export format {fmt!r}; valid formats: "
                            f"{', '.join(repr(f) for f in FORMATS)}")
    if kind == "latex":
        return to_latex(summary, metric, direction, **options)  # type: ignore[arg-type]
    if options:
        raise AnalysisError(f"options {sorted(options)} only apply to the LaTeX format")
    writers: dict[str, Callable[[pd.DataFrame], str]] = {
        "markdown": to_markdown, "csv": to_csv, "html": to_html, "json": to_json}
    return writers[kind](summary)
