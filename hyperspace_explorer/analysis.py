"""Summaries of a results DataFrame: statistics over seeds, significance tests, the best run.

Everything here works on the frame that `results(...)` returns (one row per run; columns
`run_id`, `status`, `seed`, `config.<dotted.path>`, `metrics.<name>`, ...). Nothing here
touches the database.

The summary table
-----------------
`summarize` groups runs that differ only by their seed and returns one row per group,
best first, with flat, stable column names (``<m>`` is a metric name without the
``metrics.`` prefix, e.g. ``accuracy``):

====================  ==================================================================
column                meaning
====================  ==================================================================
``rank``              1 = best group by the main metric's mean (ties share a rank)
config columns        only the config values that vary between groups, named by their
                      dotted path without ``config.`` (``model.C``); with ``by=`` the
                      requested paths, always. A parameter the group's configuration
                      does not have (e.g. ``model.C`` of a model class without C) is
                      NaN; a parameter set to None (``max_depth=None``) is None. The
                      two form different groups and print differently ("-" / "None").
``n``                 number of runs in the group
``<m>_mean``          mean over the group's runs, for every metric column
``<m>_std``           sample standard deviation (ddof=1); NaN when n < 2
``<m>_sem``           standard error of the mean, std / sqrt(n)
``<m>_ci_low``        lower end of the Student-t confidence interval (95 % by default)
``<m>_ci_high``       upper end; both NaN when n < 2
``p_welch``           Welch's t-test (two-sided) of this group vs. the best group
``p_welch_holm``      ``p_welch`` after Holm's correction over all comparisons
``p_mwu``             Mann-Whitney U test (two-sided) of this group vs. the best group
``p_mwu_holm``        ``p_mwu`` after Holm's correction
``not_worse``         True for the best group and for groups with ``p_welch_holm >= alpha``
                      (not significantly worse than the best), False for groups that are,
                      <NA> (nullable boolean) where the comparison is impossible
====================  ==================================================================

Missing metric values (NaN) are skipped: means, std, SEM and intervals of a metric use
the runs that have a value for it, and the tests use the runs that have a value for the
main metric. The returned frame's ``attrs`` record ``metric``, ``direction``, ``alpha``,
``confidence``, ``metrics`` (all metric names), ``config_columns`` (the config column
names shown) and ``group_by`` (the full ``config.*`` columns that formed the groups); the
exporters in `hyperspace_explorer.export` use them.
"""
from __future__ import annotations

import difflib
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np
import pandas as pd
from scipy import stats

from .errors import AnalysisError

__all__ = ["summarize", "best_run", "holm", "runs_with_status", "format_value", "DIRECTIONS",
           "STAT_SUFFIXES", "TEST_COLUMNS", "DEFAULT_STATUSES"]

DIRECTIONS = ("maximize", "minimize")
STAT_SUFFIXES = ("mean", "std", "sem", "ci_low", "ci_high")
TEST_COLUMNS = ("p_welch", "p_welch_holm", "p_mwu", "p_mwu_holm", "not_worse")
CONFIG_PREFIX = "config."
METRIC_PREFIX = "metrics."
# `config.seed` (Sacred puts the run's seed into its config) never separates groups
# unless it is asked for explicitly with `by=`.
_SEED_COLUMN = "config.seed"
# The runs that summaries, plots and curves use unless told otherwise.
DEFAULT_STATUSES = ("COMPLETED",)
# How a config value that the configuration does not have (NaN in the frame) prints.
NOT_SET = "-"


# --------------------------------------------------------------------------- helpers

def _choices(names: Iterable[str], limit: int = 40) -> str:
    names = list(names)
    if not names:
        return "(none)"
    shown = ", ".join(repr(n) for n in names[:limit])
    if len(names) > limit:
        shown += f", ... ({len(names) - limit} more)"
    return shown


def _unknown(kind: str, given: str, valid: Sequence[str]) -> AnalysisError:
    close = difflib.get_close_matches(given, valid, n=3, cutoff=0.6)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return AnalysisError(f"unknown {kind} {given!r}.{hint} Valid choices: {_choices(valid)}")


def _check_frame(df: object) -> pd.DataFrame:
    if not isinstance(df, pd.DataFrame):
        raise AnalysisError(
            f"expected the results DataFrame (one row per run), got {type(df).__name__}")
    if len(df) == 0:
        raise AnalysisError("the results frame is empty: there are no runs to analyse")
    return df


def check_direction(direction: object, what: str = "") -> str:
    """`direction` if it is "maximize" or "minimize", else an AnalysisError naming it
    (and `what` it is the direction of); the one check for every analysis module."""
    if not isinstance(direction, str) or direction not in DIRECTIONS:
        raise AnalysisError(f"unknown direction {direction!r}{what}; valid choices: "
                            f"{_choices(DIRECTIONS)}")
    return direction


def metric_names(df: pd.DataFrame) -> list[str]:
    """The metric names (without ``metrics.``) that `df` has columns for."""
    return [c[len(METRIC_PREFIX):] for c in df.columns
            if isinstance(c, str) and c.startswith(METRIC_PREFIX)]


def config_paths(df: pd.DataFrame) -> list[str]:
    """The config paths (without ``config.``) that `df` has columns for."""
    return [c[len(CONFIG_PREFIX):] for c in df.columns
            if isinstance(c, str) and c.startswith(CONFIG_PREFIX)]


def resolve_metric(df: pd.DataFrame, metric: object) -> str:
    """The column of `metric` ("accuracy" or "metrics.accuracy"); AnalysisError if none."""
    valid = metric_names(df)
    if not isinstance(metric, str) or not metric:
        raise AnalysisError(f"metric must be a metric name; valid choices: {_choices(valid)}")
    if not valid:
        raise AnalysisError(
            "the results frame has no 'metrics.<name>' columns, so there is nothing to "
            f"summarise (columns: {_choices(map(str, df.columns))})")
    name = metric[len(METRIC_PREFIX):] if metric.startswith(METRIC_PREFIX) else metric
    if name not in valid:
        raise _unknown("metric", metric, valid)
    return METRIC_PREFIX + name


def resolve_config(df: pd.DataFrame, path: object, what: str = "config path") -> str:
    """The column of a config path ("model.C" or "config.model.C"); AnalysisError if none."""
    valid = config_paths(df)
    if not isinstance(path, str) or not path:
        raise AnalysisError(f"{what} must be a dotted config path like 'model.C'; "
                            f"valid choices: {_choices(valid)}")
    name = path[len(CONFIG_PREFIX):] if path.startswith(CONFIG_PREFIX) else path
    if name not in valid:
        raise _unknown(what, path, valid)
    return CONFIG_PREFIX + name


def runs_with_status(df: pd.DataFrame,
                     statuses: Sequence[str] | str | None = DEFAULT_STATUSES) -> pd.DataFrame:
    """The rows of `df` whose status is in `statuses` (every row for None; COMPLETED by
    default). The one status filter of summaries, plots and curves (may be empty)."""
    if statuses is None:
        return df
    if isinstance(statuses, str):
        statuses = (statuses,)
    statuses = tuple(statuses)
    if "status" not in df.columns:
        raise AnalysisError(
            "the results frame has no 'status' column; pass statuses=None to use all rows")
    return df[df["status"].isin(statuses)]


def _filter_status(df: pd.DataFrame, statuses: object) -> pd.DataFrame:
    kept = runs_with_status(df, statuses)  # type: ignore[arg-type]
    if len(kept) == 0:
        statuses = _status_list(statuses)
        counts = df["status"].value_counts(dropna=False)
        present = ", ".join(f"{s}: {c}" for s, c in counts.items())
        raise AnalysisError(
            f"no runs with status in {list(statuses)} (the frame has {present})")
    return kept


def _status_list(statuses: object) -> list[str]:
    return [statuses] if isinstance(statuses, str) else list(statuses)  # type: ignore[call-overload]


def _hashable(value: object) -> object:
    if isinstance(value, (list, tuple)):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, Mapping):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    if isinstance(value, (set, frozenset)):
        return frozenset(_hashable(v) for v in value)
    return value


class _NoneKey:
    """Stands for an explicit None while factorizing (pandas would merge it with NaN)."""

    def __repr__(self) -> str:
        return "None"


_NONE_KEY = _NoneKey()


def _group_key(value: object) -> object:
    return _NONE_KEY if value is None else _hashable(value)


def _factorize(column: pd.Series) -> tuple[np.ndarray, int]:
    """Integer codes and the number of distinct values. A missing value (NaN: the
    configuration has no such parameter) and an explicit None are values of their own,
    distinct from each other; lists compare as tuples."""
    if column.dtype == object:
        # Rows of one config share its value objects: each is made hashable once (the
        # column holds them all, so no id is reused meanwhile).
        keys: dict[int, object] = {}

        def key(value: object) -> object:
            if id(value) not in keys:
                keys[id(value)] = _group_key(value)
            return keys[id(value)]

        column = column.map(key)
    codes, uniques = pd.factorize(column, use_na_sentinel=False)
    return np.asarray(codes, dtype=np.int64), len(uniques)


@dataclass
class Groups:
    """Runs grouped by config (all but the seed). Internal, shared with `plots`."""

    data: pd.DataFrame          # the runs kept (status filter applied)
    key_columns: list[str]      # full `config.*` columns that form the groups
    shown_columns: list[str]    # full `config.*` columns worth showing (varying / `by`)
    codes: np.ndarray           # group id per row of `data`, 0..G-1 by first appearance
    first_rows: np.ndarray      # position in `data` of each group's first run

    @property
    def count(self) -> int:
        return len(self.first_rows)

    def keys(self) -> pd.DataFrame:
        """One row per group: the shown config values, columns named by their short path."""
        keys = self.data[self.shown_columns].iloc[self.first_rows].reset_index(drop=True)
        return keys.rename(columns=short_config_names(self.shown_columns))

    def labels(self, sep: str = ", ") -> list[str]:
        """Readable labels "model.C=1, kernel=rbf" (or "all runs" with nothing varying)."""
        keys = self.keys()
        if keys.shape[1] == 0:
            return ["all runs"] * self.count
        columns = [keys[col].tolist() for col in keys.columns]
        return [config_label(zip(keys.columns, values), sep) for values in zip(*columns)]


def is_not_set(value: object) -> bool:
    """True for NaN/NA: the configuration does not have this parameter (not for None)."""
    if value is None or isinstance(value, (tuple, list, Mapping, str)):
        return False
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def config_label(pairs: Iterable[tuple[str, object]], sep: str = ", ") -> str:
    """ "model.C=1, kernel=rbf, max_depth=None": parameters a configuration does not
    have (another model family's) are left out rather than shown as "-"; a parameter
    set to None shows as "=None"."""
    shown = [f"{name}={format_value(value)}" for name, value in pairs if not is_not_set(value)]
    return sep.join(shown) or "defaults"


def short_config_names(columns: Sequence[str], reserved: Iterable[str] = ()) -> dict[str, str]:
    """Map `config.a.b` to `a.b`, keeping the full name where the short one is taken."""
    reserved = set(reserved)
    out = {}
    for col in columns:
        short = col[len(CONFIG_PREFIX):] if col.startswith(CONFIG_PREFIX) else col
        out[col] = col if (short in reserved or not short) else short
    return out


def format_value(value: object) -> str:
    """A config value as text: floats with `g`, ints as ints, an explicit None as "None",
    a parameter the configuration does not have (NaN/NA) as "-", tuples as written."""
    if value is None:
        return "None"
    if is_not_set(value):
        return NOT_SET
    if isinstance(value, (float, np.floating)):
        return f"{float(value):g}"
    if isinstance(value, np.generic):
        value = value.item()
    return str(value)


def group_runs(df: pd.DataFrame, by: object = None, statuses: object = DEFAULT_STATUSES) -> Groups:
    """Filter by status and group the runs that differ only by seed (see `summarize`)."""
    df = _check_frame(df)
    if by is not None:
        if isinstance(by, str):
            by = [by]
        try:
            by = list(cast(Iterable[str], by))
        except TypeError:
            raise AnalysisError(
                f"by must be a list of config paths like ['model.C'], got {by!r}") from None
        key_columns = list(dict.fromkeys(resolve_config(df, p, "'by' config path") for p in by))
    else:
        key_columns = [c for c in df.columns if isinstance(c, str)
                       and c.startswith(CONFIG_PREFIX) and c != _SEED_COLUMN]
    data = _filter_status(df, statuses)
    n = len(data)
    if key_columns:
        columns = [_factorize(data[c]) for c in key_columns]
        stacked = np.column_stack([codes for codes, _ in columns])
        _, first, inverse = np.unique(stacked, axis=0, return_index=True, return_inverse=True)
        inverse = np.asarray(inverse).reshape(-1)
        order = np.argsort(first, kind="stable")        # groups by first appearance
        new_id = np.empty_like(order)
        new_id[order] = np.arange(len(order))
        codes = new_id[inverse]
        first_rows = first[order]
        varying = [c for c, (_, k) in zip(key_columns, columns) if k > 1]
    else:
        codes = np.zeros(n, dtype=np.int64)
        first_rows = np.zeros(1, dtype=np.int64)
        varying = []
    shown = key_columns if by is not None else varying
    return Groups(data=data, key_columns=key_columns, shown_columns=shown,
                  codes=codes, first_rows=first_rows)


def metric_values(data: pd.DataFrame, column: str) -> np.ndarray:
    """A metric column as floats; AnalysisError if it holds non-numeric values."""
    try:
        return pd.to_numeric(data[column], errors="raise").to_numpy(dtype=float, na_value=np.nan)
    except (TypeError, ValueError) as exc:
        raise AnalysisError(f"column {column!r} holds non-numeric values ({exc})") from None


def holm(pvalues: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm's step-down adjustment of a family of p-values (NaN stays NaN, not counted).

    Sorted ascending, p_(i) becomes max_{j<=i} min(1, (m - j + 1) p_(j)) where m is the
    number of non-NaN p-values; the result is in the input's order.
    """
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = ~np.isnan(p)
    m = int(ok.sum())
    if m:
        order = np.argsort(p[ok], kind="stable")
        scaled = (m - np.arange(m)) * p[ok][order]
        adjusted = np.minimum(np.maximum.accumulate(scaled), 1.0)
        valid = np.empty(m)
        valid[order] = adjusted
        out[ok] = valid
    return out


def _welch(mean_b: float, var_b: float, n_b: int,
           mean: np.ndarray, var: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Two-sided Welch p-values of every group vs. the best, from summary statistics.

    Same formula as ``scipy.stats.ttest_ind(a, b, equal_var=False)`` (computed through
    ``ttest_ind_from_stats`` so all groups are done at once).
    """
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        p = stats.ttest_ind_from_stats(mean_b, np.sqrt(var_b), n_b, mean, np.sqrt(var), n,
                                       equal_var=False).pvalue
    p = np.asarray(p, dtype=float)
    # Both samples constant: t is 0/0 (same mean) or +-inf (different means).
    constant = (var_b == 0) & (var == 0)
    p = np.where(constant, np.where(mean == mean_b, 1.0, 0.0), p)
    return p


def _mann_whitney(best: np.ndarray, samples: np.ndarray) -> np.ndarray:
    """Two-sided Mann-Whitney p-values of `best` vs. each row of `samples` (equal lengths).

    The method is chosen per row exactly as ``scipy.stats.mannwhitneyu(method="auto")``
    would for that pair: exact unless both samples have more than 8 values or there are
    ties, asymptotic (with continuity correction) otherwise.
    """
    n_b, k = len(best), samples.shape[1]
    both = np.sort(np.concatenate([np.broadcast_to(best, (len(samples), n_b)), samples], 1), 1)
    ties = (np.diff(both, axis=1) == 0).any(axis=1)
    asymptotic = ties | (n_b > 8 and k > 8)
    p = np.full(len(samples), np.nan)
    for flag, method in ((False, "exact"), (True, "asymptotic")):
        rows = asymptotic == flag
        if rows.any():
            p[rows] = stats.mannwhitneyu(best[None, :], samples[rows], alternative="two-sided",
                                         method=method, axis=1).pvalue
    return p


# --------------------------------------------------------------------------- public API

def summarize(df: pd.DataFrame, metric: str, direction: str = "maximize",
              by: list[str] | None = None, alpha: float = 0.05,
              statuses: Sequence[str] | str | None = ("COMPLETED",),
              *, confidence: float = 0.95) -> pd.DataFrame:
    """Statistics over seeds per configuration, ranked, with tests against the best.

    Args:
        df: the results frame (one row per run).
        metric: the main metric, "accuracy" or "metrics.accuracy"; it ranks the groups
            and is the one tested.
        direction: "maximize" or "minimize" (which way the main metric is better).
        by: config paths ("model.C" or "config.model.C") to group by; None groups by
            every ``config.*`` column except ``config.seed``, i.e. runs that differ only
            by seed. An empty list puts all runs in one group.
        alpha: significance level for ``not_worse``.
        statuses: the run statuses to keep (None keeps every row).
        confidence: level of the Student-t confidence intervals.

    Returns:
        One row per group, best first, with the columns described in the module
        docstring (``rank``, varying config columns, ``n``, ``<m>_mean``, ``<m>_std``,
        ``<m>_sem``, ``<m>_ci_low``, ``<m>_ci_high`` for every metric, ``p_welch``,
        ``p_welch_holm``, ``p_mwu``, ``p_mwu_holm``, ``not_worse``).

    Significance: the best group is compared with every other group by Welch's t-test
    and the two-sided Mann-Whitney U test on the main metric; each family of p-values is
    Holm-corrected over the comparisons that could be made. The best group's own
    p-values are NaN (it is not compared with itself). A group with fewer than 2 values
    of the main metric (or any group, if the best has fewer than 2) cannot be tested:
    its p-values are NaN, it is left out of the Holm family, and ``not_worse`` is <NA>.
    If both groups' values are constant, Welch's t is undefined; ``p_welch`` is then 1
    for equal means and 0 otherwise.

    Raises:
        AnalysisError: empty or non-DataFrame input, unknown metric or ``by`` path,
            bad direction, no runs with the given statuses (or none with a value for
            the main metric), non-numeric metric values, or alpha/confidence outside
            (0, 1).
    """
    df = _check_frame(df)
    direction = check_direction(direction)
    main_col = resolve_metric(df, metric)
    for name, value in (("alpha", alpha), ("confidence", confidence)):
        if not isinstance(value, (int, float)) or not 0 < value < 1:
            raise AnalysisError(f"{name} must be a number between 0 and 1, got {value!r}")
    groups = group_runs(df, by, statuses)
    data, codes, g_count = groups.data, groups.codes, groups.count

    metric_cols = [c for c in df.columns if isinstance(c, str) and c.startswith(METRIC_PREFIX)]
    names = [c[len(METRIC_PREFIX):] for c in metric_cols]
    values = np.column_stack([metric_values(data, c) for c in metric_cols])
    if np.isnan(values[:, metric_cols.index(main_col)]).all():
        wanted = "any status" if statuses is None else f"status in {_status_list(statuses)}"
        raise AnalysisError(f"no run with {wanted} has a value for {main_col!r}")
    grouped = pd.DataFrame(values, columns=names).groupby(codes, sort=True)
    count = grouped.count().to_numpy(dtype=float)
    mean = grouped.mean().to_numpy(dtype=float)
    std = grouped.std(ddof=1).to_numpy(dtype=float)
    sizes = np.bincount(codes, minlength=g_count)
    with np.errstate(divide="ignore", invalid="ignore"):
        sem = std / np.sqrt(count)
        tcrit = np.where(count >= 2,
                         stats.t.ppf(0.5 + confidence / 2, np.maximum(count - 1, 1)), np.nan)
    half = tcrit * sem

    main = names.index(main_col[len(METRIC_PREFIX):])
    m_mean, m_var, m_n = mean[:, main], std[:, main] ** 2, count[:, main]
    key = -m_mean if direction == "maximize" else m_mean
    nan = np.isnan(key)
    order = np.lexsort((np.arange(g_count), np.where(nan, 0.0, key), nan))
    rank = pd.Series(key).rank(method="min", na_option="bottom").to_numpy(dtype=np.int64)
    best = order[0]

    # ---- tests: best group vs. every other group, on the main metric
    testable = (m_n >= 2) & (m_n[best] >= 2)
    testable[best] = False
    p_welch = np.full(g_count, np.nan)
    p_welch[testable] = _welch(m_mean[best], m_var[best], m_n[best],
                               m_mean[testable], m_var[testable], m_n[testable])
    p_mwu = np.full(g_count, np.nan)
    if testable.any():
        v = values[:, main]
        ok = ~np.isnan(v)
        v, c = v[ok], codes[ok]
        sort = np.argsort(c, kind="stable")
        v = v[sort]
        n_per = np.bincount(c, minlength=g_count)
        starts = np.concatenate([[0], np.cumsum(n_per)[:-1]])
        best_vals = v[starts[best]:starts[best] + n_per[best]]
        for k in np.unique(n_per[testable]):
            idx = np.flatnonzero(testable & (n_per == k))
            p_mwu[idx] = _mann_whitney(best_vals, v[starts[idx][:, None] + np.arange(k)])
    p_welch_holm, p_mwu_holm = holm(p_welch), holm(p_mwu)
    not_worse = pd.array(np.where(testable, p_welch_holm >= alpha, False), dtype="boolean")
    not_worse[~testable] = pd.NA
    not_worse[best] = True

    # ---- assemble, best first
    reserved = {"rank", "n", *TEST_COLUMNS,
                *(f"{nm}_{s}" for nm in names for s in STAT_SUFFIXES)}
    short = short_config_names(groups.shown_columns, reserved)
    columns: dict[str, object] = {"rank": rank[order]}
    keys = data[groups.shown_columns].iloc[groups.first_rows[order]]
    for col in groups.shown_columns:
        columns[short[col]] = keys[col].to_numpy()
    columns["n"] = sizes[order]
    for j, nm in enumerate(names):
        columns[f"{nm}_mean"] = mean[order, j]
        columns[f"{nm}_std"] = std[order, j]
        columns[f"{nm}_sem"] = sem[order, j]
        columns[f"{nm}_ci_low"] = mean[order, j] - half[order, j]
        columns[f"{nm}_ci_high"] = mean[order, j] + half[order, j]
    columns["p_welch"] = p_welch[order]
    columns["p_welch_holm"] = p_welch_holm[order]
    columns["p_mwu"] = p_mwu[order]
    columns["p_mwu_holm"] = p_mwu_holm[order]
    columns["not_worse"] = not_worse[order]
    summary = pd.DataFrame(columns)
    for col in groups.shown_columns:  # keep the config columns' dtypes
        summary[short[col]] = summary[short[col]].astype(data[col].dtype)
    summary.attrs.update(
        metric=names[main], direction=direction, alpha=float(alpha),
        confidence=float(confidence), metrics=names,
        config_columns=[short[c] for c in groups.shown_columns],
        group_by=list(groups.key_columns))
    return summary


def best_run(df: pd.DataFrame, metric: str, direction: str = "maximize",
             statuses: Sequence[str] | str | None = ("COMPLETED",)) -> pd.Series:
    """The row of the best single run (COMPLETED by default) by `metric` in `direction`.

    Runs without a value for the metric are ignored; on ties the first row wins.
    Raises AnalysisError for bad input or when no such run has a value for the metric.
    """
    df = _check_frame(df)
    direction = check_direction(direction)
    col = resolve_metric(df, metric)
    data = _filter_status(df, statuses)
    values = metric_values(data, col)
    if np.isnan(values).all():
        wanted = "any status" if statuses is None else f"status in {_status_list(statuses)}"
        raise AnalysisError(f"no run with {wanted} has a value for {col!r}")
    pos = np.nanargmax(values) if direction == "maximize" else np.nanargmin(values)
    return data.iloc[int(pos)]
