"""`--fidelity paper|official`: one switch from each method's paper reading to its official code's.

Each method names the options `official` sets (``Method.official_options``); the resolver sets
them unless ``--set`` gives them, and the run's configuration (its hash, its logged parameters,
its saved config.json) names the fidelity and the options. Checked here without training through
the resolver, then for several methods the official branch itself, as their own tests check it
(tests/test_coteachingplus.py, test_trevision.py, test_pes.py, test_promix.py,
test_wrongevent.py, test_mcorrection.py), on methods built from a request with
``fidelity="official"``.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math

import pytest
import torch
import torch.nn.functional as F
from helpers import TableNet, fake_context, tracking_uri

from bench.cli import main
from bench.common.options import build_options
from bench.training.catalogue import catalogue, method_class
from bench.training.config import ADDED_LATER, RunConfig, result_params
from bench.training.resolve import resolve, resolve_resume
from bench.training.trainer import Trainer
from methods.base import Phase

DECLARING = [n for n in catalogue().methods.names() if catalogue().methods.get(n).official]


def resolved(method: str, fidelity: str | None = "official", sets: tuple[str, ...] = (), **values) -> RunConfig:
    """The configuration a `bench run --method METHOD --fidelity F --set ...` resolves to."""
    request = {"method": method, "fidelity": fidelity, "sets": list(sets), **values}
    return resolve(request).config


def built(method: str, ctx, fidelity: str = "official", sets: tuple[str, ...] = ()):
    """The method the trainer would build from the resolved options, in a hand-made context."""
    cls = method_class(method)
    options = resolved(method, fidelity, sets).method_options
    m = cls(build_options(cls, {k: str(v) for k, v in options.items()}), ctx)
    m.setup()
    return m


def trainer(tmp_path, method: str, fidelity: str = "official", **values) -> Trainer:
    """A built Trainer (tests/helpers.py make_trainer) of a request resolved as `bench run` resolves it."""
    spec = resolve({"method": method, "fidelity": fidelity, "out": str(tmp_path / "runs"), "progress": False,
                    **values})
    run_dir = tmp_path / "runs" / "r"
    run_dir.mkdir(parents=True)
    return Trainer(spec, run_dir).build()


# --- the configuration -------------------------------------------------------------------------------


def test_the_declaring_methods_are_those_with_paper_readings():
    assert DECLARING == ["coteaching_plus", "gjs", "mcorrection", "pes", "pes_semi", "plc", "promix", "trevision",
                         "wrongevent"]


def test_fidelity_is_hashed_and_logged_and_paper_hashes_as_before_the_field():
    paper, official = resolve({"method": "ce"}), resolve({"method": "ce", "fidelity": "official"})
    assert paper.config.fidelity == "paper" and official.config.fidelity == "official"
    assert paper.request_hash != official.request_hash
    assert paper.config.flatten()["fidelity"] == "paper" and official.config.flatten()["fidelity"] == "official"
    # at paper the hash is the one runs logged before the field existed
    old = {k: v for k, v in paper.config.to_dict().items() if k not in ADDED_LATER}
    assert paper.config.hash() == hashlib.sha1(json.dumps(old, sort_keys=True, default=str).encode()).hexdigest()[:16]
    # and runs logged before it compare equal to runs at paper
    logged = paper.config.flatten()
    before = {k: v for k, v in logged.items() if k != "fidelity"}
    assert result_params(logged) == result_params(before)
    assert result_params(official.config.flatten()) != result_params(before)


@pytest.mark.parametrize("method", DECLARING)
def test_official_resolves_to_the_declared_options(method):
    declared = method_class(method).official_options
    assert declared == catalogue().methods.get(method).official_options
    cfg = resolved(method)
    assert cfg.method_options == declared
    flat = cfg.flatten()
    assert all(flat[f"method.{k}"] == v for k, v in declared.items())
    cls = method_class(method)
    opts = build_options(cls, {k: str(v) for k, v in cfg.method_options.items()})
    for key, value in declared.items():
        assert str(getattr(opts, key)) == value, key
    paper = resolved(method, "paper")
    assert not set(paper.method_options) & set(declared)
    assert paper.hash() != cfg.hash()
    assert resolved(method, None).hash() == paper.hash()  # paper is the default


def test_an_explicit_set_wins():
    cfg = resolved("promix", sets=("fmix_mask=paper", "rho=0.6"))
    assert cfg.method_options == {"beta_reset": "official", "fmix_mask": "paper", "warmup_penalty": "official",
                                  "rho": "0.6"}
    assert resolved("coteaching_plus", sets=("loss=paper",)).method_options == {"loss": "paper"}
    # under paper the options are the user's alone
    assert resolved("promix", "paper", sets=("rho=0.6",)).method_options == {"rho": "0.6"}


def test_a_method_without_declarations_gets_no_option():
    assert resolved("ce").method_options == {} and resolved("dividemix").method_options == {}


def test_a_bogus_fidelity_is_one_line_exit_2(tmp_path, capsys):
    for argv in (["run", "--method", "ce", "--fidelity", "bogus"],
                 ["run", "--method", "ce", "--fidelity", "Official"],
                 ["sweep", "--methods", "ce", "--noise", "none", "--fidelity", "paper,bogus", "--dry-run",
                  "--tracking-uri", tracking_uri(tmp_path), "--out", str(tmp_path / "runs")],
                 ["study", "--method", "ce", "--fidelity", "bogus", "--storage", f"sqlite:///{tmp_path}/o.db"]):
        assert main(argv) == 2
        cap = capsys.readouterr()
        bad = argv[argv.index("--fidelity") + 1].split(",")[-1]
        assert cap.err.strip().splitlines() == [f"bench: error: --fidelity {bad}: valid values are paper, official"]


def test_bench_list_methods_verbose_shows_the_official_options(capsys):
    assert main(["list", "methods", "--verbose"]) == 0
    out = capsys.readouterr().out
    blocks = {}
    for line in out.splitlines()[1:]:
        if line.startswith("  ") and not line.startswith("   "):
            current = line.split()[0]
        blocks.setdefault(current, []).append(line)
    for name in catalogue().methods.names():
        declared = method_class(name).official_options
        want = ("fidelity official: " + ", ".join(f"{k}={v}" for k, v in declared.items()) + " (--set wins)"
                if declared else "fidelity official: sets no option (the same training under both)")
        assert f"      {want}" in blocks[name], name
    assert "      fidelity official: beta_reset=official, fmix_mask=official, warmup_penalty=official (--set wins)" \
        in blocks["promix"]


def test_a_sweep_varies_the_fidelity_only_where_it_changes_the_run(tmp_path):
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(["sweep", "--methods", "ce,coteaching_plus,trevision", "--noise", "sym:0.4",
                     "--fidelity", "paper,official", "--dry-run", "--tracking-uri", tracking_uri(tmp_path),
                     "--out", str(tmp_path / "runs")])
    assert code == 0
    labels = sorted(line.split(None, 1)[1].strip() for line in buf.getvalue().splitlines() if line.startswith("new"))
    assert labels == ["ce sym:0.4 seed 1 fidelity paper",
                      "coteaching_plus sym:0.4 seed 1 fidelity official",
                      "coteaching_plus sym:0.4 seed 1 fidelity paper",
                      "trevision sym:0.4 seed 1 fidelity official",
                      "trevision sym:0.4 seed 1 fidelity paper"]
    from bench.cli import sweep_requests

    requests = sweep_requests("--methods coteaching_plus --noise none --fidelity official")
    assert [r["fidelity"] for r in requests] == ["official"]  # a plain option passes through


def test_a_study_takes_the_fidelity_and_its_name_says_so(tmp_path):
    from argparse import Namespace

    from bench.drivers.study import spec_from_args

    args = Namespace(trials=None, sampler="tpe", pruner="median", sampler_seed=None, heartbeat=30,
                     params=None, study_name=None, storage=f"sqlite:///{tmp_path}/o.db")
    spec, _ = spec_from_args(args, {"method": "promix", "fidelity": "official", "noise": "sym", "noise_rate": 0.4,
                                    "out": str(tmp_path / "runs")})
    assert spec.name == "promix-fashion-mnist-sym0.4-official"
    assert spec.base.config.fidelity == "official" and spec.base.config.method_options["fmix_mask"] == "official"
    assert spec.identity()["config_hash"] == spec.base.config.hash()  # no worker of the paper study joins it


@pytest.mark.slow
def test_a_run_logs_and_keeps_its_fidelity_on_resume(tmp_path, capsys):
    out = tmp_path / "runs"
    code = main(["run", "--method", "trevision", "--fidelity", "official", "--subset", "60", "--test-subset", "100",
                 "--epochs", "3", "--stop-after", "1", "--set", "estimate_epochs=1", "--set", "reweight_epochs=1",
                 "--augment", "none", "--out", str(out), "--tracking-uri", tracking_uri(tmp_path)])
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    from mlflow.tracking import MlflowClient

    params = MlflowClient(tracking_uri(tmp_path)).get_run(summary["run_id"]).data.params
    assert params["fidelity"] == "official" and params["method.revision"] == "official"
    run_dir = next(out.iterdir())
    assert main(["run", "--resume", str(run_dir), "--fidelity", "paper"]) == 2
    assert "drop --fidelity" in capsys.readouterr().err
    spec = resolve_resume(run_dir, {"fidelity": "official"})  # repeating it is harmless
    assert spec.config.fidelity == "official" and spec.config.method_options["revision"] == "official"


# --- the official branch, on methods built from --fidelity official ----------------------------------


def ce(row: list[float], label: int) -> float:
    return F.cross_entropy(torch.tensor([row], dtype=torch.float64), torch.tensor([label])).item()


def test_coteaching_plus_official_takes_the_official_empty_disagreement_rule():
    """tests/test_coteachingplus.py test_empty_disagreement_set: with both nets alike, D' is empty;
    paper: no update; official: the mean CE of the softmax probabilities over the batch."""
    agree = [[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]]
    batch = {"train": torch.tensor([[0.0], [1.0]], dtype=torch.float64), "label": torch.tensor([0, 1]),
             "index": torch.tensor([0, 1])}

    def method(fidelity: str, sets: tuple[str, ...] = ()):
        nets = iter([TableNet(agree), TableNet(agree)])
        ctx = fake_context(num_train=2, epochs=10, make_backbone=lambda: next(nets),
                           make_optimizer=lambda p: torch.optim.Adam(p, lr=1e-3))
        return built("coteaching_plus", ctx, fidelity, ("forget_rate=0.5", "tk=1", "init_epoch=0", *sets))

    m = method("official")
    assert m.opts.loss == "official"
    m.on_epoch_start(100)
    out = m.train_step(batch, 100, Phase())  # batch 0 of epoch 100: 100 * 0 < 5000
    expected = (ce(torch.softmax(torch.tensor(agree[0]), 0).tolist(), 0)
                + ce(torch.softmax(torch.tensor(agree[1]), 0).tolist(), 1)) / 2
    assert out.step and out.terms["loss_net1"].item() == pytest.approx(expected, rel=1e-6)
    for paper in (method("paper"), method("official", ("loss=paper",))):  # --set wins
        paper.on_epoch_start(100)
        out = paper.train_step(batch, 100, Phase())
        assert not out.step and out.loss.item() == 0.0


def test_trevision_official_accumulates_the_revision_per_sample():
    """tests/test_trevision.py test_official_accumulation_bug_by_hand, through the method's step:
    sample i of a batch uses T_hat + (i + 1) dT under official, T_hat + dT under paper."""
    from methods.trevision import reweighted_loss

    T = torch.tensor([[0.8, 0.2, 0.0], [0.0, 0.8, 0.2], [0.2, 0.0, 0.8]])
    batch = {"train": torch.ones(3, 2), "label": torch.tensor([1, 1, 1]), "index": torch.arange(3)}
    betas = {}
    for fidelity in ("official", "paper"):
        m = built("trevision", fake_context(num_train=3), fidelity, ("estimate_epochs=1", "reweight_epochs=1"))
        m.state["T"] = T.clone()
        with torch.no_grad():
            m.models["delta"].weight.fill_(0.01)
        out = m.train_step(batch, 2, Phase("revise"))
        z, d = m.models["net"](batch["train"]).float(), m.models["delta"].weight
        acc = d if fidelity == "official" else None
        loss, beta = reweighted_loss(z, batch["label"], T + d, detach=False, accumulate=acc)
        assert out.loss.item() == pytest.approx(loss.item(), rel=1e-6)
        betas[fidelity] = out.terms["beta_mean"].item()
    assert m.opts.revision == "paper" and betas["official"] != pytest.approx(betas["paper"], rel=1e-4)


@pytest.mark.slow
def test_pes_official_keeps_the_renewed_layers_at_their_refined_values(tmp_path):
    """tests/test_pes.py test_pes_refinement_renew_and_confident_epochs: after the refinement the
    re-created layers stay as refined (renew=official), the rest trains."""
    tr = trainer(tmp_path, "pes", noise="sym", noise_rate=0.4, subset=120, epochs=3, batch_size=60, test_subset=100,
                 sets=["T1=1", "T2=1", "T3=1"])
    m, net = tr.method, tr.method.models["net"]
    assert m.opts.renew == "official" and m._main_key(2) == "after"
    renewed = {"head.1.weight", "head.1.bias", "head.3.weight", "head.3.bias"}  # smallcnn's hidden FC + classifier
    tr.run_epoch(0)
    tr.run_epoch(1)  # the refinement
    refined = {k: v.detach().clone() for k, v in net.named_parameters()}
    tr.run_epoch(2)
    moved = {k for k, v in net.named_parameters() if not torch.equal(v, refined[k])}
    assert moved and not moved & renewed


def test_promix_official_resets_beta_after_a_sixth_of_the_run(tmp_path):
    """tests/test_promix.py: beta_reset=official switches the pseudo head's unlabeled weight off
    from 100 of 600 official epochs on (epoch 2 of 3 here); under paper it stays 0.1 once ramped."""
    from methods.promix import beta_at

    tr = trainer(tmp_path, "promix", noise="sym", noise_rate=0.4, subset=60, epochs=3, test_subset=100,
                 sets=["warmup_epochs=1"])
    m = tr.method
    assert (m.opts.beta_reset, m.opts.fmix_mask, m.opts.warmup_penalty) == ("official",) * 3
    assert m.on_epoch_start(2)["beta"] == 0.0
    assert beta_at(2, 3, m.opts.debias_pl, "paper") == pytest.approx(0.1)


def test_wrongevent_and_mcorrection_official_fit_the_guarded_mixtures(tmp_path, monkeypatch):
    """tests/test_wrongevent.py / test_mcorrection.py: posterior=official is the official code's
    guarded Beta mixture (IDO's utils/bmm.py, M-Correction's BetaMixture1D)."""
    import methods.mcorrection as mcorrection
    from methods.mixtures import IDO_GUARDS, MCORRECTION_GUARDS

    m = trainer(tmp_path / "ido", "wrongevent", noise="sym", noise_rate=0.4, subset=60, epochs=2,
                test_subset=100).method
    assert (m.opts.entropy, m.opts.posterior, m.opts.base_weights) == ("official",) * 3
    assert m._new_bmm().guards is IDO_GUARDS
    tr = trainer(tmp_path / "mc", "mcorrection", noise="sym", noise_rate=0.4, subset=60, epochs=2, test_subset=100)
    assert (tr.method.opts.posterior, tr.method.opts.soft_prior) == ("official", "official")
    fits, fit = [], mcorrection.fit_mixture

    def recording(*args):
        fits.append(args[-1])  # the guards
        return fit(*args)

    monkeypatch.setattr(mcorrection, "fit_mixture", recording)
    metrics = tr.method.on_epoch_end(0)  # the tracking pass and the mixture fit
    assert fits == [MCORRECTION_GUARDS] and all(math.isfinite(float(v)) for v in metrics.values())


@pytest.mark.parametrize("method, dataset, attribute, official, paper", [
    ("gjs", "webvision", "scaled", False, True),  # official: WebVision's unscaled JSWC (test_gjs.py)
    ("gjs", "cifar10", "scaled", True, True),  # elsewhere the official loss is the scaled one too
    ("plc", "clothing1m", "official", True, False),  # official: Clothing1M's prob_correction (test_plc.py)
    ("plc", "cifar10", "official", False, False),
])
def test_gjs_and_plc_official_take_their_data_sets_official_branch(method, dataset, attribute, official, paper):
    for fidelity, want in (("official", official), ("paper", paper)):
        m = built(method, fake_context(dataset=dataset, noise="none", noise_rate=None, num_classes=14), fidelity)
        assert getattr(m, attribute) is want, fidelity


def test_the_readme_table_lists_what_each_method_declares():
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    table = text.split("| method | `--fidelity official` sets |", 1)[1].split("\n\n", 1)[0]
    listed = {}
    for row in table.splitlines()[2:]:
        names, sets = row.strip().strip("|").split("|")
        for name in re.findall(r"`([a-z_]+)`", names):
            listed[name] = dict(re.findall(r"`([a-z_]+)=([a-z_]+)`", sets))
    assert listed == {n: method_class(n).official_options for n in DECLARING}
