"""``python -m bench report``: one self-contained HTML page of an experiment, its tables and
interactive figures together, that opens from disk with no network.

- Tables: accuracy (best and last epoch), time (per hardware, ratios on the same hardware),
  noise detection and transition-matrix error where runs logged them, each cell with a dagger
  where it has diverged or collapsed runs (:mod:`bench.training.health`), and the experiment's
  environments and unhealthy runs. With ``--ui-url`` each cell links its seeds' runs in the
  MLflow UI.
- Figures, drawn by Plotly (https://plotly.com/python/; its JavaScript is inlined once):
  test accuracy per epoch (one panel per setting) and accuracy against seconds per epoch, one
  trace per run, so hovering shows method, setting, seed and value. The legend toggles a method
  (all its seeds); buttons show one family at a time (``Method.family``: the IDO paper's set,
  losses and corrections, selection, semi-supervised) or, with ``--highlight``, the chosen
  methods in colour over the others in grey (the page opens so).
- Script errors are caught into ``<pre id="script-errors">`` (its ``data-count`` attribute), so
  that a headless browser can tell a page that renders from one that fails.
"""
from __future__ import annotations

import datetime
import html
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from bench.common.errors import UsageError
from bench.records.figures import _history, method_colours, method_markers
from bench.records.reports import (
    MARK,
    METRICS,
    _colname,
    _columns,
    by_hardware,
    counted,
    env_table,
    families,
    health_table,
    load_runs,
    mark_health,
    parse_highlight,
    pivot,
    time_pivot,
)

FAMILY_ORDER = ("paper", "losses", "selection", "semi-supervised", "other")
# A row's dash: its family's, so that methods of two families in one colour differ in the "all
# methods" view; a method's rows after its first (`views=shared` after `views=official`) longdashdot
DASHES = {"paper": "solid", "losses": "dash", "selection": "dot", "semi-supervised": "dashdot", "other": "longdash"}
VARIANT_DASH = "longdashdot"
# the static figures' markers (bench.records.figures.method_markers) by their Plotly names
SYMBOLS = {"o": "circle", "s": "square", "^": "triangle-up", "D": "diamond", "v": "triangle-down", "*": "star",
           "X": "x", "P": "cross", "h": "hexagon", "p": "pentagon", "8": "octagon"}
GREY = "rgba(170, 170, 170, 0.45)"

ERROR_HOOK = """<script>
window.__benchErrors = [];
window.addEventListener("error", function (e) { window.__benchErrors.push(String(e.message || e)); });
window.addEventListener("unhandledrejection", function (e) { window.__benchErrors.push(String(e.reason)); });
window.addEventListener("load", function () {
  var out = document.getElementById("script-errors");
  out.setAttribute("data-count", String(window.__benchErrors.length));
  out.textContent = window.__benchErrors.join("\\n");
});
</script>"""

STYLE = """<style>
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1500px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 0.3em; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.5em; text-align: right; white-space: nowrap; }
th:first-child, td:first-child { text-align: left; }
tr:nth-child(even) { background: #f6f6f6; }
ul.notes { font-size: 0.8em; color: #444; }
a.run { font-size: 0.75em; margin-left: 0.3em; }
.family { font-size: 0.75em; color: #666; }
h2 { margin-top: 1.6em; border-bottom: 1px solid #ddd; }
pre#script-errors:empty { display: none; }
.sw { display: inline-block; width: 0.75em; height: 0.75em; margin-right: 0.4em; border-radius: 2px; }
td.hl { font-weight: 600; }
</style>"""


def html_table(table: pd.DataFrame, best: dict[str, str] | None = None,
               links: dict[tuple[str, str], list[tuple[int, str]]] | None = None, ui_url: str | None = None,
               experiment_id: str = "", index_name: str = "method",
               swatches: dict[str, tuple[str, bool]] | None = None) -> str:
    """``table`` as HTML: the best cell per column in bold, with ``ui_url`` each cell's runs
    linked (one small link per seed) to the MLflow UI, and with ``swatches`` ({row: (colour,
    highlighted)}) each row's colour in the figures beside its name, the highlighted rows marked."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in [index_name, *table.columns])
    rows = []
    for name, values in zip(table.index, table.values, strict=True):
        colour, chosen = (swatches or {}).get(str(name), (None, False))
        swatch = f'<span class="sw" style="background:{colour}"></span>' if colour else ""
        cells = [f'<td{" class=hl" if chosen else ""}>{swatch}{html.escape(str(name))}</td>']
        for col, value in zip(table.columns, values, strict=True):
            text = html.escape(str(value))
            if best and best.get(col) == name:
                text = f"<b>{text}</b>"
            if ui_url and links:
                for seed, run_id in links.get((str(name), str(col)), []):
                    url = f"{ui_url.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
                    text += f'<a class="run" href="{html.escape(url)}" title="seed {seed}">s{seed}</a>'
            cells.append(f"<td>{text}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    notes = table.attrs.get("notes", [])
    foot = ('<ul class="notes">' + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>") if notes else ""
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>{foot}"


def cell_links(df: pd.DataFrame) -> dict[tuple[str, str], list[tuple[int, str]]]:
    nd = len({d for d, _ in _columns(df)})
    out: dict[tuple[str, str], list[tuple[int, str]]] = {}
    for (row, ds, setting), part in df.groupby(["row", "dataset", "setting"]):
        out[(row, _colname((ds, setting), nd))] = sorted(zip(part["seed"], part["run_id"], strict=True))
    return out


@dataclass
class Frame:
    """What both figures start from: one subplot per setting (two columns), and per row its
    method, the method's family and the row's style: the method's colour, the same as in every
    static figure drawn with the same ``--highlight`` (:func:`bench.records.figures.method_colours`),
    its marker, as there, and a dash per family (a method's rows after its first: one of their own)."""

    fig: Any
    cols: list[tuple[str, str]]
    ncol: int
    method_of: dict[str, str]
    family_of: dict[str, str]
    style: dict[str, dict[str, str]]

    @classmethod
    def of(cls, df: pd.DataFrame, highlight: list[str]) -> Frame:
        from plotly.subplots import make_subplots

        cols = _columns(df)
        ncol = min(2, len(cols))
        nrow = -(-len(cols) // ncol)
        fig = make_subplots(rows=nrow, cols=ncol, subplot_titles=[f"{d}, {s}" for d, s in cols],
                            vertical_spacing=0.12 / max(1, nrow - 1) if nrow > 1 else 0.1)
        method_of = dict(zip(df["row"], df["method"], strict=False))
        family_of = families(sorted(df["method"].unique()))
        methods = sorted(df["method"].unique())
        colours, markers = method_colours(methods, highlight), method_markers(methods, highlight)
        first = {m: min(r for r, k in method_of.items() if k == m) for m in methods}
        style = {r: {"color": colours[m], "dash": DASHES[family_of[m]] if r == first[m] else VARIANT_DASH,
                     "symbol": SYMBOLS[markers[m]] + ("" if r == first[m] else "-open")}
                 for r, m in method_of.items()}
        return cls(fig, cols, ncol, method_of, family_of, style)

    @property
    def height(self) -> int:
        return 340 * -(-len(self.cols) // self.ncol) + 120

    def cell(self, k: int) -> dict[str, int]:
        """The subplot of the ``k``-th setting."""
        return {"row": k // self.ncol + 1, "col": k % self.ncol + 1}

    def trace(self, row: str) -> dict[str, str]:
        """What the buttons need to know of a trace of ``row``."""
        method = self.method_of[row]
        return {"family": self.family_of[method], "method": method, "color": self.style[row]["color"]}


WIDTH = 1.5  # a line's width (under a highlight: _width)


def _width(trace: dict[str, Any], highlight: list[str]) -> float:
    return 2.5 if trace["method"] in highlight else 1.0


def _views(traces: list[dict[str, Any]], highlight: list[str]) -> list[dict[str, Any]]:
    """The buttons: every method, one family, or the highlighted methods over the rest in grey."""
    present = [f for f in FAMILY_ORDER if any(t["family"] == f for t in traces)]
    colours = [t["color"] for t in traces]

    def button(label: str, visible: list[Any], colour: list[str], width: list[float] | None = None) -> dict[str, Any]:
        return {"label": label, "method": "restyle",
                "args": [{"visible": visible, "line.color": colour, "marker.color": colour,
                          "line.width": width or [WIDTH] * len(traces)}]}

    out = [button("all methods", [True] * len(traces), colours)]
    out += [button(f, [t["family"] == f or "legendonly" for t in traces], colours) for f in present]
    if highlight:
        grey = [c if t["method"] in highlight else GREY for t, c in zip(traces, colours, strict=True)]
        out.insert(0, button("highlight: " + ", ".join(highlight), [True] * len(traces), grey,
                             [_width(t, highlight) for t in traces]))
    return out


def curves_figure(df: pd.DataFrame, client: Any, highlight: list[str], title: str) -> Any:
    """Test accuracy per epoch, one panel per setting, one trace per run."""
    import plotly.graph_objects as go

    f = Frame.of(df, highlight)
    traces: list[dict[str, Any]] = []
    shown: set[str] = set()
    for k, (ds, setting) in enumerate(f.cols):
        part = df[(df["dataset"] == ds) & (df["setting"] == setting)]
        for _, r in part.sort_values(["row", "seed"]).iterrows():
            h = _history(client, r["run_id"], "test_acc") * 100
            if h.empty:
                continue
            row = r["row"]
            f.fig.add_trace(go.Scatter(
                x=list(h.index), y=list(h.values), mode="lines", name=row, legendgroup=row,
                showlegend=row not in shown,
                line={"color": f.style[row]["color"], "dash": f.style[row]["dash"], "width": WIDTH},
                hovertemplate=(f"<b>{html.escape(row)}</b><br>{ds}, {setting}, seed {r['seed']}<br>"
                               "epoch %{x}: %{y:.2f}%<extra></extra>")), **f.cell(k))
            shown.add(row)
            traces.append(f.trace(row))
    _layout(f.fig, traces, highlight, title, f.height)
    f.fig.update_xaxes(title_text="epoch")
    f.fig.update_yaxes(title_text="test accuracy (%)")
    return f.fig


def pareto_figure(df: pd.DataFrame, metric: str, highlight: list[str], title: str) -> Any:
    """Last (or best) test accuracy against seconds per epoch, one point per run (time splits by
    hardware: ``by_hardware`` rows)."""
    import plotly.graph_objects as go

    f = Frame.of(df, highlight)
    traces: list[dict[str, Any]] = []
    shown: set[str] = set()
    for k, (ds, setting) in enumerate(f.cols):
        part = df[(df["dataset"] == ds) & (df["setting"] == setting)]
        for row, runs in part.groupby("row"):
            f.fig.add_trace(go.Scatter(
                x=list(runs["epoch_s"]), y=list(runs[metric] * 100), mode="markers", name=row, legendgroup=row,
                showlegend=row not in shown,
                marker={"color": f.style[row]["color"], "size": 9, "symbol": f.style[row]["symbol"]},
                customdata=list(runs["seed"]),
                hovertemplate=(f"<b>{html.escape(row)}</b><br>{ds}, {setting}, seed %{{customdata}}<br>"
                               f"%{{x:.2f}} s/epoch, {metric} %{{y:.2f}}%<extra></extra>")), **f.cell(k))
            shown.add(row)
            traces.append(f.trace(row))
    _layout(f.fig, traces, highlight, title, f.height)
    f.fig.update_xaxes(title_text="seconds per epoch")
    f.fig.update_yaxes(title_text=f"{metric} (%)")
    return f.fig


def _layout(fig: Any, traces: list[dict[str, Any]], highlight: list[str], title: str, height: int) -> None:
    views = _views(traces, highlight)
    fig.update_layout(
        title={"text": html.escape(title), "x": 0.01, "y": 1.0 - 12 / height, "yanchor": "top"}, height=height,
        template="plotly_white",
        legend={"groupclick": "togglegroup", "font": {"size": 10}, "itemdoubleclick": "toggleothers"},
        hovermode="closest", margin={"t": 110},
        updatemenus=[{"type": "buttons", "direction": "right", "x": 1.0, "y": 1.0 + 45 / height,
                      "xanchor": "right", "yanchor": "bottom", "buttons": views, "showactive": True,
                      "font": {"size": 10}}])
    if highlight:  # the page opens on the highlighted view
        for trace, t in zip(fig.data, traces, strict=True):
            if hasattr(trace, "line") and trace.mode == "lines":
                trace.line.width = _width(t, highlight)
            if t["method"] not in highlight:
                if hasattr(trace, "line") and trace.mode == "lines":
                    trace.line.color = GREY
                else:
                    trace.marker.color = GREY


def build(uri: str | None, experiment: str, methods: str | None = None, highlight: str | None = None,
          ui_url: str | None = None, metric: str = "last_test_acc") -> str:
    """The page's HTML; ``highlight``: the --highlight text (methods, comma-separated)."""
    from bench.training.tracking import mlflow_client

    client = mlflow_client(uri)
    every = load_runs(uri, experiment, methods, diverged=True)
    highlight = parse_highlight(highlight, every, experiment)
    exp_id = client.get_experiment_by_name(experiment).experiment_id
    df = counted(every, experiment)
    links = cell_links(df)
    timed = by_hardware(df)
    colours = method_colours(sorted(df["method"].unique()), highlight)
    sw = {r: (colours[m], m in highlight) for d in (df, timed) for r, m in zip(d["row"], d["method"], strict=True)}
    sections = []
    for m in METRICS:
        table, best = pivot(df, m)
        table = mark_health(table, every)
        sections.append((f"Accuracy: {m} in % (mean ± std over seeds, best mean in bold)",
                         html_table(table, best, links, ui_url, exp_id, swatches=sw)))
    sections.append(("Time: seconds per epoch, and ratios to CE and DivideMix on the same hardware and protocol",
                     html_table(time_pivot(timed), swatches=sw)))
    if df["clean_auc"].notna().any():
        has = df[df["clean_auc"].notna()]
        table, best = pivot(has, "clean_auc", scale=1.0, digits=3)
        sections.append(("Noise detection: final clean_auc", html_table(mark_health(table, every), best, links,
                                                                        ui_url, exp_id, swatches=sw)))
    if df["t_error"].notna().any():
        has = df[df["t_error"].notna()]
        table, best = pivot(has, "t_error", scale=1.0, digits=3, higher_is_better=False)
        sections.append(("Transition-matrix error: final t_error (lowest in bold)",
                         html_table(table, best, links, ui_url, exp_id, swatches=sw)))
    sections.append(("Environments", html_table(env_table(every), index_name="hardware")))
    bad = health_table(every)
    sections.append((f"Run health: {len(bad)} runs diverged or collapsed",
                     html_table(bad) if len(bad) else "<p>No run diverged or collapsed.</p>"))
    curves = curves_figure(df, client, highlight,
                           f"Test accuracy per epoch, experiment {experiment} (one line per run)")
    points = pareto_figure(timed[timed["epoch_s"].notna()], metric, highlight,
                           f"{metric} against seconds per epoch, experiment {experiment} (one point per run)")
    return page(experiment, every, sections, [curves, points], uri)


def page(experiment: str, every: pd.DataFrame, sections: list[tuple[str, str]], figures: list[Any],
         uri: str | None) -> str:
    from bench.training.tracking import store_uri

    figs = [f.to_html(full_html=False, include_plotlyjs=(i == 0), config={"displaylogo": False})
            for i, f in enumerate(figures)]
    fams = families(sorted(every["method"].unique()))
    by_family = {f: sorted(m for m, g in fams.items() if g == f) for f in FAMILY_ORDER}
    family_text = "; ".join(f"{f}: {', '.join(ms)}" for f, ms in by_family.items() if ms)
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    body = [f"<h1>Experiment {html.escape(experiment)}</h1>",
            f"<p>{len(every)} runs of {every['method'].nunique()} methods "
            f"(store {html.escape(store_uri(uri))}); "  # --tracking-uri, $MLFLOW_TRACKING_URI or the default
            f"page written {now} by <code>python -m bench report</code>. {MARK}: a cell with diverged or collapsed "
            "runs (notes under each table).</p>",
            f'<p class="family">Families: {html.escape(family_text)}</p>']
    for title, content in sections[:2]:
        body += [f"<h2>{html.escape(title)}</h2>", content]
    body += ["<h2>Figures</h2>", *figs]
    for title, content in sections[2:]:
        body += [f"<h2>{html.escape(title)}</h2>", content]
    body.append('<pre id="script-errors" data-count="-1"></pre>')
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(experiment)}: bench report</title>{STYLE}{ERROR_HOOK}</head>"
            f"<body>{''.join(body)}</body></html>\n")


def cmd_report(args: Any) -> int:
    if args.metric not in METRICS:
        raise UsageError(f"--metric {args.metric}: valid values are {', '.join(METRICS)}")
    text = build(args.tracking_uri, args.experiment, args.methods, args.highlight, args.ui_url, args.metric)
    out = Path(args.out) / f"{args.experiment}-report.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"wrote {out} ({len(text) / 1e6:.1f} MB; opens from disk, no network)")
    return 0
