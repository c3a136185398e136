"""The published numbers (bench/records/refdata/published.csv): every row parses and has its
source; `bench list published` filters them; `bench table --paper` sets beside a cell only the
numbers of its protocol (data set, noise model and rate, backbone, best or last), `--gap` adds
ours minus published, and a cell whose setting has published numbers of other protocols shows
none and says why in a note under the table, in md, latex and csv."""
from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from bench.cli import main
from bench.common.noise_models import NOISE_MODELS
from bench.records.published import PUBLISHED_CSV, WHICH, published, run_protocol
from bench.training.catalogue import catalogue
from datasets.base import DATASETS
from tests.helpers import tracking_uri

ROOT = Path(__file__).resolve().parent.parent
PER_METHOD = {"ce": 52, "dividemix": 35, "elr": 32, "wrongevent": 37, "elr_plus": 30, "mcorrection": 26, "gce": 23,
              "sce": 21, "coteaching": 19, "coteaching_plus": 19, "disc": 15, "unicon": 14, "pes_semi": 13,
              "sop_plus": 13, "bootstrap": 12, "forward": 11, "sop": 8, "promix": 8, "mixup": 6, "cores": 6, "gjs": 4,
              "plc": 4, "trevision": 4, "peer": 4, "nls": 4, "jocor": 4, "turn": 3}
PROTOCOLS = {"preact-resnet18", "resnet34-cifar", "resnet34-tv", "resnet34", "resnet50", "resnet50-pretrained",
             "vit-b16-pretrained", "cnn8", "inception-resnet-v2", "unknown"}


def test_every_row_parses_and_has_its_source():
    df = published()
    assert len(df) == 427  # 421 gathered + IDO's six Tiny-ImageNet numbers (its README)
    assert df.groupby("method").size().to_dict() == PER_METHOD
    assert set(df["method"]) <= set(catalogue().methods.names()) and set(df["dataset"]) <= set(DATASETS.names())
    assert (df["source"].str.len() > 20).all() and (df["backbone"] != "").all()
    assert set(df["noise"]) <= set(NOISE_MODELS) | {"asym-blocks"}
    assert set(df["which"]) <= set(WHICH) and set(df["protocol"]) <= PROTOCOLS
    assert set(df["own"]) == {"yes", "no"} and set(df["uncertain"]) == {"yes", "no"}
    assert df["acc"].between(1, 100).all() and (df["std"].dropna() >= 0).all()
    synthetic = df["noise"] != "none"
    assert df.loc[synthetic, "rate"].between(0.1, 0.9).all() and df.loc[~synthetic, "rate"].isna().all()
    assert set(df.loc[df["dataset"] == "cifar10n", "labels"]) == {"aggre", "random1", "worse"}
    assert (df["noise_basis"].str.split(":").str[0].isin(["code", "assumed", "unknown", "data"])).all()
    # the std the source reports, e.g. ELR Table 1 CE sym 0.8 on CIFAR-10: 53.82 ± 1.04
    row = df[(df["method"] == "ce") & (df["dataset"] == "cifar10") & (df["acc"] == 53.82)]
    assert list(row["std"]) == [1.04] and list(row["noise"]) == ["sym"]  # GCE's convention: not stated


def test_the_project_cites_primary_sources_only():
    """Users have none of the session's reference notes: no file cites them."""
    for path in [PUBLISHED_CSV, ROOT / "README.md", *(ROOT / "bench").rglob("*.py")]:
        text = path.read_text()
        assert "shared" + "/reference" not in text and "../" + "shared" not in text, path


def test_noise_conventions_follow_the_code_that_made_the_number():
    df = published().set_index(["method", "dataset", "acc"])
    assert df.loc[("dividemix", "cifar10", 94.6), "noise"] == "sym-biased"  # DivideMix draws from all C
    assert df.loc[("wrongevent", "cifar100", 85.1), "noise"] == "sym-biased"  # IDO's randint(0, C)
    assert df.loc[("coteaching", "cifar10", 82.18), "noise"] == "sym"  # the other C-1 classes
    assert df.loc[("elr", "cifar100", 73.26), "noise"] == "asym-blocks"  # index blocks, not superclasses
    assert df.loc[("wrongevent", "cifar10", 95.3), "noise"] == "pairflip"  # IDO's CIFAR-10 "asym"


@pytest.mark.parametrize("params,key", [
    ({"backbone": "preact_resnet18", "pretrained": "False"}, "preact-resnet18"),
    ({"backbone": "timm:resnet50", "pretrained": "True"}, "resnet50-pretrained"),
    ({"backbone": "timm:resnet50.tv_in1k", "pretrained": "False"}, "resnet50"),
    ({"backbone": "timm:vit_base_patch16_224", "pretrained": "True"}, "vit-b16-pretrained"),
    ({"backbone": "timm:resnet34", "pretrained": "False"}, "resnet34-tv"),
    ({"backbone": "timm:resnet50", "pretrained": "True", "weights": "/w.pt"}, "resnet50-own-weights"),
])
def test_run_protocol_from_logged_params(params, key):
    assert run_protocol(params) == key


def cli(*argv: str) -> tuple[int, str]:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(list(argv))
    return code, buf.getvalue()


def test_bench_list_published_filters(capsys):
    code, out = cli("list", "published", "--method", "dividemix", "--dataset", "cifar10")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("published: 13 test accuracies in %")
    rows = [line.split() for line in lines[1:]]
    assert len(rows) == 13 and {r[0] for r in rows} == {"dividemix"} and {r[1] for r in rows} == {"cifar10"}
    assert ["dividemix", "cifar10", "sym-biased:0.5", "94.6", "best", "preact-resnet18", "own"] == rows[8][:7]
    assert ["sym-biased:0.5", "94.4!", "last"] == rows[9][2:5]  # a second-hand quote: uncertain
    assert ["pairflip:0.4", "93.1?", "unspecified", "resnet50-pretrained", "3rd"] == rows[3][2:7]
    code, out = cli("list", "published", "--dataset", "cifar10n", "--method", "ce")
    assert "87.77 ± 0.38" in out and "label=worse" in out


@pytest.mark.parametrize("argv", [("list", "published", "--method", "dividmix"),
                                  ("list", "published", "--dataset", "cifar"),
                                  ("list", "methods", "--method", "ce")])
def test_bench_list_published_bad_filters_exit_2_with_one_line(argv, capsys):
    assert main(list(argv)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("bench: error:") and len(err.splitlines()) == 1


RUNS = [  # method, setting, backbone, pretrained, [(best, last)] per seed
    ("dividemix", "sym-biased:0.5", "preact_resnet18", False, [(0.94, 0.93), (0.95, 0.94)]),
    ("dividemix", "sym:0.5", "timm:resnet50", True, [(0.90, 0.89)]),
    ("wrongevent", "sym-biased:0.2", "timm:resnet50", True, [(0.86, 0.84)]),
    ("ce", "sym-biased:0.2", "timm:resnet50", True, [(0.93, 0.92)]),
]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pub")
    client = MlflowClient(tracking_uri(tmp))
    exp = client.create_experiment("pub", artifact_location=(tmp / "art").as_uri())
    for method, setting, backbone, pretrained, seeds in RUNS:
        noise, _, rate = setting.partition(":")
        dataset = "cifar100" if method == "wrongevent" else "cifar10"
        for seed, (best, last) in enumerate(seeds, 1):
            rid = client.create_run(exp, tags={"noise": setting}).info.run_id
            epochs = {"dividemix": 300, "wrongevent": 15}.get(method, 5)  # the published protocols' epochs
            for k, v in {"method": method, "dataset": dataset, "seed": seed, "epochs": epochs, "noise": noise,
                         "noise_rate": rate, "backbone": backbone, "pretrained": pretrained}.items():
                client.log_param(rid, k, str(v))
            for k, v in {"best_test_acc": best, "last_test_acc": last, "wall_clock_s": 10.0}.items():
                client.log_metric(rid, k, v, step=5)
            client.set_terminated(rid, "FINISHED")
    return tmp


def table(tmp: Path, *argv: str) -> str:
    code, out = cli("table", "--experiment", "pub", "--tracking-uri", tracking_uri(tmp), *argv)
    assert code == 0
    return out


def csv_table(out: str) -> pd.DataFrame:
    return pd.read_csv(io.StringIO(out), index_col=0, comment="#")


def notes(out: str) -> list[str]:
    return [line[2:] for line in out.splitlines() if line.startswith("# ")]


def test_a_matching_protocol_shows_the_published_number_and_the_gap(store):
    t = csv_table(table(store, "--paper", "--format", "csv"))
    # DivideMix's own protocol: PreAct ResNet-18, its sym convention, best epoch: 96.1 / 94.6 / 93.2
    assert t.loc["dividemix", "cifar10 sym-biased:0.5"] == "94.50 ± 0.71 (paper 94.6) *"  # * alone: the best
    assert t.loc["wrongevent", "cifar100 sym-biased:0.2"] == "86.00 (paper 85.1) *"  # IDO's README, ResNet-50
    out = table(store, "--gap", "--format", "csv")  # --gap implies --paper
    t = csv_table(out)
    assert t.loc["dividemix", "cifar10 sym-biased:0.5"] == "94.50 ± 0.71 (paper 94.6, gap -0.10) *"  # 94.50 - 94.6
    assert t.loc["wrongevent", "cifar100 sym-biased:0.2"] == "86.00 (paper 85.1, gap +0.90) *"  # 86.00 - 85.1
    # the IDO authors' CE run: best or last not stated, their sym convention assumed: marked ?
    assert t.loc["ce", "cifar10 sym-biased:0.2"] == "93.00 (paper 93.2?, gap -0.20) *"
    assert "gap: ours minus published, in points." in notes(out)
    assert any(n.startswith("?: the source leaves part of its protocol unstated") for n in notes(out))
    # last epoch: DivideMix's last-epoch number (a second-hand quote, marked !), and CE's unspecified one again
    t = csv_table(table(store, "--paper", "--gap", "--metric", "last_test_acc", "--format", "csv"))
    assert t.loc["dividemix", "cifar10 sym-biased:0.5"] == "93.50 ± 0.71 (paper 94.4!, gap -0.90) *"
    assert t.loc["ce", "cifar10 sym-biased:0.2"] == "92.00 (paper 93.2?, gap -1.20) *"


def test_an_unlike_protocol_shows_none_and_a_note_saying_why(store):
    out = table(store, "--paper", "--format", "csv")
    t = csv_table(out)
    # a pretrained ResNet-50 with the harness's exact sym: DivideMix's numbers are PreAct ResNet-18, sym-biased
    assert t.loc["dividemix", "cifar10 sym:0.5"] == "90.00 (note 1) *"
    note = next(n for n in notes(out) if n.startswith("note 1: "))
    assert note == ("note 1: dividemix cifar10 sym:0.5: no published number of this protocol; published "
                    "94.6 (best, preact-resnet18, sym-biased:0.5: noise model sym-biased; backbone), "
                    "94.4! (last, preact-resnet18, sym-biased:0.5: noise model sym-biased; backbone; last vs best); "
                    "this run: resnet50-pretrained, best, sym:0.5.")
    # best against last: IDO's README reports the best epoch only
    t = csv_table(out := table(store, "--paper", "--metric", "last_test_acc", "--format", "csv"))
    assert t.loc["wrongevent", "cifar100 sym-biased:0.2"] == "84.00 (note 2) *"
    assert ("note 2: wrongevent cifar100 sym-biased:0.2: no published number of this protocol; published 85.1 "
            "(best, resnet50-pretrained, sym-biased:0.2: best vs last), 92.7 (best, vit-b16-pretrained, "
            "sym-biased:0.2: backbone; best vs last); this run: resnet50-pretrained, last, "
            "sym-biased:0.2.") in notes(out)


def test_notes_render_in_md_and_latex(store):
    md = table(store, "--gap")
    assert "| dividemix | 90.00 (note 1) | - | 94.50 ± 0.71 (paper 94.6, gap -0.10) | - |" in md.replace("**", "")
    assert "\n- note 1: dividemix cifar10 sym:0.5: no published number of this protocol" in md
    assert "\n- gap: ours minus published, in points.\n" in md
    tex = table(store, "--gap", "--format", "latex")
    body, _, tail = tex.partition("\\end{tabular}")
    assert "94.50 $\\pm$ 0.71 (paper 94.6, gap -0.10)" in body
    assert tail.lstrip().startswith("\\par\\smallskip\n{\\footnotesize\n") and tail.rstrip().endswith("\\par}")
    assert "note 1: dividemix cifar10 sym:0.5" in tail and "python -m bench list published" in tail
    assert "_" not in tail.replace("\\_", "")  # escaped for LaTeX


def test_epochs_variants_and_subsets_keep_a_number_away():
    """DivideMix's Table 1 trained 300 epochs; M-correction's README rows name their variant; CORES*
    adds a phase the harness does not run; a run on a subset is not the published protocol."""
    from bench.records.published import candidates, cell_of, differences

    ref = published()
    base = {"backbone": "preact_resnet18", "pretrained": "False", "epochs": "300"}

    def why(method, setting, **params):
        cell = cell_of(method, "cifar10", setting, {**base, **params}, "best_test_acc")
        return [differences(r, cell) for r in candidates(ref, cell).itertuples()]

    assert [] in why("dividemix", "sym-biased:0.5")  # DivideMix's own 94.6: matches
    assert ["300 epochs vs 20"] in why("dividemix", "sym-biased:0.5", epochs="20")
    assert ["this run's --subset 5000"] in why("dividemix", "sym-biased:0.5", subset="5000")
    hard = why("mcorrection", "sym:0.2", **{"method.variant": "hard"})
    assert [] in hard and ["variant method.variant=dynamic"] in hard  # M-DYR-H matches, MD-DYR-SH does not
    cores = ref[(ref["method"] == "cores") & ref["variant"].str.startswith("CORES*")]
    assert len(cores) == 4
    cell = cell_of("cores", "cifar10n", "none", {"backbone": "resnet34_cifar", "epochs": "100",
                                                "dataset.label": "worse"}, "best_test_acc")
    assert all(any(d.startswith("variant CORES*") for d in differences(r, cell))
               for r in candidates(ref, cell).itertuples() if r.variant)


def test_paper_with_another_kind_of_table_is_one_line(store, capsys):
    """--paper and --gap belong to the accuracy table; elsewhere they were silently ignored."""
    for extra in (["--paper", "--compare", "wrongevent"], ["--gap", "--time"], ["--paper", "--aggregate"]):
        code = main(["table", "--experiment", "pub", "--tracking-uri", tracking_uri(store), *extra])
        err = capsys.readouterr().err.strip()
        assert code == 2 and "set published accuracies beside the accuracy table" in err and "\n" not in err, err
        assert f"not with {extra[1]}" in err


def test_cifar_n_label_sets_are_columns_and_meet_their_published_numbers(tmp_path):
    """Each CIFAR-N label set is a column (`label=worse`, the data set's default where a run
    gave none), as the leaderboard's, not a row suffix; its cells meet the published numbers."""
    client = MlflowClient(tracking_uri(tmp_path))
    exp = client.create_experiment("cn", artifact_location=(tmp_path / "art").as_uri())
    for seed, label, acc in ((1, "aggre", 0.90), (2, "aggre", 0.92), (1, "worse", 0.80), (2, None, 0.78)):
        rid = client.create_run(exp, tags={"noise": "none"}).info.run_id
        params = {"method": "ce", "dataset": "cifar10n", "seed": seed, "epochs": 100, "noise": "none",
                  "backbone": "resnet34_cifar", **({"dataset.label": label} if label else {})}
        for k, v in params.items():
            client.log_param(rid, k, str(v))
        for k in ("best_test_acc", "last_test_acc"):
            client.log_metric(rid, k, acc, step=100)
        client.log_metric(rid, "wall_clock_s", 10.0, step=100)
        client.set_terminated(rid, "FINISHED")
    code, out = cli("table", "--experiment", "cn", "--tracking-uri", tracking_uri(tmp_path), "--format", "csv",
                    "--paper")
    t = csv_table(out)
    assert code == 0 and list(t.index) == ["ce"], out
    assert list(t.columns) == ["label=aggre", "label=worse"]
    assert t.loc["ce", "label=aggre"].startswith("91.00 ± 1.41 (paper")  # CE's published CIFAR-10N aggre
    assert t.loc["ce", "label=worse"].startswith("79.00 ± 1.41 (paper")  # one run named it, one took the default
