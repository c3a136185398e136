"""ProMix: the reference sheet's hand-checked values (CSS, debiasing, the cosine lr), the FMix
mask, label guessing, the epoch constants scaled from 600 epochs and the beta reset, masked means
and priors on empty selections, the warm-up penalty quirk, the pseudo head, the per-setting
defaults, option validation, and one short run on a Fashion-MNIST subset: per-network selections,
moving priors, LGA, the detection metrics and the test heads. Resume is the registry's test
(tests/test_registry_entries.py)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from bench.backbones import create_backbone
from bench.common.errors import UsageError
from bench.common.options import build_options
from methods.base import Phase
from methods.mixmatch import negative_entropy
from methods.promix import (
    VIEWS,
    ProMix,
    PseudoHeadNet,
    beta_at,
    ce_soft,
    cosine_lr,
    css_select,
    debias_output,
    debias_pl,
    ema_prior,
    fmix,
    fmix_loss,
    fmix_masks,
    label_guessing,
    lga_active,
    low_freq_images,
    masked_mean,
    official_negative_entropy,
    ramp,
)
from tests.helpers import fake_generators, make_trainer, setting_defaults


def test_css_by_hand():
    """By hand: N=12, C=3, rho 0.5 -> quota ceil(4 * 0.5) = 2 per class."""
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2])
    loss = torch.tensor([.1, .9, .3, .5, .2, .25, .8, .05, .6, .4, .7, .95])
    chosen = torch.nonzero(css_select(loss, labels, 3, 0.5)).squeeze(1).tolist()
    assert chosen == [0, 2, 4, 7, 8, 9]  # {0, 2}, {7, 4}, {9, 8}


def test_css_quota_is_capped_by_the_class_and_at_least_one():
    labels = torch.tensor([0, 0, 0, 0, 0, 1, 2, 2])
    loss = torch.tensor([.5, .1, .4, .3, .2, .9, .8, .7])
    # quota ceil(8 / 3 * 0.6) = 2: class 1 has one sample and gives it
    assert torch.nonzero(css_select(loss, labels, 3, 0.6)).squeeze(1).tolist() == [1, 4, 5, 6, 7]
    # quota ceil(8 / 3 * 0.01) = 1: the lowest of each class, a class absent from the labels (3) skipped
    assert torch.nonzero(css_select(loss, labels, 4, 0.01)).squeeze(1).tolist() == [1, 5, 7]


def test_debias_by_hand():
    """z = [2, 0, 0], pi = [.5, .3, .2], tau 0.8, by hand."""
    z, pi = torch.tensor([[2.0, 0.0, 0.0]]), torch.tensor([0.5, 0.3, 0.2])
    torch.testing.assert_close(debias_output(z, pi, 0.8), torch.tensor([[1.44548, -0.96318, -1.28755]]),
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(debias_pl(z, pi, 0.8), torch.tensor([[0.67325, 0.13711, 0.18964]]), atol=1e-5, rtol=0)


def test_cosine_lr_by_hand():
    assert cosine_lr(0.05, 0, 600) == pytest.approx(0.05)
    assert cosine_lr(0.05, 300, 600) == pytest.approx(0.025025)
    assert cosine_lr(0.05, 600, 600) == pytest.approx(5e-5)


def test_epoch_constants_at_600_epochs_are_the_official_ones():
    assert setting_defaults(ProMix, "cifar10", "sym", 0.5, 10, epochs=600)["warmup_epochs"] == 10
    assert setting_defaults(ProMix, "cifar100", "sym", 0.5, 100, epochs=600)["warmup_epochs"] == 30
    assert ramp(25, 600, 50) == 0.5 and ramp(50, 600, 50) == 1.0
    assert beta_at(50, 600, 0.8, "paper") == pytest.approx(0.05)
    assert beta_at(99, 600, 0.8, "official") == pytest.approx(0.099)
    assert beta_at(100, 600, 0.8, "official") == 0.0 and beta_at(599, 600, 0.8, "official") == 0.0
    assert beta_at(100, 600, 0.8, "paper") == pytest.approx(0.1)
    assert beta_at(599, 600, 0.8, "paper") == pytest.approx(0.1)
    assert beta_at(300, 600, 0.0, "official") == 1.0  # without pseudo-label debiasing beta is 1, never reset
    assert not lga_active(350, 600) and lga_active(351, 600)


def test_epoch_constants_scale_to_the_run():
    # 30 epochs: an epoch counts 20 official ones
    # round(0.5) = 0, at least 1
    assert setting_defaults(ProMix, "cifar10", "sym", 0.4, 10, epochs=30)["warmup_epochs"] == 1
    assert setting_defaults(ProMix, "cifar100", "sym", 0.4, 100, epochs=30)["warmup_epochs"] == 2  # round(1.5)
    assert ramp(1, 30, 50) == pytest.approx(0.4)
    assert beta_at(4, 30, 0.8, "official") == pytest.approx(0.08) and beta_at(5, 30, 0.8, "official") == 0.0
    assert not lga_active(17, 30) and lga_active(18, 30)  # 340 vs 360 > 350


def test_fmix_masks_are_binary_low_frequency_with_mean_lambda():
    gen = torch.Generator().manual_seed(0)
    masks = fmix_masks([0.3, 0.7], [0.9, 0.1], (28, 28), 3.0, gen, torch.device("cpu"))
    assert masks.shape == (2, 28, 28)
    assert set(masks.unique().tolist()) <= {0.0, 1.0}
    assert masks.sum(dim=(1, 2)).tolist() == [math.ceil(0.3 * 784), math.floor(0.7 * 784)]  # ceil / floor by coin
    for lam, mask in zip((0.3, 0.7), masks, strict=True):
        assert abs(mask.mean().item() - lam) <= 1 / 784
        # low frequency: blobs, so neighbouring pixels mostly agree (white noise would agree ~half the time)
        assert (mask[:, 1:] == mask[:, :-1]).float().mean() > 0.85
    again = fmix_masks([0.3, 0.7], [0.9, 0.1], (28, 28), 3.0, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert torch.equal(masks, again)


def test_official_fmix_spectrum_keeps_x_frequencies_0_and_1_only():
    """fmix.py's indexing (rows 0 and 1 of the (H, W/2+1, 2) parameters) leaves a low-frequency
    image with no energy beyond x-frequency 1 (banded masks); the paper's image has it."""
    gen = torch.Generator().manual_seed(0)
    official = low_freq_images(4, (28, 28), 3.0, gen, torch.device("cpu"), official=True)
    paper = low_freq_images(4, (28, 28), 3.0, gen, torch.device("cpu"), official=False)
    def high(img: torch.Tensor) -> float:  # the share of the energy beyond x-frequency 1
        power = torch.fft.rfft(img.double(), dim=-1).abs().pow(2)
        return (power[..., 2:].sum() / power.sum()).item()

    assert high(official) < 1e-9 and high(paper) > 1e-3
    masks = fmix_masks([0.3], [0.9], (28, 28), 3.0, torch.Generator().manual_seed(1), torch.device("cpu"), True)
    assert masks.sum().item() == math.ceil(0.3 * 784)


def test_fmix_mixes_with_one_mask_for_the_batch_and_its_loss_by_hand():
    x = torch.randn(6, 3, 28, 28, generator=torch.Generator().manual_seed(1))
    out, perm, lam = fmix(x, fake_generators())
    moved = [i for i in range(6) if perm[i] != i]
    assert moved
    from_x = torch.isclose(out[moved[0]], x[moved[0]]).all(dim=0)
    for i in moved:  # the same mask on every sample and channel
        assert torch.equal(torch.isclose(out[i], x[i]).all(dim=0), from_x)
        assert torch.equal(torch.isclose(out[i], x[perm[i]]).all(dim=0), ~from_x)
    assert abs(from_x.float().mean().item() - lam) <= 1 / 784 + 1e-9
    logits, labels = torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 1])
    swap = torch.tensor([1, 0])
    expected = 0.7 * F.cross_entropy(logits, labels) + 0.3 * F.cross_entropy(logits, labels[swap])
    assert fmix_loss(logits, labels, swap, 0.7).item() == pytest.approx(expected.item())


def test_label_guessing_by_hand():
    s1 = torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.995, 0.999, 0.993, 0.998])
    s2 = torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.995, 0.999, 0.995, 0.999])
    match = torch.tensor([True] * 9 + [True])
    chosen = torch.tensor([True] * 6 + [False] * 4)
    # 6 of 10 < 0.9: room int(9) - 6 = 3 of the 4 candidates, highest mean first: 7, 9, 6 (8 is lowest)
    grown = label_guessing(chosen, s1, s2, match, 0.99, 0.9)
    assert torch.nonzero(grown).squeeze(1).tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 9]
    # a disagreement or a confidence at tau does not count
    match2 = match.clone()
    match2[7] = False
    s1b = s1.clone()
    s1b[9] = 0.99
    assert torch.nonzero(label_guessing(chosen, s1b, s2, match2, 0.99, 0.9)).squeeze(1).tolist()[6:] == [6, 8]
    full = torch.tensor([True] * 9 + [False])  # 9 of 10 is not below 0.9: unchanged
    assert torch.equal(label_guessing(full, s1, s2, match, 0.99, 0.9), full)


def test_empty_selections_give_zero_means_and_keep_the_priors():
    values = torch.tensor([1.0, 2.0, 3.0])
    assert masked_mean(values, torch.zeros(3, dtype=torch.bool)).item() == 0.0
    assert masked_mean(values, torch.tensor([True, False, True])).item() == 2.0
    prior = torch.full((3,), 1 / 3)
    probs = torch.tensor([[0.8, 0.1, 0.1], [0.2, 0.6, 0.2]])
    assert torch.equal(ema_prior(prior, probs, torch.zeros(2, dtype=torch.bool), 0.9999), prior)
    torch.testing.assert_close(ema_prior(prior, probs, torch.tensor([True, True]), 0.5),
                               0.5 * prior + 0.5 * torch.tensor([0.5, 0.35, 0.15]))
    assert ce_soft(torch.zeros(1, 2), torch.tensor([[1.0, 0.0]])).item() == pytest.approx(math.log(2))


def test_official_warmup_penalty_clamps_the_logits():
    positive = torch.tensor([[1.0, 2.0, 3.0]])
    assert official_negative_entropy(positive).item() == pytest.approx(negative_entropy(positive).item())
    mixed = torch.tensor([[-5.0, 0.0, 1.0]])
    assert official_negative_entropy(mixed).item() == pytest.approx(
        negative_entropy(torch.tensor([[1e-12, 1e-12, 1.0]])).item())
    assert official_negative_entropy(mixed).item() != pytest.approx(negative_entropy(mixed).item())


def test_pseudo_head_on_the_penultimate_features():
    net = PseudoHeadNet(create_backbone("smallcnn", 10, 1, 28, False), seed=3)
    x = torch.randn(4, 1, 28, 28)
    primary, pseudo = net.heads(x)
    assert primary.shape == pseudo.shape == (4, 10)
    torch.testing.assert_close(net(x), primary)
    assert not torch.allclose(primary, pseudo)
    assert any(k.startswith("pseudo.") for k in net.state_dict())  # checkpointed with the net
    twin = PseudoHeadNet(create_backbone("smallcnn", 10, 1, 28, False), seed=3)
    assert torch.equal(twin.pseudo.weight, net.pseudo.weight)  # its init comes from the seed, not the global RNG


@pytest.mark.parametrize("classes,rate,expected", [
    (10, 0.2, {"rho": 0.7, "tau": 0.99, "debias_output": 0.8, "debias_pl": 0.8}),
    (10, 0.4, {"rho": 0.5, "tau": 0.99, "debias_output": 0.8, "debias_pl": 0.8}),
    (10, 0.8, {"rho": 0.5, "tau": 0.99, "debias_output": 0.8, "debias_pl": 0.8}),
    (10, 0.3, {"rho": 0.7, "tau": 0.99, "debias_output": 0.8, "debias_pl": 0.8}),  # a tie takes the lower rate
    (100, 0.2, {"rho": 0.7, "tau": 0.95, "debias_output": 0.5, "debias_pl": 0.5}),
    (100, None, {"rho": 0.5, "tau": 0.95, "debias_output": 0.5, "debias_pl": 0.5}),  # CIFAR-100N
])
def test_per_setting_defaults(classes, rate, expected):
    d = setting_defaults(ProMix, "cifar10" if classes <= 10 else "cifar100", "sym" if rate else "real", rate, classes,
                         epochs=600)
    assert {k: d[k] for k in expected} == expected


@pytest.mark.parametrize("key,value", [("rho", "0"), ("rho_start", "1.5"), ("tau", "1"), ("debias_pl", "-1"),
                                       ("temperature", "0"), ("threshold", "0"), ("bias_m", "1"),
                                       ("beta_reset", "never"), ("eval_head", "net2"), ("warmup_epochs", "-1")])
def test_invalid_options_raise(key, value):
    with pytest.raises(UsageError, match=key):
        build_options(ProMix, {key: value})


def test_search_space_spans_the_published_values():
    space = ProMix.search_space(None)
    assert set(space) == {"rho", "tau", "debias_output", "debias_pl"}
    assert space["rho"].grid == (0.5, 0.7) and space["tau"].grid == (0.95, 0.99)


@pytest.mark.slow
def test_short_run_selects_per_network_moves_the_priors_and_guesses_labels(tmp_path):
    tr = make_trainer(tmp_path, method="promix", noise="sym", noise_rate=0.4, subset=300, epochs=3, batch_size=64,
                      test_subset=500, method_options={"warmup_epochs": "1"})
    m = tr.method
    assert m.concat  # smallcnn has no BatchNorm: one forward per network for its views
    m0 = tr.run_epoch(0)
    assert "clean_auc" not in m0 and math.isfinite(m0["loss_ce_net1"])
    assert torch.equal(m.state["pi"], torch.full((4, 10), 0.1))
    m1 = tr.run_epoch(1)
    assert m1["lr"] == pytest.approx(cosine_lr(tr.config.lr, 1, 3))
    for key in ("clean_auc", "clean_auc_net2", "clean_precision", "clean_precision_net2", "loss_net1", "loss_ph_net2",
                "loss_unrel_net1", "loss_mix_net2", "loss_fmix_net1", "chosen_frac_net1"):
        assert math.isfinite(m1[key]), key
    assert m1["beta"] == pytest.approx(0.1) and m1["lga"] == 0.0
    # each network its own CSS set, 15 = ceil(300 / 10 * 0.5) of each class (or all it has)
    assert not torch.equal(m.state["css1"], m.state["css2"])
    given = tr.train_loader.labels
    for k in ("css1", "css2"):
        counts = torch.bincount(given[m.state[k]], minlength=10)
        assert all(c == min(15, int((given == i).sum())) for i, c in enumerate(counts.tolist()))
        assert bool((m.state["sel" + k[-1]] | ~m.state[k]).all())  # the selection contains its CSS set
    # the priors moved from uniform, each its own way
    pi = m.state["pi"]
    assert not torch.allclose(pi, torch.full_like(pi, 0.1), atol=0, rtol=0)
    assert not torch.equal(pi[0], pi[1]) and not torch.equal(pi[0], pi[2])
    torch.testing.assert_close(pi.sum(dim=1), torch.ones(4))
    # a step trains each network on its own selection; an empty one stays finite
    idx = torch.arange(64, device=m.ctx.device)
    batch = {**m.ctx.fetch(idx, VIEWS), "index": idx, "label": given[idx]}
    m.state["css1"], m.state["css2"] = torch.zeros_like(m.state["css1"]), torch.ones_like(m.state["css2"])
    tau = m.tau
    m.tau = 1.0  # MHCS off: no probability exceeds 1
    out = m.train_step(batch, 1, Phase())
    m.tau = tau
    assert out.terms["chosen_frac_net1"].item() == 0.0 and out.terms["chosen_frac_net2"].item() == 1.0
    assert out.terms["loss_unrel_net2"].item() == 0.0 and out.terms["loss_mix_net1"].item() == 0.0
    assert math.isfinite(out.loss.item()) and out.loss.requires_grad
    m2 = tr.run_epoch(2)
    assert m2["lga"] == 1.0 and math.isfinite(m2["lga_frac_net1"]) and math.isfinite(m2["clean_auc"])
    # the test logits: the mean of the primary heads by default (the authors' "Acc Mean"), else net 1's pseudo head
    x = batch["weak"][:8]
    m.train_mode(False)
    with torch.no_grad():
        torch.testing.assert_close(m.predict(x), (m.models["net1"](x) + m.models["net2"](x)) / 2)
        m.opts.eval_head = "pseudo1"
        torch.testing.assert_close(m.predict(x), m.models["net1"].heads(x)[1])
        # the concatenated forward equals separate ones (no BatchNorm)
        both = m._views(m.models["net2"], x, batch["ra-promix"][:8])
        torch.testing.assert_close(both[2], m.models["net2"](batch["ra-promix"][:8]).float(), atol=1e-5, rtol=1e-5)
    m.opts.beta_reset = "official"
    assert m.on_epoch_start(2)["beta"] == 0.0  # 400 of 600 >= 100
