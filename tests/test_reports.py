"""`bench table` and `bench plot` on a tiny experiment written straight into an MLflow store:
table cells equal the mean and std of the runs' logged metrics, time ratios are the ratios of
mean seconds per epoch, and every plot kind renders."""
from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from bench.cli import main
from bench.training.runrecord import TAG_SCORE_ARTIFACTS, TAG_TIME_REFERENCE
from tests.helpers import table_cli, tracking_uri

RUNS = {  # (method, setting) -> [(best, last, wall_clock_s)] per seed
    ("ce", "sym:0.4"): [(0.80, 0.60, 100.0), (0.82, 0.62, 110.0)],
    ("dividemix", "sym:0.4"): [(0.85, 0.75, 400.0), (0.87, 0.77, 420.0)],
    ("wrongevent", "sym:0.4"): [(0.84, 0.80, 200.0), (0.86, 0.82, 190.0)],
    ("ce", "pairflip:0.4"): [(0.70, 0.55, 100.0)],
    ("wrongevent", "pairflip:0.4"): [(0.78, 0.77, 210.0)],
}
EPOCHS = 10


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """The tiny experiment, written once for the module (tests only read it); metrics go in one
    batch per run."""
    from mlflow.entities import Metric

    from datasets.fashion_mnist import FashionMNIST

    tmp_path = tmp_path_factory.mktemp("store")
    uri = tracking_uri(tmp_path)
    client = MlflowClient(uri)
    exp = client.create_experiment("tiny", artifact_location=(tmp_path / "art").as_uri())
    labels = FashionMNIST().read(None).train_labels
    refs = {"ce": "CE", "dividemix": "DivideMix"}  # as the trainer records them (Method.time_reference)
    for (method, setting), seeds in RUNS.items():
        for seed, (best, last, wall) in enumerate(seeds, 1):
            tags = {"noise": setting, **({TAG_TIME_REFERENCE: refs[method]} if method in refs else {})}
            if method == "wrongevent":
                tags[TAG_SCORE_ARTIFACTS] = json.dumps({"method/wrong_events.npy": "wrong events (count)"})
            run = client.create_run(exp, tags=tags)
            rid = run.info.run_id
            for k, v in {"method": method, "dataset": "fashion-mnist", "seed": seed, "epochs": EPOCHS}.items():
                client.log_param(rid, k, str(v))
            metrics = []
            for step in range(1, EPOCHS + 1):
                metrics.append(Metric("test_acc", best - 0.01 * (EPOCHS - step), 0, step))
                if method != "ce":
                    metrics.append(Metric("clean_auc", 0.9 + 0.001 * step, 0, step))
                    # a transition-matrix error falling to 0.5 / 0.2 in the last epoch
                    final = 0.5 if method == "dividemix" else 0.2
                    metrics.append(Metric("t_error", final + 0.01 * (EPOCHS - step), 0, step))
            for k, v in {"best_test_acc": best, "last_test_acc": last, "wall_clock_s": wall}.items():
                metrics.append(Metric(k, v, 0, EPOCHS))
            client.log_batch(rid, metrics=metrics)
            if method == "wrongevent":
                src = np.arange(50)
                given = labels[src].copy()
                given[:10] = (given[:10] + 1) % 10
                for name, arr in (("wrong_events", np.r_[np.full(10, 9), np.zeros(40)].astype(np.int32)),
                                  ("noisy_labels", given), ("train_source_index", src), ("clean_labels", labels[src])):
                    np.save(tmp_path / f"{name}.npy", arr)
                client.log_artifact(rid, str(tmp_path / "wrong_events.npy"), "method")
                for name in ("noisy_labels", "train_source_index", "clean_labels"):
                    client.log_artifact(rid, str(tmp_path / f"{name}.npy"), "noise")
            client.set_terminated(rid, "FINISHED")
    return tmp_path


def table(tmp, *argv: str) -> str:
    return table_cli(tmp, "tiny", *argv)


@pytest.mark.slow
def test_accuracy_table_is_mean_and_std_over_seeds(store):
    out = table(store, "--metric", "last_test_acc", "--format", "csv")
    t = pd.read_csv(io.StringIO(out), index_col=0)
    assert list(t.columns) == ["sym:0.4", "pairflip:0.4"]
    v = [0.80, 0.82]
    assert t.loc["wrongevent", "sym:0.4"] == f"{np.mean(v) * 100:.2f} ± {np.std(v, ddof=1) * 100:.2f} *"  # best
    assert t.loc["ce", "pairflip:0.4"] == "55.00"  # one seed: no spread
    assert t.loc["dividemix", "pairflip:0.4"] == "-"
    md = table(store)  # best_test_acc, markdown, best in bold
    assert "| dividemix | **86.00 ± 1.41** |" in md
    ranged = table(store, "--metric", "last_test_acc", "--range")  # [min, max] over seeds
    assert "| ce | 61.00 ± 1.41 [60.00, 62.00] | 55.00 |" in ranged


def test_time_table_ratios(store):
    out = table(store, "--time", "--format", "csv")
    t = pd.read_csv(io.StringIO(out), index_col=0)
    ce, dm, we = 105.0 / EPOCHS, 410.0 / EPOCHS, 195.0 / EPOCHS
    assert t.loc["dividemix", "s/epoch sym:0.4"] == pytest.approx(dm, abs=0.01)
    # wrongevent's ratios: mean over its settings (to DivideMix only where DivideMix ran)
    assert t.loc["wrongevent", "/ DivideMix"] == pytest.approx(we / dm, abs=1e-3)
    assert t.loc["wrongevent", "/ CE"] == pytest.approx(np.mean([we / ce, 210.0 / 100.0]), abs=1e-3)


def test_detection_table_and_latex(store):
    out = table(store, "--detection", "--format", "latex")
    assert "\\textbf{" in out and "0.910" in out and "ce" not in out.split("midrule")[1]


def test_transition_table_is_the_final_error_lowest_in_bold(store):
    out = table(store, "--transition")
    rows = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| ")}
    assert "ce" not in rows  # CE logs no t_error
    assert "0.500 ± 0.000" in rows["dividemix"] and "**0.200 ± 0.000**" in rows["wrongevent"]


def test_paper_numbers_beside_matching_settings(store, tmp_path):
    out = table(store, "--paper")
    assert "(paper" not in out and "(note" not in out  # Fashion-MNIST: nothing published
    from bench.records.published import published

    ref = published()
    ref = ref[ref["source"].str.contains("iTheresaApocalypse/IDO")]  # the IDO authors' README and responses
    # every method of the IDO paper's tables that the harness has (DeFT, which needs CLIP, is not)
    assert len(ref) >= 69 and set(ref["method"]) == {"ce", "elr", "dividemix", "wrongevent", "unicon", "disc",
                                                     "turn", "plc", "mcorrection", "gjs"}
    assert sorted(ref[ref["method"] == "unicon"]["acc"]) == [92.5, 93.2, 93.5, 93.9, 94.8]
    row = ref[(ref["dataset"] == "cifar100") & (ref["noise"] == "instance") & (ref["which"] == "best")
              & (ref["protocol"] == "resnet50-pretrained")]
    assert list(row["acc"]) == [83.8]


@pytest.mark.parametrize("kind", ["curves", "pareto", "scores", "detection"])
def test_every_plot_kind_renders(store, kind, tmp_path):
    out = tmp_path / "plots"
    assert main(["plot", "--experiment", "tiny", "--kind", kind, "--out", str(out),
                 "--tracking-uri", tracking_uri(store)]) == 0
    png = out / f"tiny-{kind}.png"
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_runs_with_other_settings_are_separate_rows_not_seeds(tmp_path):
    """The README's main job (60k samples, 5 epochs) and a `--subset 2000 --epochs 3` run, both
    seed 1 in one experiment, beside DivideMix on the subset: never averaged as seeds; the time
    ratio compares DivideMix with the CE run of the same protocol."""
    uri = tracking_uri(tmp_path)
    client = MlflowClient(uri)
    exp = client.create_experiment("bench", artifact_location=(tmp_path / "art").as_uri())
    base = {"dataset": "fashion-mnist", "noise": "sym", "noise_rate": "0.4", "seed": "1", "batch_size": "128",
            "lr": "0.001", "out": str(tmp_path / "runs"), "device": "cpu"}
    for method, epochs, subset, acc, wall in (("ce", 5, "", 0.8440, 60.0), ("ce", 3, "2000", 0.6152, 6.0),
                                              ("dividemix", 3, "2000", 0.7000, 15.0)):
        ref = {"ce": "CE", "dividemix": "DivideMix"}[method]
        rid = client.create_run(exp, tags={"noise": "sym:0.4", TAG_TIME_REFERENCE: ref}).info.run_id
        params = {**base, "method": method, "epochs": str(epochs), "subset": subset}
        if method == "dividemix":
            params["method.lambda_u"] = "25.0"
        for k, v in params.items():
            client.log_param(rid, k, v)
        for k, v in {"best_test_acc": acc, "last_test_acc": acc, "wall_clock_s": wall}.items():
            client.log_metric(rid, k, v, step=epochs)
        client.set_terminated(rid, "FINISHED")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["table", "--experiment", "bench", "--tracking-uri", uri, "--format", "csv"]) == 0
    t = pd.read_csv(io.StringIO(buf.getvalue()), index_col=0)
    assert set(t.index) == {"ce [epochs=3, subset=2000]", "ce [epochs=5, subset=-]", "dividemix"}
    assert t.loc["ce [epochs=5, subset=-]", "sym:0.4"] == "84.40 *"  # alone: no ± over "seeds", and the best
    assert t.loc["ce [epochs=3, subset=2000]", "sym:0.4"] == "61.52"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["table", "--experiment", "bench", "--tracking-uri", uri, "--format", "csv", "--time"]) == 0
    t = pd.read_csv(io.StringIO(buf.getvalue()), index_col=0)
    assert float(t.loc["dividemix", "/ CE"]) == pytest.approx((15.0 / 3) / (6.0 / 3), abs=1e-3)  # 2.5, like for like
    assert t.loc["ce [epochs=5, subset=-]", "/ DivideMix"] == "-"  # no DivideMix run of that protocol
    assert float(t.loc["ce [epochs=3, subset=2000]", "/ DivideMix"]) == pytest.approx(0.4, abs=1e-3)


def test_figures_are_print_ready(store, tmp_path):
    """300 dpi PNG and a PDF beside it; integer epoch ticks; a title that fits; each method one
    colour in every figure."""
    from PIL import Image

    from bench.records.figures import method_colours

    out = tmp_path / "plots"
    assert main(["plot", "--experiment", "tiny", "--kind", "curves", "--out", str(out),
                 "--tracking-uri", tracking_uri(store)]) == 0
    png, pdf = out / "tiny-curves.png", out / "tiny-curves.pdf"
    assert pdf.read_bytes()[:5] == b"%PDF-" and b"/CreationDate" not in pdf.read_bytes()  # the same bytes again
    dpi = Image.open(png).info["dpi"]
    assert round(dpi[0]) == 300
    assert method_colours(["wrongevent", "ce"]) == {k: v for k, v in method_colours(["ce", "dividemix",
                                                                                     "wrongevent"]).items()
                                                    if k != "dividemix"}
    assert len(set(method_colours(["ce", "coteaching", "dividemix", "elr", "wrongevent"]).values())) == 5


def test_no_two_methods_of_a_family_look_alike_and_the_highlighted_stand_apart():
    """Every family's small multiple draws each method in a colour of its own; the highlighted
    methods take red, blue and black, which no family colour is."""
    from bench.records.figures import HIGHLIGHT_COLOURS, method_colours, method_markers
    from bench.records.reports import families
    from bench.training.catalogue import catalogue

    names = catalogue().methods.names()
    colours, markers = method_colours(names), method_markers(names)
    for fam in set(families(names).values()):
        members = [m for m, f in families(names).items() if f == fam]
        assert len({colours[m] for m in members}) == len(members), fam
    assert not set(colours.values()) & set(HIGHLIGHT_COLOURS[:3])
    chosen = method_colours(["gce", "ce", "dividemix", "wrongevent"], highlight=["wrongevent", "dividemix", "ce"])
    assert [chosen[m] for m in ("wrongevent", "dividemix", "ce")] == ["#d62728", "#1f77b4", "#000000"]
    assert chosen["gce"] == colours["gce"]
    assert set(markers.values()) == {"o", "s", "^", "D"}  # one marker per family
    marked = method_markers(["gce", "ce", "dividemix", "wrongevent"], highlight=["wrongevent", "dividemix", "ce"])
    assert [marked[m] for m in ("wrongevent", "dividemix", "ce", "gce")] == ["*", "X", "P", "o"]


def test_each_panel_lists_only_its_own_rows(store, tmp_path, monkeypatch):
    """A panel's legend names the rows drawn in it, with their seed counts there (DivideMix ran
    at sym 40% only: the pair-flip panel does not list it)."""
    import bench.records.figures as figures

    legends = []

    def spy(fig, path, pdf=True):
        for ax in fig.axes:
            if ax.get_legend():
                drawn = sorted(line.get_label() for line in ax.get_lines())
                legends.append((sorted(t.get_text() for t in ax.get_legend().get_texts()), drawn))
        return []

    monkeypatch.setattr(figures, "save_figure", spy)
    assert main(["plot", "--experiment", "tiny", "--kind", "curves", "--methods", "ce,dividemix,wrongevent",
                 "--out", str(tmp_path), "--tracking-uri", tracking_uri(store)]) == 0
    assert len(legends) == 2 and all(shown == drawn for shown, drawn in legends), legends


def test_curves_have_integer_epoch_ticks_and_a_title_inside_the_figure(store, tmp_path, monkeypatch):
    import bench.records.figures as figures

    seen = {}
    real = figures.save_figure

    def spy(fig, path, pdf=True):
        fig.canvas.draw()
        ax = fig.axes[0]
        seen["ticks"] = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        box = fig._suptitle.get_window_extent()
        seen["title"] = (box.x0, box.x1, fig.bbox.width)
        return real(fig, path, pdf)

    monkeypatch.setattr(figures, "save_figure", spy)
    assert main(["plot", "--experiment", "tiny", "--kind", "curves", "--out", str(tmp_path),
                 "--tracking-uri", tracking_uri(store)]) == 0
    assert seen["ticks"] and all(float(t).is_integer() for t in seen["ticks"])
    x0, x1, width = seen["title"]
    assert 0 <= x0 and x1 <= width  # not cut at either edge


def test_unknown_experiment_and_kind(store, capsys):
    assert main(["table", "--experiment", "nope", "--tracking-uri", tracking_uri(store)]) == 2
    assert "valid: Default, tiny" in capsys.readouterr().err
    assert main(["plot", "--experiment", "tiny", "--kind", "bars", "--tracking-uri", tracking_uri(store)]) == 2


def test_a_field_added_later_at_its_default_groups_with_runs_logged_before_it():
    """Runs logged before ``test_subset`` existed (no such parameter) and runs at its default
    (None, which MLflow logs as "") share their group and their like-for-like protocol, so time
    ratios against an older CE run exist; a set value stays apart."""
    from bench.records.reports import label_rows

    base = {"method": "ce", "dataset": "fashion-mnist", "epochs": "30", "seed": "1"}
    rows = [{"method": m, "dataset": "fashion-mnist", "setting": "sym:0.4", "seed": 1,
             "params": {**base, "method": m, **extra}}
            for m, extra in (("ce", {}), ("sce", {"test_subset": ""}), ("gce", {"test_subset": "None"}),
                             ("elr", {"test_subset": "500"}))]
    df = label_rows(pd.DataFrame(rows))
    assert df["protocol"].iloc[0] == df["protocol"].iloc[1] == df["protocol"].iloc[2] != df["protocol"].iloc[3]


def test_methods_filter_and_its_error(store, capsys):
    out = table(store, "--methods", "ce,wrongevent")
    rows = [line.split("|")[1].strip() for line in out.splitlines() if line.startswith("| ") and "method" not in line]
    assert sorted(rows) == ["ce", "wrongevent"]
    assert main(["table", "--experiment", "tiny", "--tracking-uri", tracking_uri(store), "--methods", "ce,jocor"]) == 2
    err = capsys.readouterr().err
    assert "no finished run of jocor" in err and "its methods: ce, dividemix, wrongevent" in err


@pytest.mark.parametrize("kind,limit,panel_legends,figure_legends", [
    ("curves", 8, True, 0), ("curves", 1, False, 1), ("pareto", 8, False, 1)])
def test_many_rows_get_one_legend_beside_the_panels(store, tmp_path, monkeypatch, kind, limit, panel_legends,
                                                    figure_legends):
    """Curves keep a legend per panel for a few rows and one figure legend for many (thirty
    methods would cover the panels); the pareto figure has one legend, a panel per setting."""
    import bench.records.figures as figures

    seen = {}
    real = figures.save_figure

    def spy(fig, path, pdf=True):
        seen["panel"] = any(ax.get_legend() is not None for ax in fig.axes)
        seen["figure"] = len(fig.legends)
        seen["panels"] = sum(ax.get_visible() for ax in fig.axes)
        return real(fig, path, pdf)

    monkeypatch.setattr(figures, "save_figure", spy)
    monkeypatch.setattr(figures, "LEGEND_PER_PANEL", limit)
    assert main(["plot", "--experiment", "tiny", "--kind", kind, "--out", str(tmp_path),
                 "--tracking-uri", tracking_uri(store)]) == 0
    assert (seen["panel"], seen["figure"], seen["panels"]) == (panel_legends, figure_legends, 2)  # sym, pairflip


def test_a_long_title_stays_clear_of_the_legend_beside_the_panels():
    """Thirty methods put one legend at the right of the panels; the title, centred over the
    whole figure, wraps short enough not to run into it (it did, at full width)."""
    import bench.records.figures as figures

    text = ("Test accuracy per epoch (mean over seeds, band: min-max), experiment fmnist-cpu (losses methods, "
            "with wrongevent, dividemix, ce)")
    for label in ("ce", "dividemix [views=official]", "dividemix [views=official] @ AMD EPYC (1 thread)"):
        plt, fig, axes = figures._panels(4)
        for ax in axes:
            ax.plot([0, 1], [0, 1], label=label)
        fig.legend(*axes[0].get_legend_handles_labels(), fontsize=8, loc="outside right upper")
        figures._title(fig, text)
        fig.canvas.draw()
        title, legend = fig._suptitle.get_window_extent(), fig.legends[0].get_window_extent()
        plt.close(fig)
        assert title.x1 < legend.x0 or title.y0 > legend.y1, label
        assert "fmnist-cpu" in fig._suptitle.get_text()  # never broken at its hyphen
