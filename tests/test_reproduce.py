"""`bench reproduce NAME`: every published table's plan (grid, runs, estimate) without data, the
tables' consistency with the registries and the published numbers, the CIFAR-N protocol's pieces
(ResNet-34 with the CIFAR stem, the step schedule), and one reproduction end to end on the CIFAR-N
fixture layout (tiny, chance accuracy expected), its table with the published column."""
from __future__ import annotations

import re

import pytest
import torch

from bench.cli import main
from bench.drivers.reproduce import REPRODUCTIONS, Reproduction, backbone_of, estimate_hours
from bench.records.published import published, run_protocol
from bench.training.config import RunConfig, step_milestones
from datasets.noise import NOISE_MODELS
from tests.fixtures_data import make_cifar10n, make_cifar100n


@pytest.mark.parametrize("name", list(REPRODUCTIONS))
def test_every_table_plans_its_grid_and_estimate_without_data(name, capsys):
    assert main(["reproduce", name, "--dry-run"]) == 0
    out = capsys.readouterr().out
    r = REPRODUCTIONS[name]
    n_runs = sum(len(p.noise.split(",")) for p in r.parts) * len(r.methods) * len(r.seeds.split(","))
    assert re.search(rf"^{n_runs} runs; estimate: [\d,.]+ GPU-hours \(", out, re.M), out
    for p in r.parts:
        for setting in p.noise.split(","):
            assert re.search(rf"^  {re.escape(p.label)}\s+{re.escape(setting)}\s", out, re.M), (p.label, setting)


def test_bench_list_tables_lists_every_reproduction(capsys):
    assert main(["list", "tables"]) == 0
    out = capsys.readouterr().out
    assert [line.split()[0] for line in out.splitlines()[1:]] == list(REPRODUCTIONS)


@pytest.mark.parametrize("argv,expected", [
    (["nope"], "no such table; valid: ido-cifar100"),
    (["cifar-n", "--methods", "ce,dividemix"], "--methods dividemix: not in table cifar-n"),
    (["cifar-n", "--fidelity", "bogus"], "--fidelity bogus: valid values are paper, official"),
    (["cifar-n", "--hours-per-run", "-1"], "--hours-per-run -1.0: must be a positive number of hours"),
])
def test_what_cannot_be_planned_is_one_line(argv, expected, capsys):
    assert main(["reproduce", *argv, "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and expected in err, err


@pytest.mark.parametrize("name", list(REPRODUCTIONS))
def test_every_table_is_registered_and_has_published_numbers_of_its_protocol(name):
    from bench.training.catalogue import catalogue
    from datasets.base import DATASETS

    r = REPRODUCTIONS[name]
    for m in r.methods:
        assert m in catalogue().methods, m
    run = r.run
    key = run_protocol({"backbone": backbone_of(run), "pretrained": str(run.get("preset", "").startswith("paper"))})
    ref = published()
    for p in r.parts:
        assert p.dataset in DATASETS.names()
        for setting in p.noise.split(","):
            assert setting.split(":")[0] in NOISE_MODELS, setting
        mine = ref[(ref["dataset"] == p.dataset) & (ref["protocol"] == key) & ref["method"].isin(r.methods)]
        assert len(mine), (name, p.dataset, key)  # the table has something to compare against


def test_the_command_line_overrides_the_protocol_and_says_so(capsys):
    assert main(["reproduce", "dividemix-cifar", "--dry-run", "--epochs", "2", "--seeds", "1",
                 "--methods", "ce,dividemix", "--data-root", "/nowhere"]) == 0
    out = capsys.readouterr().out
    assert "changed from the published protocol: epochs 300 -> 2" in out
    assert "data_root" not in out.split("changed from")[-1]  # where it runs is not a change of protocol
    assert "14 runs; estimate:" in out  # 7 settings x 2 methods x 1 seed
    assert "their own official learning-rate plan, not --scheduler none (lr_schedule=official" in out
    assert out.split("lr_schedule=trainer for the run's): ")[1].split("\n")[0] == "dividemix"


def test_the_estimate_is_runs_times_hours_or_throughput_arithmetic():
    r = REPRODUCTIONS["dividemix-cifar"]
    hours, how = estimate_hours(r, r.run, ["ce"], 1, 0.5)
    assert hours == pytest.approx(7 * 0.5) and "--hours-per-run" in how
    hours, how = estimate_hours(r, r.run, ["ce"], 1, None)  # 7 settings x 300 epochs x 50k / 8,280 images/s
    assert hours == pytest.approx(7 * 300 * 50_000 / 8_280 / 3600)
    hours, how = estimate_hours(Reproduction("x", "t", "s", ("ce",), r.parts, {"backbone": "smallcnn"}),
                                {"backbone": "smallcnn"}, ["ce"], 1, None)
    assert hours is None and "--hours-per-run" in how


def test_resnet34_cifar_and_the_step_schedule():
    from bench.backbones import BACKBONES

    net = BACKBONES.get("resnet34_cifar")(num_classes=10)
    assert sum(p.numel() for p in net.parameters()) == 21_282_122  # the CIFAR ResNet-34's 21.28M
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert run_protocol({"backbone": "resnet34_cifar", "pretrained": "False"}) == "resnet34-cifar"
    assert step_milestones("step:0.6", 100) == [60] and step_milestones("step:0.5,0.75", 300) == [150, 225]
    assert main(["run", "--method", "ce", "--scheduler", "step:0.9,0.5"]) == 2
    from bench.training.trainer import make_scheduler

    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    sched = make_scheduler(RunConfig(method="ce", scheduler="step:0.6"), opt, 10)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:6] == [0.1] * 6 and lrs[6:] == pytest.approx([0.01] * 4)


@pytest.mark.slow
def test_a_reproduction_runs_end_to_end_on_the_fixture_layout_and_writes_its_table(tmp_path, capsys):
    """cifar-n on the CIFAR-10N/100N fixtures (a few dozen images): 4 runs of CE, one epoch each;
    the table has CE's published CIFAR-N numbers beside its cells and the gap."""
    root = tmp_path / "data"
    root.mkdir()
    make_cifar10n(root)
    make_cifar100n(root)
    table = tmp_path / "cifar-n.md"
    argv = ["reproduce", "cifar-n", "--methods", "ce", "--seeds", "1", "--epochs", "1", "--batch-size", "16",
            "--data-root", str(root), "--tracking-uri", f"sqlite:///{tmp_path}/m.db",
            "--out", str(tmp_path / "runs"), "--table-out", str(table)]
    assert main(argv) == 0
    text = table.read_text()
    assert "| ce " in text
    # CE's CIFAR-N numbers are of 100 epochs (the leaderboard) and 200 (a reproduction): a 1-epoch run
    # is set beside neither; the note under the table gives them and says why
    assert "87.77" in text and "100 epochs vs 1" in text and "(paper" not in text, text
    # one log per run, though the four share a label (ce none seed 1): its request hash tells them apart
    logs = list((tmp_path / "sweeps" / "reproduce-cifar-n").glob("ce_none_seed_1-*.log"))
    assert len(logs) == 4 and all(log.read_text().count("$ ") == 1 for log in logs), logs
    capsys.readouterr()
    assert main(argv) == 0  # again: every run is finished and skipped, the table written again
    out = capsys.readouterr().out
    assert out.count("skip (finished)") == 4 and "runs finished" not in out, out


def test_a_method_with_its_own_run_options_gets_a_sweep_of_its_own(monkeypatch, capsys):
    """Co-teaching+'s official loss is the official Adam recipe's: under DivideMix's SGD protocol it
    runs the paper's loss in a sweep of its own; the other methods share one sweep per data set."""
    import bench.drivers.sweep as sweep
    from bench.drivers import reproduce

    calls = []
    monkeypatch.setattr(sweep, "run_sweep", lambda args, base: calls.append((args.methods, args.dataset, base)) or 0)
    monkeypatch.setattr(reproduce, "published_table", lambda r, args: "table")
    assert main(["reproduce", "dividemix-cifar", "--methods", "ce,coteaching_plus,dividemix", "--seeds", "1"]) == 0
    assert "coteaching_plus runs with fidelity=paper" in capsys.readouterr().out
    assert [(m, d) for m, d, _ in calls] == [("ce,dividemix", "cifar10"), ("coteaching_plus", "cifar10"),
                                             ("ce,dividemix", "cifar100"), ("coteaching_plus", "cifar100")]
    assert calls[0][2]["fidelity"] == "official" and calls[1][2]["fidelity"] == "paper"
    assert main(["run", "--method", "ce", "--scheduler", "step:0.5,0.5"]) == 2  # shares must rise
    assert calls[0][2]["backbone"] == "preact_resnet18" and calls[0][2]["epochs"] == 300


def test_a_sweeps_dry_run_counts_runs_per_method_and_estimates_them(tmp_path, capsys):
    """bench sweep --dry-run: the runs to do per method, and GPU-hours from --hours-per-run, from the
    measured throughput where the backbone and the data's size are known, or what to give."""
    base = ["sweep", "--methods", "ce,dividemix", "--preset", "fmnist-cpu", "--noise", "sym:0.2,sym:0.4",
            "--seeds", "1,2", "--dry-run", "--experiment", "dr", "--tracking-uri", f"sqlite:///{tmp_path}/m.db"]
    assert main(base) == 0
    out = capsys.readouterr().out
    assert "to run, per method: ce 4, dividemix 4" in out
    assert "estimate: no throughput measured for smallcnn: give --hours-per-run H" in out
    assert main([*base, "--hours-per-run", "0.25"]) == 0
    assert "estimate: 2.00 GPU-hours (8 runs x 0.25 h (--hours-per-run))" in capsys.readouterr().out
    assert main([*base, "--backbone", "preact_resnet18"]) == 0  # 4,000 images x 30 epochs / 8,280 images/s
    expected = 4 * 4000 * 30 / 8280 * (1.0 + 8.69) / 3600
    assert f"estimate: {expected:.2f} GPU-hours (training passes only" in capsys.readouterr().out
    assert main([*base, "--hours-per-run", "0"]) == 2


@pytest.mark.slow
def test_sweep_status_names_a_failed_point_and_retry_failed_reruns_only_it(tmp_path, capsys):
    """DivideMix's 10-epoch warm-up leaves a 1-epoch run nothing to train: that point fails; --status
    shows it with its error line beside CE's finished point; --retry-failed runs it alone again."""
    base = ["sweep", "--methods", "ce,dividemix", "--preset", "fmnist-cpu", "--noise", "sym:0.4", "--epochs", "1",
            "--subset", "200", "--test-subset", "100", "--experiment", "st", "--out", str(tmp_path / "runs"),
            "--tracking-uri", f"sqlite:///{tmp_path}/m.db"]
    assert main(["sweep", *base[1:], "--status"]) == 0
    assert "2 runs: 0 finished, 0 running, 0 failed, 2 not started" in capsys.readouterr().out
    assert main(base) == 1
    capsys.readouterr()
    assert main([*base, "--status"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^finished\s+ce sym:0.4 seed 1$", out, re.M), out
    assert re.search(r"^failed\s+dividemix sym:0.4 seed 1: .*warm-up of 10 epochs leaves no training epoch", out,
                     re.M), out
    assert "2 runs: 1 finished, 0 running, 1 failed, 0 not started" in out
    assert main([*base, "--retry-failed"]) == 1  # it fails again, alone
    out = capsys.readouterr().out
    assert re.search(r"^skip \(finished\)\s+ce sym:0.4 seed 1$", out, re.M)
    assert "sweep done: 0 runs finished, 1 failed" in out
