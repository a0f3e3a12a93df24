"""summarize / best_run / holm: statistics checked against numpy and scipy directly."""
from __future__ import annotations


import numpy as np
import pandas as pd
import pytest
from scipy import stats

from hyperspace_explorer.analysis import best_run, holm, summarize
from hyperspace_explorer.errors import AnalysisError, HSEError

ACC = {  # accuracy per seed for each model.C (COMPLETED runs)
    0.1: [0.70, 0.72, 0.71, 0.69, 0.73],
    1.0: [0.80, 0.82, 0.81, 0.79, 0.83],
    10.0: [0.78, 0.80, 0.84, 0.77, 0.81],
}


def make_results(groups: dict, *, extra_config: dict | None = None,
                 statuses: dict | None = None) -> pd.DataFrame:
    """A results frame: groups maps a config dict (as a tuple of items) to accuracies."""
    rows = []
    for key, accs in groups.items():
        config = dict(key)
        for seed, acc in enumerate(accs):
            rows.append({
                "run_id": f"r{len(rows)}", "sacred_id": len(rows) + 1, "task": "iris",
                "status": "COMPLETED", "seed": seed,
                "config.model.className": "SVC", "config.test_size": 0.2, "config.seed": seed,
                **{f"config.{k}": v for k, v in config.items()},
                **{f"config.{k}": v for k, v in (extra_config or {}).items()},
                "metrics.accuracy": acc, "metrics.loss": 1.0 - acc,
                "duration": 1.0, "host": "h", "code_version": None,
            })
    return pd.DataFrame(rows)


@pytest.fixture
def small() -> pd.DataFrame:
    df = make_results({(("model.C", c),): accs for c, accs in ACC.items()})
    bad = [  # never counted with the default statuses
        {**df.iloc[5].to_dict(), "run_id": "failed", "status": "FAILED",
         "metrics.accuracy": np.nan, "metrics.loss": np.nan, "seed": 7},
        {**df.iloc[0].to_dict(), "run_id": "running", "status": "RUNNING",
         "metrics.accuracy": 0.99, "metrics.loss": 0.01, "seed": 8},
    ]
    return pd.concat([df, pd.DataFrame(bad)], ignore_index=True)


def row_for(summary: pd.DataFrame, column: str, value) -> pd.Series:
    match = summary[summary[column] == value]
    assert len(match) == 1, summary
    return match.iloc[0]


def test_per_group_statistics_match_numpy_and_scipy(small):
    s = summarize(small, "accuracy", "maximize")
    assert len(s) == 3
    for c, accs in ACC.items():
        x = np.array(accs)
        row = row_for(s, "model.C", c)
        n = len(x)
        mean, std = x.mean(), x.std(ddof=1)
        sem = stats.sem(x)
        low, high = stats.t.interval(0.95, n - 1, loc=mean, scale=sem)
        assert row["n"] == n
        assert row["accuracy_mean"] == pytest.approx(mean, abs=1e-12)
        assert row["accuracy_std"] == pytest.approx(std, abs=1e-12)
        assert row["accuracy_sem"] == pytest.approx(sem, abs=1e-12)
        assert row["accuracy_ci_low"] == pytest.approx(low, abs=1e-12)
        assert row["accuracy_ci_high"] == pytest.approx(high, abs=1e-12)
        # every metric column is summarised, not only the main one
        assert row["loss_mean"] == pytest.approx((1 - x).mean(), abs=1e-12)
        assert row["loss_std"] == pytest.approx((1 - x).std(ddof=1), abs=1e-12)
        assert row["loss_ci_high"] - row["loss_mean"] == pytest.approx(high - mean, abs=1e-12)


def test_confidence_level_changes_interval(small):
    s = summarize(small, "accuracy", confidence=0.99)
    x = np.array(ACC[1.0])
    low, high = stats.t.interval(0.99, len(x) - 1, loc=x.mean(), scale=stats.sem(x))
    row = row_for(s, "model.C", 1.0)
    assert (row["accuracy_ci_low"], row["accuracy_ci_high"]) == pytest.approx((low, high))


def test_column_naming_and_attrs(small):
    s = summarize(small, "accuracy")
    stat = [f"{m}_{k}" for m in ("accuracy", "loss")
            for k in ("mean", "std", "sem", "ci_low", "ci_high")]
    assert list(s.columns) == ["rank", "model.C", "n", *stat,
                               "p_welch", "p_welch_holm", "p_mwu", "p_mwu_holm", "not_worse"]
    assert s.attrs["metric"] == "accuracy" and s.attrs["direction"] == "maximize"
    assert s.attrs["metrics"] == ["accuracy", "loss"]
    assert s.attrs["config_columns"] == ["model.C"]
    assert "config.seed" not in s.attrs["group_by"]


def test_only_requested_statuses_are_used(small):
    s = summarize(small, "accuracy")
    assert s["n"].tolist() == [5, 5, 5]
    both = summarize(small, "accuracy", statuses=("COMPLETED", "FAILED"))
    row = row_for(both, "model.C", 1.0)
    assert row["n"] == 6  # the FAILED run counts as a run, but has no accuracy
    assert row["accuracy_mean"] == pytest.approx(np.mean(ACC[1.0]))
    assert row["accuracy_std"] == pytest.approx(np.std(ACC[1.0], ddof=1))
    everything = summarize(small, "accuracy", statuses=None)
    assert everything["n"].sum() == len(small)


def test_ranking_maximize_and_minimize(small):
    s = summarize(small, "accuracy", "maximize")
    assert s["model.C"].tolist() == [1.0, 10.0, 0.1]  # means 0.81, 0.80, 0.71
    assert s["rank"].tolist() == [1, 2, 3]
    s = summarize(small, "accuracy", "minimize")
    assert s["model.C"].tolist() == [0.1, 10.0, 1.0]
    assert s["rank"].tolist() == [1, 2, 3]
    s = summarize(small, "loss", "minimize")  # loss = 1 - accuracy: same order as max acc
    assert s["model.C"].tolist() == [1.0, 10.0, 0.1]
    assert s.attrs["metric"] == "loss"


def test_metric_name_with_prefix_is_accepted(small):
    a = summarize(small, "accuracy")
    b = summarize(small, "metrics.accuracy")
    pd.testing.assert_frame_equal(a, b)


def test_ties_share_rank():
    df = make_results({(("model.C", 1),): [0.5, 0.7], (("model.C", 2),): [0.6, 0.6],
                       (("model.C", 3),): [0.1, 0.2]})
    s = summarize(df, "accuracy")
    assert s["rank"].tolist() == [1, 1, 3]
    assert s["model.C"].tolist() == [1, 2, 3]  # ties keep the order of first appearance


def test_constant_config_columns_are_dropped(small):
    s = summarize(small, "accuracy")
    for constant in ("model.className", "test_size", "seed", "config.model.className"):
        assert constant not in s.columns
    assert "model.C" in s.columns and "config.model.C" not in s.columns


def test_by_groups_on_named_paths_only():
    groups = {}
    for c in (0.1, 1.0):
        for kernel, shift in (("rbf", 0.0), ("linear", 0.05)):
            groups[(("model.C", c), ("model.kernel", kernel))] = list(
                np.array(ACC[c]) + shift)
    df = make_results(groups)
    full = summarize(df, "accuracy")
    assert len(full) == 4 and {"model.C", "model.kernel"} <= set(full.columns)
    a = summarize(df, "accuracy", by=["model.C"])
    b = summarize(df, "accuracy", by=["config.model.C"])
    c = summarize(df, "accuracy", by="model.C")
    pd.testing.assert_frame_equal(a, b)
    pd.testing.assert_frame_equal(a, c)
    assert "model.kernel" not in a.columns
    assert a["n"].tolist() == [10, 10]
    x = np.concatenate([ACC[1.0], np.array(ACC[1.0]) + 0.05])
    row = row_for(a, "model.C", 1.0)
    assert row["accuracy_mean"] == pytest.approx(x.mean())
    assert row["accuracy_std"] == pytest.approx(x.std(ddof=1))
    # a requested path is shown even when it does not vary
    const = summarize(df, "accuracy", by=["model.className", "model.C"])
    assert list(const.columns[1:3]) == ["model.className", "model.C"]
    # by=[] puts every run in one group
    one = summarize(df, "accuracy", by=[])
    assert len(one) == 1 and one["n"].iloc[0] == 20


def test_polymorphic_config_with_missing_values_groups_correctly():
    df = pd.concat([
        make_results({(("model.C", 1.0), ("model.kernel", "rbf")): [0.8, 0.9, 0.85]}),
        make_results({(("model.C", 1.0), ("model.kernel", "linear")): [0.6, 0.7, 0.65]}),
        make_results({(("model.C", np.nan), ("model.kernel", np.nan)): [0.5, 0.55, 0.6]},
                     extra_config={"model.className": "LogisticRegression"}),
    ], ignore_index=True)
    s = summarize(df, "accuracy")
    assert s["n"].tolist() == [3, 3, 3]
    assert s["model.kernel"].tolist()[:2] == ["rbf", "linear"]
    assert pd.isna(s["model.kernel"].iloc[2]) and pd.isna(s["model.C"].iloc[2])
    assert s["model.className"].tolist() == ["SVC", "SVC", "LogisticRegression"]
    assert s["accuracy_mean"].iloc[2] == pytest.approx(0.55)


def test_explicit_none_and_absent_parameter_are_different_groups_and_labels():
    """max_depth=None (a Forest's setting) is not the same as no max_depth at all (a
    Logistic model): two groups, shown as "None" and "-"."""
    from hyperspace_explorer.analysis import config_label, format_value, group_runs

    forest = [{"model.className": "Forest", "model.max_depth": depth} for depth in (None, 8)]
    rows = []
    for config in [*forest, {"model.className": "Logistic"}]:  # no max_depth key
        for seed in range(3):
            rows.append({"run_id": f"r{len(rows)}", "status": "COMPLETED", "seed": seed,
                         **{f"config.{k}": v for k, v in config.items()},
                         "metrics.accuracy": 0.5 + 0.1 * len(rows) % 3 + 0.01 * seed})
    df = pd.DataFrame(rows)
    # what results_frame builds: None as given, NaN where the config has no such key
    df["config.model.max_depth"] = pd.Series([None] * 3 + [8] * 3 + [np.nan] * 3, dtype=object)
    s = summarize(df, "accuracy")
    assert s["n"].tolist() == [3, 3, 3]
    shown = sorted(format_value(v) for v in s["model.max_depth"])
    assert shown == ["-", "8", "None"]
    assert [v for v in s["model.max_depth"] if v is None] == [None]  # kept as None
    labels = group_runs(df).labels()
    assert labels == ["model.className=Forest, model.max_depth=None",
                      "model.className=Forest, model.max_depth=8",
                      "model.className=Logistic"]  # a parameter it lacks is left out
    assert config_label([("max_depth", None), ("C", np.nan)]) == "max_depth=None"
    assert format_value(None) == "None" and format_value(np.nan) == "-"
    assert format_value(pd.NA) == "-" and format_value(np.int64(20)) == "20"
    assert format_value(20) == "20" and format_value(0.5) == "0.5"
    assert format_value((16, None)) == "(16, None)"


def test_tuple_and_list_config_values():
    tuples = make_results({(("model.hidden", (16,)),): [0.7, 0.8],
                           (("model.hidden", (32, 16)),): [0.9, 0.95]})
    s = summarize(tuples, "accuracy")
    assert s["model.hidden"].tolist() == [(32, 16), (16,)]
    lists = tuples.copy()
    lists["config.model.hidden"] = [list(v) for v in tuples["config.model.hidden"]]
    s2 = summarize(lists, "accuracy")
    assert s2["n"].tolist() == [2, 2]
    assert s2["accuracy_mean"].tolist() == pytest.approx([0.925, 0.75])


def test_config_seed_does_not_split_groups_unless_asked(small):
    s = summarize(small, "accuracy")
    assert len(s) == 3
    per_seed = summarize(small, "accuracy", by=["model.C", "seed"])
    assert len(per_seed) == 15 and per_seed["n"].eq(1).all()


def independent_holm(p: list[float]) -> list[float]:
    """Textbook Holm, written differently from the implementation under test."""
    m = len(p)
    order = sorted(range(m), key=lambda i: p[i])
    adjusted, running = [0.0] * m, 0.0
    for k, i in enumerate(order):
        running = max(running, min(1.0, (m - k) * p[i]))
        adjusted[i] = running
    return adjusted


def test_holm_known_example():
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])
    out = holm([0.01, np.nan, 0.04])  # NaN is not part of the family
    assert out[0] == pytest.approx(0.02) and np.isnan(out[1]) and out[2] == pytest.approx(0.04)
    rng = np.random.default_rng(3)
    p = rng.uniform(0, 0.2, 12).tolist()
    assert holm(p) == pytest.approx(independent_holm(p))
    assert holm([]).size == 0


def test_pvalues_match_scipy_tests_with_holm():
    rng = np.random.default_rng(42)
    groups = {
        (("model.C", 0),): rng.normal(0.90, 0.02, 6),             # best
        (("model.C", 1),): rng.normal(0.85, 0.02, 6),             # exact MWU (small, no ties)
        (("model.C", 2),): np.round(rng.normal(0.88, 0.02, 6), 2),  # ties with rounding
        (("model.C", 3),): rng.normal(0.80, 0.05, 12),            # other size
        (("model.C", 4),): rng.normal(0.89, 0.03, 4),
        (("model.C", 5),): rng.normal(0.70, 0.05, 9),
    }
    groups[(("model.C", 2),)][0] = round(groups[(("model.C", 0),)][0], 2)
    groups[(("model.C", 0),)][0] = groups[(("model.C", 2),)][0]  # an actual tie
    df = make_results(groups)
    s = summarize(df, "accuracy", "maximize")
    best = s.iloc[0]
    means = {key[0][1]: np.mean(v) for key, v in groups.items()}
    assert best["model.C"] == max(means, key=means.get)
    assert bool(best["not_worse"])
    for col in ("p_welch", "p_welch_holm", "p_mwu", "p_mwu_holm"):
        assert np.isnan(best[col])
    x = np.array(groups[(("model.C", best["model.C"]),)])
    welch, mwu = [], []
    for _, row in s.iloc[1:].iterrows():
        y = np.array(groups[(("model.C", row["model.C"]),)])
        pw = stats.ttest_ind(x, y, equal_var=False).pvalue
        pm = stats.mannwhitneyu(x, y, alternative="two-sided").pvalue
        assert row["p_welch"] == pytest.approx(pw, rel=1e-9)
        assert row["p_mwu"] == pytest.approx(pm, rel=1e-9)
        welch.append(pw)
        mwu.append(pm)
    assert s["p_welch_holm"].iloc[1:].tolist() == pytest.approx(independent_holm(welch))
    assert s["p_mwu_holm"].iloc[1:].tolist() == pytest.approx(independent_holm(mwu))
    expected = [True] + [p >= 0.05 for p in independent_holm(welch)]
    assert s["not_worse"].tolist() == expected


def test_not_worse_flags_significantly_worse_groups():
    df = make_results({
        (("model.C", 1),): [0.90, 0.91, 0.92, 0.93, 0.94],
        (("model.C", 2),): [0.91, 0.90, 0.93, 0.92, 0.935],   # indistinguishable
        (("model.C", 3),): [0.50, 0.51, 0.52, 0.53, 0.54],    # clearly worse
    })
    s = summarize(df, "accuracy", alpha=0.05)
    assert s["model.C"].tolist() == [1, 2, 3]
    assert s["not_worse"].tolist() == [True, True, False]
    assert s["p_welch_holm"].iloc[2] < 1e-6
    assert s["p_welch_holm"].iloc[1] > 0.5
    # a stricter alpha cannot turn "not worse" into "worse" for large p-values
    assert summarize(df, "accuracy", alpha=1e-12)["not_worse"].tolist() == [True, True, True]


def test_single_run_groups_get_nan_statistics_and_no_test():
    df = make_results({
        (("model.C", 1),): [0.90, 0.92, 0.94],
        (("model.C", 2),): [0.95],                # n = 1: best mean, but untestable
        (("model.C", 3),): [0.60, 0.62, 0.61],
        (("model.C", 4),): [0.80, 0.82, 0.85],
    })
    s = summarize(df, "accuracy")
    single = row_for(s, "model.C", 2)
    assert single["rank"] == 1 and single["n"] == 1
    assert single["accuracy_mean"] == pytest.approx(0.95)
    for col in ("accuracy_std", "accuracy_sem", "accuracy_ci_low", "accuracy_ci_high"):
        assert np.isnan(single[col])
    # the best group has one value, so no group can be tested against it
    assert s["p_welch"].isna().all() and s["p_mwu"].isna().all()
    assert s["not_worse"].iloc[0] == True  # noqa: E712
    assert s["not_worse"].iloc[1:].isna().all()

    df2 = make_results({
        (("model.C", 1),): [0.90, 0.92, 0.94],
        (("model.C", 2),): [0.70],                # n = 1, not best: left out of Holm
        (("model.C", 3),): [0.60, 0.62, 0.61],
        (("model.C", 4),): [0.80, 0.82, 0.85],
    })
    s2 = summarize(df2, "accuracy")
    single = row_for(s2, "model.C", 2)
    assert np.isnan(single["p_welch"]) and np.isnan(single["p_welch_holm"])
    assert pd.isna(single["not_worse"])
    x = np.array([0.90, 0.92, 0.94])
    raw = [stats.ttest_ind(x, np.array(v), equal_var=False).pvalue
           for v in ([0.80, 0.82, 0.85], [0.60, 0.62, 0.61])]
    tested = s2[s2["model.C"].isin([3, 4])].sort_values("model.C", ascending=False)
    assert tested["p_welch_holm"].tolist() == pytest.approx(independent_holm(raw))
    assert s2["not_worse"].dtype == "boolean"


def test_constant_groups_have_defined_welch_p():
    df = make_results({(("model.C", 1),): [0.9, 0.9, 0.9], (("model.C", 2),): [0.9, 0.9, 0.9],
                       (("model.C", 3),): [0.5, 0.5, 0.5]})
    s = summarize(df, "accuracy")
    assert s["p_welch"].iloc[1] == 1.0 and s["p_welch"].iloc[2] == 0.0
    assert s["not_worse"].tolist() == [True, True, False]
    assert s["accuracy_ci_low"].iloc[0] == pytest.approx(0.9)


def test_bad_input_raises_analysis_error_naming_the_problem(small):
    assert issubclass(AnalysisError, HSEError) and issubclass(AnalysisError, ValueError)
    with pytest.raises(AnalysisError, match=r"unknown metric 'acc'.*'accuracy'.*'loss'"):
        summarize(small, "acc")
    with pytest.raises(AnalysisError, match=r"'model\.CC'.*Did you mean 'model\.C'.*test_size"):
        summarize(small, "accuracy", by=["model.CC"])
    with pytest.raises(AnalysisError, match=r"direction 'max'.*'maximize', 'minimize'"):
        summarize(small, "accuracy", "max")
    with pytest.raises(AnalysisError, match="empty"):
        summarize(small.iloc[0:0], "accuracy")
    with pytest.raises(AnalysisError, match="DataFrame"):
        summarize([1, 2], "accuracy")  # type: ignore[arg-type]
    with pytest.raises(AnalysisError, match=r"no runs with status in \['TIMEOUT'\].*COMPLETED: 15"):
        summarize(small, "accuracy", statuses=("TIMEOUT",))
    with pytest.raises(AnalysisError, match="alpha"):
        summarize(small, "accuracy", alpha=1.5)
    with pytest.raises(AnalysisError, match="no 'metrics.<name>' columns"):
        summarize(small.drop(columns=["metrics.accuracy", "metrics.loss"]), "accuracy")
    with pytest.raises(AnalysisError, match="has a value for 'metrics.accuracy'"):
        summarize(small.assign(**{"metrics.accuracy": np.nan}), "accuracy")
    broken = small.assign(**{"metrics.loss": "oops"})
    with pytest.raises(AnalysisError, match="metrics.loss.*non-numeric"):
        summarize(broken, "accuracy")


def test_best_run(small):
    best = best_run(small, "accuracy", "maximize")
    assert best["run_id"] == small.loc[small["metrics.accuracy"] == 0.84, "run_id"].item()
    assert best["status"] == "COMPLETED"  # the RUNNING run with 0.99 is ignored
    worst = best_run(small, "accuracy", "minimize")
    assert worst["metrics.accuracy"] == pytest.approx(0.69)
    low_loss = best_run(small, "metrics.loss", "minimize")
    assert low_loss["metrics.loss"] == pytest.approx(1 - 0.84)
    assert isinstance(best, pd.Series)
    with pytest.raises(AnalysisError, match="no runs with status"):
        best_run(small.assign(status="FAILED"), "accuracy", "maximize")
    with pytest.raises(AnalysisError, match="has a value"):
        best_run(small.assign(**{"metrics.accuracy": np.nan}), "accuracy", "maximize")
    with pytest.raises(AnalysisError, match="unknown metric"):
        best_run(small, "f1", "maximize")
    with pytest.raises(AnalysisError, match="direction"):
        best_run(small, "accuracy", "up")


def synthetic(runs: int = 10_000, configs: int = 500, rng_seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(rng_seed)
    cfg = np.arange(runs) % configs
    quality = 0.6 + 0.3 * np.sin(cfg / configs * np.pi)
    frame = {
        "run_id": [f"r{i}" for i in range(runs)], "task": "t",
        "status": np.where(rng.random(runs) < 0.01, "FAILED", "COMPLETED"),
        "seed": np.arange(runs) // configs,
        "config.model.C": 10.0 ** (cfg % 25 - 12), "config.model.kernel": np.where(
            (cfg // 25) % 2 == 0, "rbf", "linear"), "config.lr": 10.0 ** -(cfg // 50),
        "config.test_size": 0.2,
    }
    for name in ("accuracy", "f1", "loss"):
        frame[f"metrics.{name}"] = quality + rng.normal(0, 0.03, runs)
    return pd.DataFrame(frame)


def test_ten_thousand_runs_summarise():
    # How fast: benchmarks/summary_bench.py (a measured figure, not a test assertion).
    df = synthetic()
    s = summarize(df, "accuracy")
    assert len(s) == 500
    assert s["n"].sum() == (df["status"] == "COMPLETED").sum()
    assert (s["accuracy_mean"].diff().iloc[1:] <= 0).all()
    assert {"model.C", "model.kernel", "lr"} <= set(s.columns) and "test_size" not in s.columns
