"""Plots: what is drawn matches the data, and PNG/SVG files are written."""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PathCollection, PolyCollection
from matplotlib.figure import Figure

from helpers import assert_written
from hyperspace_explorer.errors import AnalysisError
from hyperspace_explorer.plots import plot_curves, plot_metric_by_config, plot_param_vs_metric

C_VALUES = (0.01, 0.1, 1.0, 10.0)


@pytest.fixture
def results() -> pd.DataFrame:
    rng = np.random.default_rng(1)
    rows = []
    for kernel in ("rbf", "linear"):
        for c in C_VALUES:
            for seed in range(6):
                acc = 0.7 + 0.05 * np.log10(c) + (0.05 if kernel == "rbf" else 0.0)
                rows.append({"run_id": f"{kernel}-{c}-{seed}", "status": "COMPLETED",
                             "seed": seed, "config.model.kernel": kernel,
                             "config.model.C": c, "config.test_size": 0.2,
                             "metrics.accuracy": acc + rng.normal(0, 0.01)})
    rows.append({**rows[0], "run_id": "failed", "status": "FAILED", "metrics.accuracy": np.nan})
    return pd.DataFrame(rows)


@pytest.fixture
def curves() -> pd.DataFrame:
    rng = np.random.default_rng(2)
    rows = []
    for c in (0.1, 1.0):
        for seed in range(4):
            for step in range(0, 100, 10):
                for name, value in (("loss", np.exp(-step / (30 * c + 10))),
                                    ("acc", 1 - np.exp(-step / 20))):
                    rows.append({"run_id": f"{c}-{seed}", "seed": seed, "name": name,
                                 "step": step, "value": value + rng.normal(0, 0.02),
                                 "config.model.C": c})
    return pd.DataFrame(rows)


def points(ax) -> int:
    return sum(len(c.get_offsets()) for c in ax.collections if isinstance(c, PathCollection))


def test_metric_by_config_draws_every_group_and_saves(results, tmp_path):
    fig = plot_metric_by_config(results, "accuracy", path=tmp_path / "box.png")
    assert isinstance(fig, Figure)
    assert_written(tmp_path / "box.png", "png")
    ax = fig.axes[0]
    # 8 groups whose labels would not fit side by side: one row per group, top down
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert len(labels) == 8  # 2 kernels x 4 values of C; test_size is constant
    assert labels[0] == "model.kernel=rbf, model.C=0.01"
    assert ax.get_ylim()[0] > ax.get_ylim()[1]  # the first group on top
    assert points(ax) == 48  # every COMPLETED run is a point, the FAILED one is not
    assert ax.get_xlabel() == "accuracy"

    plot_metric_by_config(results, "accuracy", path=tmp_path / "sub" / "box.svg")
    assert_written(tmp_path / "sub" / "box.svg", "svg")


def test_metric_by_config_by_and_direction_order(results):
    fig = plot_metric_by_config(results, "metrics.accuracy", by=["model.C"],
                                direction="maximize")
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels == [f"model.C={c:g}" for c in sorted(C_VALUES, reverse=True)]
    assert "higher is better" in ax.get_ylabel()
    # the jittered points of the first box are the runs with C = 10
    first = next(c for c in ax.collections if isinstance(c, PathCollection)).get_offsets()
    expected = results.loc[(results["config.model.C"] == 10.0)
                           & (results["status"] == "COMPLETED"), "metrics.accuracy"]
    assert sorted(np.asarray(first)[:, 1]) == pytest.approx(sorted(expected))
    assert np.all(np.abs(np.asarray(first)[:, 0] - 1) <= 0.18)
    with pytest.raises(AnalysisError, match="unknown 'by' config path 'model.gamma'"):
        plot_metric_by_config(results, "accuracy", by=["model.gamma"])
    with pytest.raises(AnalysisError, match="unknown metric"):
        plot_metric_by_config(results, "f1")


def test_curves_mean_line_and_band_per_group(curves, tmp_path):
    fig = plot_curves(curves, "loss", ["model.C"], band="std", path=tmp_path / "c.png")
    assert_written(tmp_path / "c.png", "png")
    ax = fig.axes[0]
    assert [line.get_label() for line in ax.lines] == ["model.C=0.1", "model.C=1"]
    loss = curves[curves["name"] == "loss"]
    expected = loss[loss["config.model.C"] == 1.0].groupby("step")["value"]
    line = ax.lines[1]
    assert list(line.get_xdata()) == list(expected.mean().index)
    assert line.get_ydata() == pytest.approx(expected.mean().to_numpy())
    bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert len(bands) == 2
    # the band spans mean +- std at each step
    verts = bands[1].get_paths()[0].vertices[:, 1]
    low = (expected.mean() - expected.std()).to_numpy()
    high = (expected.mean() + expected.std()).to_numpy()
    assert verts.min() == pytest.approx(min(low.min(), high.min()))
    assert verts.max() == pytest.approx(max(low.max(), high.max()))
    assert ax.get_legend() is not None

    fig = plot_curves(curves, "acc", [], band=None, path=tmp_path / "c.svg", logy=True)
    assert_written(tmp_path / "c.svg", "svg")
    ax = fig.axes[0]
    assert len(ax.lines) == 1 and not any(isinstance(c, PolyCollection) for c in ax.collections)
    assert ax.get_yscale() == "log"
    acc = curves[curves["name"] == "acc"].groupby("step")["value"].mean()
    assert ax.lines[0].get_ydata() == pytest.approx(acc.to_numpy())

    ci = plot_curves(curves, "loss", "config.model.C", band="ci").axes[0]
    assert len([c for c in ci.collections if isinstance(c, PolyCollection)]) == 2


def test_curves_errors(curves):
    with pytest.raises(AnalysisError, match=r"no logged metric named 'los'.*'acc', 'loss'"):
        plot_curves(curves, "los", ["model.C"])
    with pytest.raises(AnalysisError, match=r"unknown group column 'lr'.*config.model.C"):
        plot_curves(curves, "loss", ["lr"])
    with pytest.raises(AnalysisError, match="band"):
        plot_curves(curves, "loss", ["model.C"], band="iqr")
    with pytest.raises(AnalysisError, match="lacks"):
        plot_curves(curves.drop(columns=["step"]), "loss", [])


def test_param_vs_metric_points_means_and_log_axis(results, tmp_path):
    fig = plot_param_vs_metric(results, "model.C", "accuracy", logx=True,
                               path=tmp_path / "p.png")
    assert_written(tmp_path / "p.png", "png")
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_xlabel() == "model.C"
    assert points(ax) == 48
    done = results[results["status"] == "COMPLETED"]
    means = done.groupby("config.model.C")["metrics.accuracy"].mean()
    assert list(ax.lines[0].get_xdata()) == list(means.index)
    assert ax.lines[0].get_ydata() == pytest.approx(means.to_numpy())

    fig = plot_param_vs_metric(results, "config.model.C", "accuracy", hue="model.kernel",
                               path=tmp_path / "p.svg")
    assert_written(tmp_path / "p.svg", "svg")
    ax = fig.axes[0]
    assert ax.get_xscale() == "linear"
    labelled = [line.get_label() for line in ax.lines if not line.get_label().startswith("_")]
    assert labelled == ["model.kernel=rbf", "model.kernel=linear"]
    rbf = done[done["config.model.kernel"] == "rbf"].groupby("config.model.C")["metrics.accuracy"]
    assert ax.lines[0].get_ydata() == pytest.approx(rbf.mean().to_numpy())


def test_param_vs_metric_errors(results, tmp_path):
    with pytest.raises(AnalysisError, match=r"param 'model.kernel' is not numeric.*'model.C'"):
        plot_param_vs_metric(results, "model.kernel", "accuracy")
    with pytest.raises(AnalysisError, match=r"unknown param 'model.gamma'.*'model.C'"):
        plot_param_vs_metric(results, "model.gamma", "accuracy")
    neg = results.assign(**{"config.model.C": results["config.model.C"] - 1})
    with pytest.raises(AnalysisError, match="logx"):
        plot_param_vs_metric(neg, "model.C", "accuracy", logx=True)
    with pytest.raises(AnalysisError, match=r"must end in one of \.png, \.svg"):
        plot_param_vs_metric(results, "model.C", "accuracy", path=tmp_path / "p.jpg")


def test_param_missing_for_some_model_classes_is_skipped(results):
    df = results.copy()
    df.loc[df["config.model.kernel"] == "linear", "config.model.C"] = None
    ax = plot_param_vs_metric(df, "model.C", "accuracy").axes[0]
    assert points(ax) == 24  # only the runs that have a C


def test_draw_into_given_axes(results, tmp_path):
    fig = Figure()
    left, right = fig.subplots(1, 2)
    out = plot_metric_by_config(results, "accuracy", by=["model.kernel"], ax=left)
    out2 = plot_param_vs_metric(results, "model.C", "accuracy", ax=right,
                                path=tmp_path / "both.png")
    assert out is fig and out2 is fig
    assert len(left.get_xticklabels()) == 2 and right.get_xlabel() == "model.C"
    assert_written(tmp_path / "both.png", "png")
    png = fig._repr_png_() if hasattr(fig, "_repr_png_") else None
    new = plot_metric_by_config(results, "accuracy")
    assert png is None and new._repr_png_().startswith(b"\x89PNG")  # inline in notebooks


def test_queue_curves_and_hse_plot_curve_use_the_same_completed_runs(q, raw, mongo_uri,
                                                                       db_name, tmp_path):
    """`q.curves` and `hse plot TASK curve` read the curves through one function
    (`curves_frame`) and both leave out a cancelled run's partial curve."""
    from helpers import TASKS, run_worker
    from hyperspace_explorer.analysis import group_runs
    from hyperspace_explorer.cli import main
    from hyperspace_explorer.results import curves_frame
    from hyperspace_explorer.status import CANCELLED

    ids = q.submit("toy", {"model": {"className": "Linear"}, "epochs": 3}, seeds=3)
    assert run_worker(mongo_uri, db_name, tmp_path, max_runs=3, idle_exit=60) == 3
    # A run cancelled while it was logging keeps the steps it logged; cancelling a run
    # at that moment takes timing, so one finished run's status is set to CANCELLED.
    assert raw.hse_done.update_one({"_id": ids[0]},
                                {"$set": {"status": CANCELLED,
                                          "reason": "cancelled"}}).modified_count == 1

    everything = q.curves("toy", "loss", statuses=None)
    assert set(everything["run_id"]) == set(ids)  # the cancelled run did log a curve
    curves = q.curves("toy", "loss")
    assert set(curves["run_id"]) == set(ids[1:])
    assert len(curves) == 2 * 3 and sorted(set(curves["step"])) == [0, 1, 2]
    # what the CLI computes: group_runs' runs (COMPLETED) through curves_frame
    frame = q.results("toy")
    cli_curves = curves_frame(q.store, group_runs(frame).data, "loss")
    pd.testing.assert_frame_equal(cli_curves, curves)
    out = tmp_path / "loss.png"
    assert main(["--mongo-uri", mongo_uri, "--db", db_name, "--tasks-dir", str(TASKS),
                 "plot", "toy", "curve", "--curve", "loss", "-o", str(out)]) == 0
    assert_written(out, "png")


# ------------------------------------------------ 20 configurations, long labels
MODELS = ("GradientBoostingClassifierWithEarlyStopping", "RandomForestClassifier",
          "LogisticRegressionWithElasticNetPenalty", "SupportVectorClassifierRBF",
          "KNearestNeighbours")
RATES = (0.001, 0.01, 0.1, 1.0)


@pytest.fixture
def twenty() -> tuple[pd.DataFrame, pd.DataFrame]:
    """20 configurations (5 long model names x 4 rates, long parameter paths), 3 seeds:
    the results frame and the logged curves."""
    rng = np.random.default_rng(3)
    rows, curves = [], []
    for i, model in enumerate(MODELS):
        for j, rate in enumerate(RATES):
            config = {"config.model.className": model, "config.optimizer.learning_rate": rate,
                      "config.preprocessing.feature_selection": f"select_k_best_{5 + 10 * j}",
                      "config.preprocessing.scaler": "StandardScalerWithMean"}
            for seed in range(3):
                run = f"{model}-{rate}-{seed}"
                rows.append({"run_id": run, "status": "COMPLETED", "seed": seed, **config,
                             "config.hue": f"{model}_select_k_best_{5 + 10 * j}",
                             "metrics.accuracy": 0.6 + 0.04 * i + 0.01 * j
                             + rng.normal(0, 0.01)})
                curves += [{"run_id": run, "seed": seed, "name": "loss", "step": step,
                            "value": np.exp(-step / (10 + 5 * i + j)) + rng.normal(0, 0.01),
                            **config} for step in range(0, 50, 5)]
    return pd.DataFrame(rows), pd.DataFrame(curves)


def drawn(make):
    """The figure `make()` returns, drawn with Agg; fails on any warning (layout
    warnings included) while drawing, saving or laying it out."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fig = make()
        FigureCanvasAgg(fig).draw()
    assert [str(w.message) for w in caught] == []
    return fig


def extents(artists) -> list:
    renderer = artists[0].figure.canvas.get_renderer()
    return [a.get_window_extent(renderer) for a in artists]


def assert_apart(boxes, what: str) -> None:
    for i, a in enumerate(boxes):
        for j, b in enumerate(boxes[i + 1:], i + 1):
            assert not a.overlaps(b), f"{what} {i} and {j} overlap: {a} / {b}"


def assert_inside(boxes, fig, what: str) -> None:
    outer = fig.bbox
    for box in boxes:  # nothing is cut off at the figure's edge
        assert (box.x0 >= outer.x0 - 1 and box.x1 <= outer.x1 + 1
                and box.y0 >= outer.y0 - 1 and box.y1 <= outer.y1 + 1), (what, box, outer)


def assert_legend_outside(fig, ax, entries: int) -> None:
    legend = ax.get_legend()
    assert legend is not None and len(legend.get_texts()) == entries
    (box,) = extents([legend])
    (axes_box,) = extents([ax])
    assert not box.overlaps(axes_box) and box.x0 >= axes_box.x1
    assert_inside([box], fig, "legend")
    assert_apart(extents(legend.get_texts()), "legend entries")


def assert_ticks_readable(fig, ax) -> None:
    """The tick labels drawn (matplotlib also keeps ticks beyond the view limits, which
    it does not draw) do not overlap each other and lie inside the figure."""
    for ticks, limits, i in ((ax.get_xticklabels(), ax.get_xlim(), 0),
                             (ax.get_yticklabels(), ax.get_ylim(), 1)):
        low, high = sorted(limits)
        shown = [t for t in ticks if t.get_text() and low <= t.get_position()[i] <= high]
        assert shown
        assert_apart(extents(shown), "tick labels")
        assert_inside(extents(shown), fig, "tick labels")
    labels = [t for t in (ax.xaxis.label, ax.yaxis.label, ax.title) if t.get_text()]
    assert_inside(extents(labels), fig, "axis labels")


def distinct(colors) -> int:
    from matplotlib.colors import to_rgba

    return len({to_rgba(c) for c in colors})


def test_box_plot_of_20_long_labelled_configs_is_readable(twenty, tmp_path):
    results, _ = twenty
    fig = drawn(lambda: plot_metric_by_config(results.drop(columns="config.hue"), "accuracy",
                                              direction="maximize", path=tmp_path / "box.png"))
    assert_written(tmp_path / "box.png", "png")
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert len(labels) == 20
    assert all(any(m in label.replace("\n", " ") for m in MODELS) for label in labels)
    assert "learning_rate=0.001" in " ".join(labels)
    assert_ticks_readable(fig, ax)
    groups = [c for c in ax.collections if isinstance(c, PathCollection)]
    assert len(groups) == 20 and distinct(c.get_facecolor()[0] for c in groups) == 20


def test_curves_of_20_configs_legend_outside_distinct_colours(twenty, tmp_path):
    _, curves = twenty
    cols = ["model.className", "optimizer.learning_rate", "preprocessing.feature_selection"]
    fig = drawn(lambda: plot_curves(curves, "loss", cols, path=tmp_path / "curves.png"))
    assert_written(tmp_path / "curves.png", "png")
    ax = fig.axes[0]
    assert len(ax.lines) == 20 and distinct(line.get_color() for line in ax.lines) == 20
    assert_legend_outside(fig, ax, 20)
    assert_ticks_readable(fig, ax)
    # the legend names every group in full (wrapped onto lines, nothing cut)
    texts = [t.get_text().replace("\n", " ") for t in ax.get_legend().get_texts()]
    assert texts[0] == ("model.className=GradientBoostingClassifierWithEarlyStopping, "
                        "optimizer.learning_rate=0.001, "
                        "preprocessing.feature_selection=select_k_best_5")


def test_param_vs_metric_with_20_long_hues_legend_outside(twenty, tmp_path):
    results, _ = twenty
    fig = drawn(lambda: plot_param_vs_metric(results, "optimizer.learning_rate", "accuracy",
                                             hue="hue", logx=True, path=tmp_path / "p.png"))
    assert_written(tmp_path / "p.png", "png")
    ax = fig.axes[0]
    lines = [line for line in ax.lines if not line.get_label().startswith("_")]
    assert len(lines) == 20 and distinct(line.get_color() for line in lines) == 20
    assert_legend_outside(fig, ax, 20)
    assert ax.get_legend().get_title().get_text() == "hue"
    assert ax.get_legend().get_texts()[0].get_text() == f"{MODELS[0]}_select_k_best_5"
    assert_ticks_readable(fig, ax)


def test_colours_stay_distinct_for_any_number_of_groups():
    from hyperspace_explorer.plots import colors

    for n in (1, 10, 11, 20, 21, 60, 61, 200):
        assert len(colors(n)) == n and distinct(colors(n)) == n


def test_plot_labels_tell_none_from_a_parameter_the_config_lacks():
    df = pd.DataFrame([{"run_id": f"{k}{s}", "status": "COMPLETED", "seed": s,
                        "config.model.className": cls, "config.model.depth": depth,
                        "metrics.accuracy": 0.5 + 0.1 * k + 0.01 * s}
                       for k, (cls, depth) in enumerate([("Forest", None), ("Forest", 8),
                                                         ("Linear", np.nan)])
                       for s in range(3)])
    df["config.model.depth"] = pd.Series([None] * 3 + [8] * 3 + [np.nan] * 3, dtype=object)
    ax = plot_metric_by_config(df, "accuracy").axes[0]
    labels = [t.get_text().replace("\n", ", ") for t in ax.get_xticklabels()]
    assert labels == ["model.className=Forest, model.depth=None",
                      "model.className=Forest, model.depth=8", "model.className=Linear"]
    curves = df.assign(name="loss", step=0, value=df["metrics.accuracy"])
    ax = plot_curves(curves, "loss", ["model.depth"]).axes[0]
    assert [line.get_label() for line in ax.lines] == ["model.depth=None", "model.depth=8",
                                                       "defaults"]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["model.depth=None",
                                                                   "model.depth=8", "defaults"]
    ax = plot_param_vs_metric(df.assign(**{"config.x": 1.0}), "x", "accuracy",
                              hue="model.depth").axes[0]
    assert ax.get_legend().get_title().get_text() == "model.depth"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["None", "8", "(not set)"]
