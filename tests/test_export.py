"""Exporters: Markdown, LaTeX, CSV, HTML, JSON and the `export` dispatcher."""
from __future__ import annotations

import io
import json
import re

import numpy as np
import pandas as pd
import pytest

from hyperspace_explorer.analysis import summarize
from hyperspace_explorer.errors import AnalysisError
from hyperspace_explorer.export import (export, guess_direction, latex_escape, to_csv, to_html,
                                        to_json, to_latex, to_markdown)

ACC = {
    "rbf_50%": [0.80, 0.82, 0.81, 0.79, 0.83],     # best accuracy
    "linear": [0.78, 0.80, 0.84, 0.77, 0.81],
    "poly": [0.50, 0.52, 0.51, 0.49, 0.53],        # clearly worse
}
LOSS = {"rbf_50%": [0.30, 0.31, 0.29, 0.30, 0.33],
        "linear": [0.20, 0.22, 0.21, 0.19, 0.18],  # best (lowest) loss
        "poly": [0.60, 0.61, 0.62, 0.60, 0.59]}


@pytest.fixture
def results() -> pd.DataFrame:
    rows = []
    for kernel, accs in ACC.items():
        for seed, (acc, loss) in enumerate(zip(accs, LOSS[kernel])):
            rows.append({"run_id": f"{kernel}-{seed}", "status": "COMPLETED", "seed": seed,
                         "config.model.kernel": kernel, "config.model.C": 1.0,
                         "metrics.accuracy": acc, "metrics.f1_macro": acc - 0.01,
                         "metrics.val_loss": loss})
    return pd.DataFrame(rows)


@pytest.fixture
def summary(results) -> pd.DataFrame:
    return summarize(results, "accuracy", "maximize")


def cell(mean: float, std: float, decimals: int = 3, sep: str = " ± ") -> str:
    return f"{mean:.{decimals}f}{sep}{std:.{decimals}f}"


def test_markdown_is_an_aligned_pipe_table(summary):
    md = to_markdown(summary)
    lines = md.strip("\n").split("\n")
    assert len(lines) == 2 + len(summary)
    assert all(line.startswith("| ") and line.endswith(" |") for line in lines)
    assert len({len(line) for line in lines}) == 1  # columns line up in a terminal
    header = [h.strip() for h in lines[0].strip("|").split("|")]
    assert header == ["rank", "model.kernel", "n", "accuracy ↑", "f1_macro", "val_loss",
                      "p Welch (Holm)", "p MWU (Holm)", "not worse"]
    assert re.fullmatch(r"\|( -+: \|| :-+ \|)+", lines[1])
    x = np.array(ACC["rbf_50%"])
    first = [c.strip() for c in lines[2].strip("|").split("|")]
    assert first[:4] == ["1", "rbf_50%", "5", cell(x.mean(), x.std(ddof=1))]
    assert first[6:] == ["-", "-", "yes"]  # the best group is not tested against itself
    last = [c.strip() for c in lines[-1].strip("|").split("|")]
    assert last[1] == "poly" and last[-1] == "no"
    # constant config columns stay out of the table
    assert "model.C" not in md


def test_markdown_escapes_pipes_and_shows_missing_values(results):
    df = results.copy()
    df.loc[df["config.model.kernel"] == "poly", "config.model.kernel"] = "a|b"
    one = df[df["seed"] == 0].copy()
    one.loc[one.index[0], "metrics.accuracy"] = np.nan
    s = summarize(pd.concat([df[df["seed"] > 0], one]), "accuracy")
    md = to_markdown(s)
    assert "a\\|b" in md
    assert all(len(line.split(" | ")) == len(md.split("\n")[0].split(" | "))
               for line in md.strip().split("\n"))


def test_latex_booktabs_bold_best_and_escaping(summary):
    tex = to_latex(summary, "accuracy", "maximize")
    lines = tex.strip().split("\n")
    assert lines[0].startswith(r"\begin{tabular}{") and lines[-1] == r"\end{tabular}"
    top, mid, bottom = (lines.index(r) for r in (r"\toprule", r"\midrule", r"\bottomrule"))
    assert top < mid < bottom and mid - top == 2 and bottom - mid == 1 + len(summary)
    header = lines[top + 1]
    assert r"f1\_macro" in header and r"val\_loss" in header and "f1_macro" not in header
    assert r"rbf\_50\%" in tex and "rbf_50%" not in tex
    assert latex_escape("a_b%c&d$e#f{g}h~i^j\\k") == (
        r"a\_b\%c\&d\$e\#f\{g\}h\textasciitilde{}i\textasciicircum{}j\textbackslash{}k")

    rows = [r.removesuffix(r" \\").split(" & ") for r in lines[mid + 1:bottom]]
    acc_col = header.split(" & ").index(r"accuracy $\uparrow$")
    loss_col = header.split(" & ").index(r"val\_loss $\downarrow$")
    x = np.array(ACC["rbf_50%"])
    assert rows[0][acc_col] == r"\textbf{" + cell(x.mean(), x.std(ddof=1), sep=r" $\pm$ ") + "}"
    assert sum(r"\textbf" in r[acc_col] for r in rows) == 1
    # val_loss is minimised (guessed from its name): the linear kernel has the best loss
    linear = next(r for r in rows if r[1] == "linear")
    y = np.array(LOSS["linear"])
    assert linear[loss_col] == r"\textbf{" + cell(y.mean(), y.std(ddof=1), sep=r" $\pm$ ") + "}"
    assert sum(r"\textbf" in r[loss_col] for r in rows) == 1
    # p-values: the best has none, tiny ones are written as powers of ten
    assert rows[0][-1] == "--" and re.fullmatch(r"\$\d\.\d \\times 10\^\{-\d+\}\$", rows[2][-1])
    # every data row has as many cells as the header
    assert all(len(r) == len(header.split(" & ")) for r in rows)


def test_latex_minimize_and_explicit_directions(summary):
    tex = to_latex(summary, "accuracy", "minimize", directions={"val_loss": "maximize"})
    lines = tex.strip().split("\n")
    header = lines[lines.index(r"\toprule") + 1].split(" & ")
    rows = [r.removesuffix(r" \\").split(" & ")
            for r in lines[lines.index(r"\midrule") + 1:lines.index(r"\bottomrule")]]
    acc = header.index(r"accuracy $\downarrow$")
    loss = header.index(r"val\_loss $\uparrow$")
    bold_acc = [r[1] for r in rows if r[acc].startswith(r"\textbf")]
    bold_loss = [r[1] for r in rows if r[loss].startswith(r"\textbf")]
    assert bold_acc == ["poly"] and bold_loss == ["poly"]
    wrapped = to_latex(summary, "accuracy", "maximize", caption="Results 100%", label="tab:r")
    assert wrapped.startswith("\\begin{table}") and r"\caption{Results 100\%}" in wrapped
    assert r"\label{tab:r}" in wrapped and wrapped.strip().endswith(r"\end{table}")
    with pytest.raises(AnalysisError, match=r"unknown metric 'f1'.*'accuracy'"):
        to_latex(summary, "f1", "maximize")
    with pytest.raises(AnalysisError, match="direction"):
        to_latex(summary, "accuracy", "best")


def test_precision_follows_the_spread():
    rows = [{"status": "COMPLETED", "seed": s, "config.x": x, "metrics.time": v}
            for x, vals in ((1, [1234.4, 1250.2, 1221.9]), (2, [2000.0, 2010.0, 1990.0]))
            for s, v in enumerate(vals)]
    s = summarize(pd.DataFrame(rows), "time", "minimize")
    md = to_markdown(s)
    v = np.array([1234.4, 1250.2, 1221.9])
    assert f"{v.mean():.0f} ± {v.std(ddof=1):.0f}" in md
    assert guess_direction("time") == "minimize" and guess_direction("accuracy") == "maximize"
    assert guess_direction("neg_mean_squared_error") == "maximize"


def test_csv_round_trips(summary):
    back = pd.read_csv(io.StringIO(to_csv(summary)))
    assert list(back.columns) == list(summary.columns)
    for col in ("accuracy_mean", "accuracy_ci_low", "val_loss_std", "p_welch", "p_mwu_holm"):
        np.testing.assert_allclose(back[col].to_numpy(float), summary[col].to_numpy(float),
                                   rtol=1e-12, equal_nan=True)
    assert back["model.kernel"].tolist() == summary["model.kernel"].tolist()


def test_json_is_valid_records_with_null_for_nan(summary):
    text = to_json(summary)

    def no_constants(token):
        raise AssertionError(f"non-standard JSON constant {token}")

    records = json.loads(text, parse_constant=no_constants)
    assert isinstance(records, list) and len(records) == len(summary)
    assert list(records[0]) == list(summary.columns)
    assert records[0]["p_welch"] is None and records[0]["not_worse"] is True
    assert records[-1]["not_worse"] is False
    for rec, (_, row) in zip(records, summary.iterrows()):
        assert rec["model.kernel"] == row["model.kernel"]
        assert rec["n"] == row["n"] and isinstance(rec["n"], int)
        assert rec["accuracy_mean"] == pytest.approx(row["accuracy_mean"], rel=1e-15)
        assert rec["val_loss_ci_high"] == pytest.approx(row["val_loss_ci_high"], rel=1e-15)
    back = pd.DataFrame(records)
    np.testing.assert_allclose(back["p_welch_holm"].to_numpy(float),
                               summary["p_welch_holm"].to_numpy(float), equal_nan=True)


def test_json_tuples_and_missing_test_become_lists_and_null():
    rows = [{"status": "COMPLETED", "seed": s, "config.hidden": h, "metrics.acc": a}
            for h, accs in (((16,), [0.5, 0.6]), ((32, 16), [0.9])) for s, a in enumerate(accs)]
    records = json.loads(to_json(summarize(pd.DataFrame(rows), "acc")))
    assert records[0]["hidden"] == [32, 16] and records[0]["acc_std"] is None
    assert records[1]["hidden"] == [16] and records[1]["not_worse"] is None


def test_html_table(summary, results):
    html = to_html(summary)
    assert html.count("<table") == 1 and 'class="dataframe hse-summary"' in html
    assert html.count("<tr") == 1 + len(summary)
    x = np.array(ACC["rbf_50%"])
    assert f"<td>{cell(x.mean(), x.std(ddof=1))}</td>" in html
    evil = results.assign(**{"config.model.kernel": results["config.model.kernel"]
                             .replace("poly", "<script>")})
    assert "&lt;script&gt;" in to_html(summarize(evil, "accuracy"))
    assert "<script>" not in to_html(summarize(evil, "accuracy"))


def test_export_dispatch_and_errors(summary):
    assert export(summary, "md") == export(summary, "markdown") == to_markdown(summary)
    assert export(summary, "latex", "accuracy", "maximize") == to_latex(summary, "accuracy",
                                                                         "maximize")
    assert export(summary, "tex") == to_latex(summary, "accuracy", "maximize")  # from attrs
    assert export(summary, "CSV") == to_csv(summary)
    assert export(summary, "html") == to_html(summary)
    assert export(summary, "json") == to_json(summary)
    with pytest.raises(AnalysisError, match=r"unknown export format 'xlsx'.*'md'.*'latex'.*'json'"):
        export(summary, "xlsx")
    with pytest.raises(AnalysisError, match="LaTeX"):
        export(summary, "md", caption="x")
    with pytest.raises(AnalysisError, match="summarize"):
        to_markdown(pd.DataFrame({"a": [1]}))


def test_exporters_work_without_attrs(summary):
    bare = summary.copy()
    bare.attrs = {}
    md = to_markdown(bare)
    assert "model.kernel" in md and "accuracy ↑" not in md and "accuracy" in md
    with pytest.raises(AnalysisError, match="unknown metric None"):
        to_latex(bare)
    tex = to_latex(bare, "accuracy", "maximize")
    assert r"\textbf" in tex and r"\toprule" in tex


# ------------------------------------------------ config values as given (real runs)
@pytest.fixture
def forest_and_linear(q, mongo_uri, db_name, tmp_path):
    """Real runs of the test Study: Forest with depth None and with depth 8 (n_trees=20,
    an int), and Linear, which has neither parameter; 2 seeds each."""
    from helpers import run_worker

    ids = q.submit("toy", {"model": {"className": "Forest", "n_trees": 20, "depth": None}},
                   seeds=2)
    ids += q.submit("toy", {"model": {"className": "Forest", "n_trees": 20, "depth": 8}},
                    seeds=2)
    ids += q.submit("toy", {"model": {"className": "Linear"}}, seeds=2)
    assert run_worker(mongo_uri, db_name, tmp_path, max_runs=len(ids), idle_exit=60) == len(ids)
    return q


def by_class_and_depth(frame: pd.DataFrame, cls_col: str, depth_col: str) -> dict:
    """Rows keyed "Forest/None", "Forest/8", "Linear/-" (depth as format_value shows it)."""
    from hyperspace_explorer.analysis import format_value

    return {f"{r[cls_col]}/{format_value(r[depth_col])}": r for _, r in frame.iterrows()}


def test_explicit_none_and_absent_parameters_stay_apart_and_ints_stay_ints(forest_and_linear):
    q = forest_and_linear
    frame = q.results("toy")
    rows = by_class_and_depth(frame, "config.model.className", "config.model.depth")
    assert sorted(rows) == ["Forest/8", "Forest/None", "Linear/-"]
    assert rows["Forest/None"]["config.model.depth"] is None          # set to None
    assert isinstance(rows["Linear/-"]["config.model.depth"], float)  # not a Linear param
    assert np.isnan(rows["Linear/-"]["config.model.depth"])
    for key in ("Forest/None", "Forest/8"):
        n_trees = rows[key]["config.model.n_trees"]
        assert type(n_trees) is int and n_trees == 20
    assert type(rows["Forest/8"]["config.model.depth"]) is int

    summary = q.summary("toy")
    assert len(summary) == 3 and summary["n"].tolist() == [2, 2, 2]  # None != absent
    groups = by_class_and_depth(summary, "model.className", "model.depth")
    assert sorted(groups) == ["Forest/8", "Forest/None", "Linear/-"]

    records = {f"{r['model.className']}/{r.get('model.depth', '-')}": r
               for r in json.loads(to_json(summary))}
    assert sorted(records) == ["Forest/8", "Forest/None", "Linear/-"]
    assert records["Forest/None"]["model.depth"] is None              # null
    assert records["Forest/8"]["model.depth"] == 8
    assert "model.depth" not in records["Linear/-"]                   # absent
    assert "model.n_trees" not in records["Linear/-"]
    assert type(records["Forest/None"]["model.n_trees"]) is int
    assert records["Linear/-"]["model.lr"] == 0.1

    csv = pd.read_csv(io.StringIO(to_csv(summary)), dtype=str, keep_default_na=False)
    by_depth = {(r["model.className"], r["model.depth"]): r for _, r in csv.iterrows()}
    assert sorted(by_depth) == [("Forest", "8"), ("Forest", "None"), ("Linear", "")]
    assert by_depth[("Forest", "None")]["model.n_trees"] == "20"      # not 20.0
    assert by_depth[("Linear", "")]["model.n_trees"] == ""
    assert "20.0" not in to_csv(summary)

    md = to_markdown(summary)
    lines = md.strip().split("\n")
    header = [h.strip() for h in lines[0].strip("|").split("|")]
    cells = {}
    for line in lines[2:]:
        row = dict(zip(header, (c.strip() for c in line.strip("|").split("|"))))
        cells[(row["model.className"], row["model.depth"])] = row
    assert sorted(cells) == [("Forest", "8"), ("Forest", "None"), ("Linear", "-")]
    assert cells[("Forest", "None")]["model.n_trees"] == "20"
    assert cells[("Linear", "-")]["model.n_trees"] == "-"
    html = to_html(summary)
    assert "<td>None</td>" in html and "<td>20</td>" in html and "20.0" not in html
    tex = to_latex(summary)
    assert " & None & " in tex and " & 20 & " in tex and "20.0" not in tex
