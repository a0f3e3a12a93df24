"""Matplotlib figures of a results frame and of logged metric curves.

Every function returns the `matplotlib.figure.Figure` it drew (a notebook shows a
returned figure inline) and, given ``path="....png"`` (or ``.svg``/``.pdf``), also saves
it there. Pass ``ax=`` to draw into an axes of your own figure instead.

Backends: figures are built with the object-oriented API (`matplotlib.figure.Figure`),
not with pyplot, so this module never selects or changes a backend: saving renders with
Agg (PNG) or the SVG/PDF writers whatever backend is configured, nothing opens a window
or needs a display (tests, workers, servers), a notebook shows each figure once (pyplot
would also show it at the end of the cell), and figures are freed like any other object.
To show one in a GUI window, create the axes with pyplot and pass ``ax=``.

Many groups stay readable: every group gets its own colour (tab10 up to 10 groups, then
tab20, tab20b and tab20c, then evenly spaced hues; past 10 lines the line style changes
too), legends sit outside the axes, on the right, long labels are wrapped at ", " (one
parameter per line where needed), and a figure made here is sized by the number of
groups and the length of their labels. Box plots of many groups or long labels are
drawn horizontally, one row per group, so every label reads left to right.
"""
from __future__ import annotations

import inspect
import math
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.colors import hsv_to_rgb, to_rgba
from matplotlib.figure import Figure
from scipy import stats

from .analysis import (
    CONFIG_PREFIX,
    _factorize,
    check_direction,
    config_label,
    config_paths,
    format_value,
    group_runs,
    is_not_set,
    metric_values,
    resolve_config,
    resolve_metric,
)
from .errors import AnalysisError

__all__ = ["plot_metric_by_config", "plot_curves", "plot_param_vs_metric", "SAVE_FORMATS"]

SAVE_FORMATS = (".png", ".svg", ".pdf")
BANDS = ("std", "sem", "ci", "none")
LINESTYLES = ("-", "--", ":", "-.")
# matplotlib >= 3.10 says boxplot(orientation=...); older versions only know vert=.
_BOXPLOT_ORIENTATION = "orientation" in inspect.signature(Axes.boxplot).parameters
# Rough text widths (inches per character) at the default 10 pt font and at the
# legend's "small" size, used to size figures; generous so that nothing is cut.
_CHAR_IN = 0.075
_SMALL_CHAR_IN = 0.064
_LEGEND_WRAP = 60   # characters per legend line
_LABEL_WRAP = 60    # characters per tick label line (horizontal box plots)


def colors(n: int) -> list[tuple[float, float, float, float]]:
    """`n` distinct RGBA colours: tab10 (n <= 10), tab20 with its dark half first
    (n <= 20), tab20 + tab20b + tab20c (n <= 60), else hues a golden ratio of the
    circle apart (neighbouring groups far apart in hue, darker every other one)."""
    def table(name: str) -> list[tuple[float, ...]]:
        colormap: Any = colormaps[name]  # a ListedColormap: it lists its colours
        return [to_rgba(c) for c in colormap.colors]

    if n <= 10:
        palette = table("tab10")
    elif n <= 60:
        tab20 = table("tab20")
        palette = tab20[0::2] + tab20[1::2] + table("tab20b") + table("tab20c")
    else:
        i = np.arange(n)
        hsv = np.column_stack([(i * 0.6180339887498949) % 1.0, np.full(n, 0.85),
                               np.where(i % 2, 0.6, 0.9)])
        palette = [(*map(float, rgb), 1.0) for rgb in hsv_to_rgb(hsv)]
    return palette[:n]  # type: ignore[return-value]


def linestyle(i: int) -> str:
    """Solid for the first 10 lines, then dashed, dotted, dash-dotted, ..."""
    return LINESTYLES[(i // 10) % len(LINESTYLES)]


def wrap_label(label: str, width: int) -> str:
    """`label` ("a=1, b=2, ...") broken into lines of about `width` characters: at ", "
    first, then after a long part's "=", and only then inside a very long value."""
    lines: list[str] = []
    for part in label.split(", "):
        if len(part) > width and "=" in part:
            name, value = part.split("=", 1)
            pieces = [name + "=", *(textwrap.wrap(value, width, break_on_hyphens=False)
                                    or [value])]
        else:
            pieces = [part]
        if lines and len(pieces) == 1 and len(lines[-1]) + 2 + len(pieces[0]) <= width:
            lines[-1] += ", " + pieces[0]
        else:
            if lines:
                lines[-1] += ","
            lines.extend(pieces)
    return "\n".join(lines)


def _value_text(value: object) -> str:
    """A config value as a legend entry under the parameter's name (the title)."""
    text = "(not set)" if is_not_set(value) else format_value(value)
    return "\n".join(textwrap.wrap(text, _LEGEND_WRAP, break_on_hyphens=False) or [text])


def _text_size(labels: Sequence[str], char_in: float) -> tuple[float, int]:
    """(width in inches of the longest line, number of lines) of wrapped labels."""
    longest = max((len(line) for label in labels for line in label.split("\n")), default=0)
    return longest * char_in, sum(label.count("\n") + 1 for label in labels)


def _legend_columns(labels: Sequence[str]) -> int:
    """One legend column per 45 lines of (wrapped) labels."""
    return max(1, math.ceil(_text_size(labels, _SMALL_CHAR_IN)[1] / 45))


def _legend(ax: Axes, handles: list, labels: list[str], title: str | None = None) -> None:
    """A legend outside the axes, to their right, top-aligned (columns if very long)."""
    ncols = _legend_columns(labels)
    ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.02, 1.0),
              borderaxespad=0.0, fontsize="small", ncols=ncols, title=title,
              title_fontsize="small", alignment="left")


def _legend_figsize(labels: Sequence[str], title: str = "") -> tuple[float, float]:
    """A figure size leaving 6.5 x 4.5 inches for the axes next to a legend of `labels`."""
    width, lines = _text_size([*labels, title], _SMALL_CHAR_IN)
    ncols = _legend_columns(labels)
    rows = math.ceil(lines / ncols)
    legend_w = ncols * (width + 0.7)
    legend_h = rows * 0.19 + len(labels) / ncols * 0.06 + 0.3
    return 6.5 + legend_w, max(4.8, legend_h + 1.0)


class _NotebookFigure(Figure):
    """A Figure that IPython displays inline even when no pyplot backend is active."""

    def _repr_png_(self) -> bytes:
        import io

        buffer = io.BytesIO()
        self.savefig(buffer, format="png", bbox_inches="tight")
        return buffer.getvalue()


def _axes(ax: Axes | None, figsize: tuple[float, float] | None) -> tuple[Figure, Axes]:
    if ax is not None:
        if not isinstance(ax, Axes):
            raise AnalysisError(f"ax must be a matplotlib Axes, got {type(ax).__name__}")
        owner: Any
        try:
            owner = ax.get_figure(root=True)  # matplotlib >= 3.10 (subfigures)
        except TypeError:
            owner = ax.figure
        return owner, ax
    fig = _NotebookFigure(figsize=figsize or (8.0, 5.0), layout="constrained")
    return fig, fig.add_subplot()


def _finish(fig: Figure, path: str | Path | None, dpi: int) -> Figure:
    if path is not None:
        path = Path(path)
        if path.suffix.lower() not in SAVE_FORMATS:
            raise AnalysisError(f"cannot save a plot as {path.name!r}: the file name must end "
                                f"in one of {', '.join(SAVE_FORMATS)}")
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return fig


def _split(values: np.ndarray, codes: np.ndarray, count: int) -> list[np.ndarray]:
    """The non-NaN values of each group 0..count-1 (one sort, no loop over runs)."""
    ok = ~np.isnan(values)
    values, codes = values[ok], codes[ok]
    order = np.argsort(codes, kind="stable")
    bounds = np.cumsum(np.bincount(codes, minlength=count))[:-1]
    return np.split(values[order], bounds)


def plot_metric_by_config(df: pd.DataFrame, metric: str, by: list[str] | None = None, *,
                          direction: str | None = None,
                          statuses: Sequence[str] | str | None = ("COMPLETED",),
                          jitter: float = 0.18, ax: Axes | None = None,
                          path: str | Path | None = None, title: str | None = None,
                          figsize: tuple[float, float] | None = None,
                          dpi: int = 150, seed: int = 0) -> Figure:
    """Box plot plus jittered points of `metric` per configuration group, across seeds.

    Groups are formed as in `summarize` (runs differing only by seed, or by the config
    paths in `by`) and labelled by the config values that vary between them (a
    parameter set to None shows as "=None"; one a group's configuration does not have
    is left out of its label). With a `direction` the groups are ordered best mean
    first, otherwise in order of first appearance. Boxes stand upright, one label line
    per parameter, while the labels fit side by side in a figure up to 10 inches wide;
    otherwise each group is a row (the first on top) with its label wrapped on the left.
    Each group's points have their own colour. `seed` fixes the jitter so figures are
    reproducible.
    """
    if direction is not None:
        check_direction(direction)
    col = resolve_metric(df, metric)
    groups = group_runs(df, by, statuses)
    values = metric_values(groups.data, col)
    samples = _split(values, groups.codes, groups.count)
    labels = groups.labels()
    order = list(range(groups.count))
    if direction is not None:
        means = np.array([s.mean() if s.size else np.nan for s in samples])
        key = -means if direction == "maximize" else means
        order = list(np.lexsort((np.arange(len(key)), np.nan_to_num(key, nan=np.inf))))
    samples = [samples[i] for i in order]
    labels = [labels[i] for i in order]
    if not any(s.size for s in samples):
        raise AnalysisError(f"no run has a value for {col!r}; nothing to plot")

    # Upright boxes while the labels, one parameter per line, fit side by side in a
    # figure up to 10 inches wide; otherwise one row per group, labels on the left.
    stacked = [label.replace(", ", "\n") for label in labels]
    line_w, _ = _text_size(stacked, _CHAR_IN)
    slot = max(0.6, line_w + 0.25)
    upright = (len(samples) * slot + 1.2 <= 10.0
               and max(label.count("\n") for label in stacked) < 4)
    if upright:
        labels = stacked
        size = (max(4.0, len(samples) * slot + 1.2), 5.0)
    else:
        labels = [wrap_label(label, _LABEL_WRAP) for label in labels]
        label_w, _ = _text_size(labels, _CHAR_IN)
        height = sum(max(0.32, 0.17 * (label.count("\n") + 1) + 0.12) for label in labels)
        size = (5.5 + label_w, max(3.5, height + 1.3))
    fig, ax = _axes(ax, figsize or size)
    positions = np.arange(1, len(samples) + 1)
    ax.boxplot([s if s.size else [np.nan] for s in samples], positions=positions,
               widths=0.6, showfliers=False, medianprops={"color": "black"},
               **({"orientation": "vertical" if upright else "horizontal"}
                  if _BOXPLOT_ORIENTATION else {"vert": upright}))
    rng = np.random.default_rng(seed)
    for pos, s, color in zip(positions, samples, colors(len(samples))):
        spread = pos + rng.uniform(-jitter, jitter, s.size)
        x, y = (spread, s) if upright else (s, spread)
        ax.scatter(x, y, s=16, alpha=0.85, zorder=3, color=color, edgecolors="none")
    name = col[len("metrics."):]
    arrow = {"maximize": " (higher is better)", "minimize": " (lower is better)"}
    value_label = name + (arrow[direction] if direction else "")
    if upright:
        ax.set_xticks(positions, labels)
        ax.set_ylabel(value_label)
        ax.grid(axis="y", alpha=0.3)
    else:
        ax.set_yticks(positions, labels)
        ax.set_ylim(len(samples) + 0.6, 0.4)  # first group (the best, by direction) on top
        ax.set_xlabel(value_label)
        ax.grid(axis="x", alpha=0.3)
    ax.set_title(title if title is not None else f"{name} per configuration across seeds")
    return _finish(fig, path, dpi)


def _curve_column(curves: pd.DataFrame, name: str) -> str:
    if name in curves.columns:
        return name
    bare = name[len(CONFIG_PREFIX):] if name.startswith(CONFIG_PREFIX) else name
    for candidate in (CONFIG_PREFIX + bare, bare):
        if candidate in curves.columns:
            return candidate
    valid = [c for c in curves.columns if c not in ("run_id", "seed", "name", "step", "value")]
    raise AnalysisError(f"unknown group column {name!r}; valid choices: "
                        f"{', '.join(map(repr, valid)) or '(none)'}")


def plot_curves(curves_df: pd.DataFrame, name: str, group_cols: Sequence[str] | str | None = (),
                *, band: str | None = "std", confidence: float = 0.95, logy: bool = False,
                ax: Axes | None = None, path: str | Path | None = None, title: str | None = None,
                figsize: tuple[float, float] | None = None, dpi: int = 150) -> Figure:
    """The logged metric `name` over steps: mean over seeds per group, with a band.

    `curves_df` is long format: columns ``run_id``, ``seed``, ``name``, ``step``,
    ``value`` plus the `group_cols` (exact column names, or config paths found as
    ``config.<path>``). One line per group (all rows form one group when `group_cols` is
    empty); at each step the band is mean ± std (`band="std"`), ± standard error
    ("sem"), the Student-t confidence interval ("ci", level `confidence`), or nothing
    (None/"none"). A run that logged a step twice counts with its last value.
    """
    if not isinstance(curves_df, pd.DataFrame) or len(curves_df) == 0:
        raise AnalysisError("curves_df must be a non-empty DataFrame of logged values")
    missing = [c for c in ("run_id", "name", "step", "value") if c not in curves_df.columns]
    if missing:
        raise AnalysisError(f"curves_df lacks the column(s) {missing}; it needs run_id, seed, "
                            f"name, step, value and the group columns")
    band = "none" if band is None else band
    if band not in BANDS:
        raise AnalysisError(f"unknown band {band!r}; valid choices: {', '.join(map(repr, BANDS))}")
    names = pd.unique(curves_df["name"])
    if name not in set(names):
        raise AnalysisError(f"no logged metric named {name!r}; valid choices: "
                            f"{', '.join(map(repr, sorted(map(str, names))))}")
    if isinstance(group_cols, str):
        group_cols = [group_cols]
    cols = [_curve_column(curves_df, c) for c in (group_cols or [])]

    data = curves_df[curves_df["name"] == name]
    data = data.drop_duplicates(["run_id", "step"], keep="last")
    if cols:
        stacked = np.column_stack([_factorize(data[c])[0] for c in cols])
        _, first, inverse = np.unique(stacked, axis=0, return_index=True, return_inverse=True)
        order = np.argsort(first, kind="stable")
        new_id = np.empty_like(order)
        new_id[order] = np.arange(len(order))
        code = new_id[np.asarray(inverse).reshape(-1)]
        first = first[order]
    else:
        code, first = np.zeros(len(data), dtype=np.int64), np.zeros(1, dtype=np.int64)
    frame = pd.DataFrame({"group": code, "step": pd.to_numeric(data["step"]).to_numpy(),
                          "value": pd.to_numeric(data["value"]).to_numpy(dtype=float)})
    agg = frame.groupby(["group", "step"], sort=True)["value"].agg(["mean", "std", "count"])

    if cols:
        labels = [config_label((c.removeprefix(CONFIG_PREFIX), data.iloc[f][c]) for c in cols)
                  for f in first]
    else:
        labels = [name]
    shown = [wrap_label(label, _LEGEND_WRAP) for label in labels]
    fig, ax = _axes(ax, figsize or (_legend_figsize(shown) if cols else None))
    handles = []
    for g, color in zip(range(len(first)), colors(len(first))):
        part = agg.loc[g]
        steps = part.index.to_numpy()
        mean, std, n = (part[c].to_numpy(dtype=float) for c in ("mean", "std", "count"))
        # A series of one step is a point: give it a marker or it would not show.
        (line,) = ax.plot(steps, mean, label=labels[g], linewidth=1.6, color=color,
                          linestyle=linestyle(g), marker="o" if len(steps) < 2 else None)
        handles.append(line)
        if band != "none":
            with np.errstate(divide="ignore", invalid="ignore"):
                if band == "std":
                    half = std
                else:
                    half = std / np.sqrt(n)
                    if band == "ci":
                        half = half * np.where(
                            n >= 2, stats.t.ppf(0.5 + confidence / 2, np.maximum(n - 1, 1)),
                            np.nan)
            ax.fill_between(steps, mean - half, mean + half, color=line.get_color(),
                            alpha=0.2, linewidth=0)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(name)
    spread = {"std": "± std", "sem": "± s.e.m.", "ci": f"{confidence:.0%} CI", "none": ""}
    default_title = f"{name}: mean over seeds" + (f" ({spread[band]})" if spread[band] else "")
    ax.set_title(title if title is not None else default_title)
    if cols:
        _legend(ax, handles, shown)
    ax.grid(alpha=0.3)
    return _finish(fig, path, dpi)


def _numeric_param(data: pd.DataFrame, col: str) -> np.ndarray | None:
    """The column as floats, or None if any non-missing value is not a number."""
    series = data[col]
    if pd.api.types.is_bool_dtype(series) or pd.api.types.is_numeric_dtype(series):
        return series.to_numpy(dtype=float, na_value=np.nan)
    if series.dtype != object:
        return None
    present = series[series.notna()]
    if not all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
               for v in present.head(1000)):
        return None
    converted = pd.to_numeric(series, errors="coerce")
    if converted.notna().sum() != len(present):
        return None
    return converted.to_numpy(dtype=float, na_value=np.nan)


def plot_param_vs_metric(df: pd.DataFrame, param: str, metric: str, *, hue: str | None = None,
                         logx: bool = False,
                         statuses: Sequence[str] | str | None = ("COMPLETED",),
                         ax: Axes | None = None, path: str | Path | None = None,
                         title: str | None = None, figsize: tuple[float, float] | None = None,
                         dpi: int = 150) -> Figure:
    """A numeric hyper-parameter (dotted config path) against `metric`.

    Every run is a faint point; the group means (mean ± std of the runs at each value of
    `param`, separately for each value of the optional `hue` config path) are joined by a
    line. Runs whose config has no value for `param` (e.g. another model class) are left
    out. `logx` puts the parameter on a log axis (all its values must then be > 0).
    Raises AnalysisError if `param` is missing or not numeric.
    """
    col = resolve_config(df, param, "param")
    mcol = resolve_metric(df, metric)
    hue_col = resolve_config(df, hue, "hue config path") if hue is not None else None
    groups = group_runs(df, [], statuses)
    data = groups.data
    x = _numeric_param(data, col)
    if x is None:
        numeric = [p for p in config_paths(df) if _numeric_param(df, CONFIG_PREFIX + p) is not None]
        sample = data[col].dropna()
        example = f" (values like {sample.iloc[0]!r})" if len(sample) else ""
        raise AnalysisError(
            f"param {param!r} is not numeric{example}; numeric config paths: "
            f"{', '.join(map(repr, numeric)) or '(none)'}")
    y = metric_values(data, mcol)
    keep = ~np.isnan(x) & ~np.isnan(y)
    if not keep.any():
        raise AnalysisError(f"no run has both a value for {col!r} and for {mcol!r}")
    if logx and (x[keep] <= 0).any():
        raise AnalysisError(f"logx needs {param!r} > 0, but it has values <= 0")
    hue_codes = (_factorize(data[hue_col])[0] if hue_col is not None
                 else np.zeros(len(data), dtype=np.int64))
    frame = pd.DataFrame({"hue": hue_codes[keep], "x": x[keep], "y": y[keep]})
    hue_values = data[hue_col].to_numpy()[keep] if hue_col is not None else None

    parts = list(frame.groupby("hue", sort=True))
    hue_name = hue_col.removeprefix(CONFIG_PREFIX) if hue_col is not None else None
    labels, shown = [], []
    for h, _ in parts:
        if hue_col is None or hue_values is None:
            labels.append("mean ± std")
            shown.append("mean ± std")
            continue
        value = hue_values[np.flatnonzero(frame["hue"].to_numpy() == h)[0]]
        labels.append(f"no {hue_name}" if is_not_set(value)
                      else f"{hue_name}={format_value(value)}")
        shown.append(_value_text(value))
    fig, ax = _axes(ax, figsize or _legend_figsize(shown, hue_name or ""))
    handles = []
    for i, ((_, part), label, color) in enumerate(zip(parts, labels, colors(len(parts)))):
        stats_ = part.groupby("x", sort=True)["y"].agg(["mean", "std"])
        (line,) = ax.plot(stats_.index, stats_["mean"], marker="o", linewidth=1.6, label=label,
                          color=color, linestyle=linestyle(i))
        handles.append(line)
        ax.errorbar(stats_.index, stats_["mean"], yerr=stats_["std"].fillna(0.0), fmt="none",
                    ecolor=line.get_color(), capsize=3, linewidth=1)
        ax.scatter(part["x"], part["y"], s=12, alpha=0.3, color=line.get_color(),
                   edgecolors="none", zorder=1)
    if logx:
        ax.set_xscale("log")
    pname = col.removeprefix(CONFIG_PREFIX)
    mname = mcol.removeprefix("metrics.")
    ax.set_xlabel(pname)
    ax.set_ylabel(mname)
    ax.set_title(title if title is not None else f"{mname} vs {pname} (points: runs)")
    _legend(ax, handles, shown, hue_name)
    ax.grid(alpha=0.3)
    return _finish(fig, path, dpi)
