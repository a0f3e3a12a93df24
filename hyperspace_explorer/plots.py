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
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from scipy import stats

from .analysis import (
    CONFIG_PREFIX,
    DIRECTIONS,
    _factorize,
    config_label,
    config_paths,
    format_value,
    group_runs,
    metric_values,
    resolve_config,
    resolve_metric,
)
from .errors import AnalysisError

__all__ = ["plot_metric_by_config", "plot_curves", "plot_param_vs_metric", "SAVE_FORMATS"]

SAVE_FORMATS = (".png", ".svg", ".pdf")
BANDS = ("std", "sem", "ci", "none")


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
        try:
            fig = ax.get_figure(root=True)  # matplotlib >= 3.10 (subfigures)
        except TypeError:
            fig = ax.figure
        return fig, ax  # type: ignore[return-value]
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


def _check_direction(direction: str | None) -> None:
    if direction is not None and direction not in DIRECTIONS:
        raise AnalysisError(f"unknown direction {direction!r}; valid choices: "
                            f"{', '.join(map(repr, DIRECTIONS))} (or None)")


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
    paths in `by`) and labelled by the config values that vary between them. With a
    `direction` the groups are ordered best mean first, otherwise in order of first
    appearance. `seed` fixes the jitter so figures are reproducible.
    """
    _check_direction(direction)
    col = resolve_metric(df, metric)
    groups = group_runs(df, by, statuses)
    values = metric_values(groups.data, col)
    samples = _split(values, groups.codes, groups.count)
    labels = groups.labels(sep="\n" if groups.count <= 8 else ", ")
    order = list(range(groups.count))
    if direction is not None:
        means = np.array([s.mean() if s.size else np.nan for s in samples])
        key = -means if direction == "maximize" else means
        order = list(np.lexsort((np.arange(len(key)), np.nan_to_num(key, nan=np.inf))))
    samples = [samples[i] for i in order]
    labels = [labels[i] for i in order]
    if not any(s.size for s in samples):
        raise AnalysisError(f"no run has a value for {col!r}; nothing to plot")

    fig, ax = _axes(ax, figsize or (max(6.0, 0.6 * len(samples) + 2), 5.0))
    positions = np.arange(1, len(samples) + 1)
    ax.boxplot([s if s.size else [np.nan] for s in samples], positions=positions,
               widths=0.6, showfliers=False, medianprops={"color": "black"})
    ax.set_xticks(positions, labels)
    rng = np.random.default_rng(seed)
    for pos, s in zip(positions, samples):
        ax.scatter(pos + rng.uniform(-jitter, jitter, s.size), s, s=14, alpha=0.6, zorder=3,
                   color="tab:blue", edgecolors="none")
    if len(samples) > 8 or max(len(part) for label in labels for part in label.split("\n")) > 28:
        ax.tick_params(axis="x", labelrotation=90)
    name = col[len("metrics."):]
    arrow = {"maximize": " (higher is better)", "minimize": " (lower is better)"}
    ax.set_ylabel(name + (arrow[direction] if direction else ""))
    ax.set_title(title if title is not None else f"{name} per configuration across seeds")
    ax.grid(axis="y", alpha=0.3)
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

    fig, ax = _axes(ax, figsize)
    for g in range(len(first)):
        part = agg.loc[g]
        steps = part.index.to_numpy()
        mean, std, n = (part[c].to_numpy(dtype=float) for c in ("mean", "std", "count"))
        if cols:
            row = data.iloc[first[g]]
            label = config_label((c.removeprefix(CONFIG_PREFIX), row[c]) for c in cols)
        else:
            label = name
        # A series of one step is a point: give it a marker or it would not show.
        (line,) = ax.plot(steps, mean, label=label, linewidth=1.6,
                          marker="o" if len(steps) < 2 else None)
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
        ax.legend(fontsize="small")
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

    fig, ax = _axes(ax, figsize)
    for h, part in frame.groupby("hue", sort=True):
        label = (f"{hue_col.removeprefix(CONFIG_PREFIX)}="
                 f"{format_value(hue_values[np.flatnonzero(frame['hue'].to_numpy() == h)[0]])}"
                 if hue_col is not None else "mean ± std")
        stats_ = part.groupby("x", sort=True)["y"].agg(["mean", "std"])
        (line,) = ax.plot(stats_.index, stats_["mean"], marker="o", linewidth=1.6, label=label)
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
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    return _finish(fig, path, dpi)
