"""The trainer's contract with methods: per-sample state by dataset index, phases with index
subsets, whole-training-set passes in index order, checkpointed state, and the CPU forms of
the GPU code paths (bfloat16 autocast, channels-last)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from bench.training.trainer import Trainer
from methods.base import METHODS, Method, Phase, StepOutput
from tests.helpers import spec_of


@dataclass
class _ProbeOptions:
    half: bool = field(default=False, metadata={"help": "second phase visits only even indices"})


@METHODS.register("_probe")
class _Probe(Method):
    """Test method: counts visits per dataset index and checks labels against its own copy."""

    name = "_probe"
    Options = _ProbeOptions

    def setup(self) -> None:
        net = self.ctx.make_backbone()
        self.models["net"] = net
        self.optimizers["net"] = self.ctx.make_optimizer(net.parameters())
        self.state["visits"] = torch.zeros(self.ctx.num_train, dtype=torch.int64, device=self.ctx.device)
        self.label_mismatch = 0
        self.passes: list[torch.Tensor] = []

    def phases(self, epoch: int) -> list[Phase]:
        if not self.opts.half:
            return [Phase()]
        evens = torch.arange(0, self.ctx.num_train, 2)
        return [Phase("all"), Phase("evens", indices=evens)]

    def on_epoch_start(self, epoch: int) -> dict[str, float]:
        self.passes.append(self.ctx.predict_train(self.models["net"]))
        return {"probe_metric": float(epoch)}

    def train_step(self, batch, epoch, phase) -> StepOutput:
        self.state["visits"][batch["index"]] += 1
        self.label_mismatch += int((self.ctx.given_labels[batch["index"]] != batch["label"]).sum())
        logits = self.models["net"](batch["train"])
        loss = F.cross_entropy(logits, batch["label"])
        return StepOutput(loss=loss, logits=logits, terms={"probe_term": loss.detach() * 0 + 1.5})


def make_trainer(tmp: Path, **kw) -> Trainer:
    values = dict(method="_probe", subset=300, epochs=2, batch_size=64, out=str(tmp / "runs"),
                  tracking_uri=f"sqlite:///{tmp}/m.db")
    values.update(kw)
    run_dir = tmp / "runs" / "r"
    run_dir.mkdir(parents=True)
    return Trainer(spec_of(**values), run_dir)


def test_per_sample_state_by_index_and_phases(tmp_path):
    tr = make_trainer(tmp_path, method_options={"half": "true"})
    tr.build()
    m = tr.method
    metrics = tr.run_epoch(0)
    visits = m.state["visits"].cpu()
    assert visits[0::2].tolist() == [2] * 150  # visited by both phases
    assert visits[1::2].tolist() == [1] * 150  # only by the first
    assert m.label_mismatch == 0  # the batch label is the given label of batch["index"]
    assert metrics["probe_metric"] == 0.0 and metrics["probe_term"] == pytest.approx(1.5)
    assert 0 <= metrics["train_acc"] <= 1 and metrics["test_acc"] >= 0


def test_predict_train_is_in_index_order(tmp_path):
    tr = make_trainer(tmp_path)
    tr.build()
    net = tr.method.models["net"]
    logits = tr.predict_train(net)
    assert logits.shape == (300, 10)
    x = tr.train_loader.views(tr.train_loader.images[torch.arange(300)], "plain", torch.Generator())
    assert net.training  # predict_train restores the training mode
    net.eval()
    with torch.no_grad():
        direct = net(x)
    torch.testing.assert_close(logits, direct, rtol=1e-4, atol=1e-5)
    reverse = torch.arange(299, -1, -1)
    torch.testing.assert_close(logits[reverse], direct[reverse])


def test_state_is_checkpointed(tmp_path):
    tr = make_trainer(tmp_path)
    summary = tr.run()
    assert summary["status"] == "finished"
    ckpt = torch.load(tmp_path / "runs" / "r" / "checkpoint.pt", weights_only=False)
    assert ckpt["method"]["state"]["visits"].tolist() == [2] * 300
    assert ckpt["history"]["epochs_done"] == 2


@pytest.mark.parametrize("amp,channels_last", [("on", "on"), ("off", "off")])
def test_cpu_forms_of_gpu_paths(tmp_path, amp, channels_last):
    tr = make_trainer(tmp_path, amp=amp, channels_last=channels_last, epochs=1)
    tr.build()
    assert tr.amp == (amp == "on")
    if amp == "on":
        assert tr.amp_dtype == torch.bfloat16  # the CPU form of autocast
        assert not tr.scaler.is_enabled()  # loss scaling is for fp16 on CUDA only
    batch = next(tr.train_loader.iterate(("train",)))
    # with one channel both layouts are the same bytes; the conv weights show the format
    assert batch["train"].is_contiguous(memory_format=torch.channels_last)
    weight = tr.method.models["net"].features[3].weight  # 32 x 16 x 3 x 3
    assert weight.is_contiguous(memory_format=torch.channels_last) == (channels_last == "on")
    metrics = tr.run_epoch(0)
    assert metrics["train_loss"] == metrics["train_loss"]  # not NaN
    assert metrics["test_acc"] > 0.2  # it learns something in one epoch of 300 images


def test_build_leaves_the_callers_spec_as_given(tmp_path):
    """The trainer resolves the data set's and the method's options into its own copy: the spec
    a caller passes (a sweep's base, a study's, bench.run's) is unchanged after build(), while
    the trainer's copy holds the values in use (what is logged and saved in config.json)."""
    from tests.helpers import spec_of

    spec = spec_of(method="_probe", subset=300, epochs=1, batch_size=64, out=str(tmp_path / "runs"),
                   tracking_uri=f"sqlite:///{tmp_path}/m.db", method_options={"half": "true"})
    before = spec.saved()
    run_dir = tmp_path / "runs" / "r"
    run_dir.mkdir(parents=True)
    tr = Trainer(spec, run_dir).build()
    assert spec.saved() == before
    assert tr.config.method_options == {"half": True}  # resolved: typed as the method uses it
    assert spec.config.method_options == {"half": "true"}
    tr.run()
    import json

    saved = json.loads((run_dir / "config.json").read_text())["config"]
    assert saved["method_options"] == {"half": True} and saved["dataset_options"] == tr.config.dataset_options
    assert spec.saved() == before


def test_the_bar_counts_what_a_selecting_phase_visits(tmp_path, monkeypatch):
    """A phase that selects its samples when it begins (UNICON, PES) was counted as every sample
    when the bar was made; its total follows the selection, so the bar ends full."""
    import tqdm

    bars = []

    class Recorded(tqdm.tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            bars.append(self)

    monkeypatch.setattr(tqdm, "tqdm", Recorded)
    tr = make_trainer(tmp_path, progress=True)
    tr.build()
    phases = [Phase("all"), Phase("some", select=lambda: torch.arange(100))]
    monkeypatch.setattr(tr.method, "phases", lambda epoch: phases)
    tr.run_epoch(0)
    assert len(bars) == 1
    assert bars[0].n == bars[0].total == 5 + 2  # ceil(300 / 64) + ceil(100 / 64)


def test_every_optimiser_rate_is_logged(tmp_path):
    """The first optimiser's rate as ``lr`` (what tables read), every other's as ``lr_<name>``."""
    tr = make_trainer(tmp_path)
    tr.build()
    m = tr.method
    m.optimizers["aux"] = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.5)
    metrics = tr.run_epoch(0)
    assert metrics["lr"] == m.optimizers["net"].param_groups[0]["lr"] and metrics["lr_aux"] == 0.5
    assert "lr_net" not in metrics
