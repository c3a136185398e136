"""``bench report`` (bench/records/report_page.py): the page holds every table and both figures
with nothing fetched from the network, links cells to the MLflow UI, and renders in a real
browser with no script error.

The browser test needs Debian's ``chromium`` (headless). Without it the test skips and says so;
with ``BENCH_REQUIRE_BROWSER=1`` (CI, which installs it) a missing browser is a failure.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from bench.cli import main
from tests.helpers import rendered, tracking_uri
from tests.test_reports import store  # noqa: F401  (the tiny experiment: a fixture)


def report(tmp: Path, out: Path, *argv: str) -> Path:
    assert main(["report", "--experiment", "tiny", "--tracking-uri", tracking_uri(tmp), "--out", str(out),
                 *argv]) == 0
    return out / "tiny-report.html"


def test_the_page_holds_the_tables_and_figures_and_needs_no_network(store, tmp_path):  # noqa: F811
    text = report(store, tmp_path, "--highlight", "wrongevent,ce", "--ui-url", "http://ui.example:5000").read_text()
    for title in ("Accuracy: best_test_acc", "Accuracy: last_test_acc", "Time: seconds per epoch",
                  "Noise detection: final clean_auc", "Transition-matrix error", "Environments", "Run health"):
        assert title in text, title
    assert text.count('class="plotly-graph-div"') == 2  # the curves and the accuracy-time figure
    assert f"8 runs of 3 methods (store {tracking_uri(store)})" in text  # which store, whoever named it
    assert not re.search(r"<script[^>]+src=", text)  # plotly.js inlined, nothing fetched
    assert "https://cdn" not in text.split("</head>")[0]
    # each accuracy cell links its seeds' runs in the MLflow UI
    assert re.search(r'href="http://ui.example:5000/#/experiments/\d+/runs/[0-9a-f]{32}" title="seed 1">s1</a>', text)
    # the families' buttons and the highlighted view, with the methods' hover text
    for label in ("all methods", "highlight: wrongevent, ce", '"label":"paper"'):
        assert label in text, label
    assert "fashion-mnist, sym:0.4, seed 2" in text and "epoch %{x}" in text  # hover: method, setting, seed
    # each table row carries its colour in the figures; the highlighted ones marked
    assert '<td class=hl><span class="sw" style="background:#d62728"></span>wrongevent' in text
    assert '<td><span class="sw" style="background:#ff7f0e"></span>ce' not in text  # ce: black, highlighted
    assert '<td class=hl><span class="sw" style="background:#1f77b4"></span>ce' in text


def test_a_highlighted_method_that_did_not_run_is_one_line(store, tmp_path, capsys):  # noqa: F811
    code = main(["report", "--experiment", "tiny", "--tracking-uri", tracking_uri(store), "--out", str(tmp_path),
                 "--highlight", "promix"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("bench: error: --highlight promix: no run of it") and "\n" not in err


@pytest.mark.slow
def test_the_page_renders_in_a_headless_browser_without_script_errors(store, tmp_path):  # noqa: F811
    page = report(store, tmp_path, "--highlight", "dividemix")
    dom = rendered(page.as_uri(), tmp_path / "profile")
    errors = re.search(r'<pre id="script-errors" data-count="(-?\d+)">(.*?)</pre>', dom, re.S)
    assert errors is not None and errors.group(1) == "0", errors.group(2) if errors else dom[-2000:]
    assert dom.count("<table") >= 6  # accuracy x2, time, detection, transition, environments
    # plotly ran: each figure is drawn as SVG, with its traces and its buttons
    assert dom.count('class="main-svg"') >= 2 and 'class="scatterlayer' in dom
    assert "updatemenu-button" in dom


def test_plot_highlights_chosen_methods_over_grey_and_splits_by_family(store, tmp_path, monkeypatch):  # noqa: F811
    """`bench plot --highlight`: the chosen methods in their colours (and in the legend), the rest
    thin grey lines under them, one legend entry for them all; `--by-family`: a figure per family."""
    import bench.records.figures as figures

    seen: list = []
    real = figures.save_figure

    def spy(fig, path, pdf=True):
        ax = fig.axes[0]
        legend = ax.get_legend() or fig.legends[0]
        seen.append({"legend": [t.get_text() for t in legend.get_texts()],
                     "lines": {line.get_label(): (line.get_color(), line.get_linewidth()) for line in ax.get_lines()},
                     "path": path.name})
        return real(fig, path, pdf)

    monkeypatch.setattr(figures, "save_figure", spy)
    assert main(["plot", "--experiment", "tiny", "--kind", "curves", "--highlight", "wrongevent", "--out",
                 str(tmp_path), "--tracking-uri", tracking_uri(store)]) == 0
    legend, lines = seen[0]["legend"], seen[0]["lines"]
    assert legend[0].startswith("wrongevent") and legend[-1] == "the other methods" and len(legend) == 2
    grey = {label: style for label, style in lines.items() if not label.startswith("wrongevent")}
    assert grey and all(c == figures.OTHERS["color"] and w < lines[legend[0]][1] for c, w in grey.values())
    assert main(["plot", "--experiment", "tiny", "--kind", "pareto", "--by-family", "--out", str(tmp_path),
                 "--tracking-uri", tracking_uri(store)]) == 0
    assert seen[-1]["path"] == "tiny-pareto-paper.png"  # ce, dividemix and wrongevent: the paper's set
    # a family's small multiple: its methods in their own colours, the highlighted ones in each
    monkeypatch.setattr(figures, "families", lambda ms: {m: "losses" if m == "ce" else "paper" for m in ms})
    seen.clear()
    assert main(["plot", "--experiment", "tiny", "--kind", "curves", "--by-family", "--highlight", "wrongevent",
                 "--out", str(tmp_path), "--tracking-uri", tracking_uri(store)]) == 0
    losses = {s["path"]: s for s in seen}["tiny-curves-losses.png"]
    assert [label.split()[0] for label in losses["legend"]] == ["wrongevent", "ce"]  # the highlighted first
    colour = {label.split()[0]: c for label, (c, _) in losses["lines"].items()}
    assert colour == {"wrongevent": figures.HIGHLIGHT_COLOURS[0], "ce": figures.FAMILY_COLOURS[0]}
