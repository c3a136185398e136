"""Where a run ran (bench/training/environment.py): its ``env.*`` tags, ``--threads``, a run
resumed on other hardware; and tables that never average or compare times across hardware
(``bench table --time``, ``--by-hardware``, ``--env``) on a store written by hand."""
from __future__ import annotations

import io
import platform

import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from bench.cli import main
from bench.training.environment import cpu_model, joined
from bench.training.runrecord import TAG_TIME_REFERENCE
from tests.helpers import run_cli, table_cli, tracking_uri

TINY = ["--method", "ce", "--dataset", "fashion-mnist", "--noise", "sym", "--noise-rate", "0.4", "--subset", "100",
        "--test-subset", "100", "--epochs", "2"]


def tags_of(tmp, run_id: str) -> dict[str, str]:
    run = MlflowClient(tracking_uri(tmp)).get_run(run_id)
    return {**run.data.tags, **{f"param:{k}": v for k, v in run.data.params.items()}}


def test_a_cpu_run_logs_its_environment_with_the_threads_it_was_given(tmp_path, capsys):
    before = torch.get_num_threads()
    runs = {t: run_cli(tmp_path, *TINY, "--threads", str(t)) for t in (1, 2)}
    assert torch.get_num_threads() == before  # the caller's thread count is put back
    for t, summary in runs.items():
        tags = tags_of(tmp_path, summary["run_id"])
        assert tags["env.threads"] == str(t) and tags["param:threads"] == str(t)
        assert tags["env.cpu"] == cpu_model() and tags["env.device"] == "cpu" and tags["env.gpu"] == "none"
        assert tags["env.hardware"] == f"{cpu_model()} ({t} thread{'s' if t > 1 else ''})"
        assert tags["env.torch"] == torch.__version__ and tags["env.python"] == platform.python_version()
        assert tags["env.host"] and tags["env.deterministic"] in ("on", "off") and tags["env.torchvision"] != "none"
    err = capsys.readouterr().err
    assert err.count("environment: ") == 2 and f"environment: {cpu_model()} (2 threads) on " in err
    # a run without --threads records torch's default, whatever it is here
    default = tags_of(tmp_path, run_cli(tmp_path, *TINY, "--seed", "2")["run_id"])
    assert default["env.threads"] == str(before) and default["param:threads"] == ""


def test_bad_threads_is_one_line(capsys):
    assert main(["run", *TINY, "--threads", "0"]) == 2
    assert "--threads 0: must be >= 1" in capsys.readouterr().err


def test_a_run_resumed_on_other_hardware_is_labelled_by_both(tmp_path):
    first = run_cli(tmp_path, *TINY, "--threads", "1", "--stop-after", "1")
    assert first["status"] == "stopped"
    done = run_cli(tmp_path, "--resume", first["run_dir"], "--threads", "2")
    assert done["status"] == "finished" and done["run_id"] == first["run_id"]
    tags = tags_of(tmp_path, done["run_id"])
    assert tags["env.hardware"] == f"{cpu_model()} (1 thread) + {cpu_model()} (2 threads)"
    assert tags["env.threads"] == "2"  # the other tags describe where it ran last
    assert joined(["a", "b", "a"]) == "a + b" and joined([]) == "not recorded"


# --- tables ------------------------------------------------------------------------------------------
GPU_A, GPU_B = "NVIDIA A100-SXM4-80GB", "NVIDIA H100 80GB HBM3"
RUNS = [  # method, hardware, seed, wall-clock s of 10 epochs, best accuracy
    ("ce", GPU_A, 1, 100.0, 0.80), ("ce", GPU_A, 2, 110.0, 0.82),
    ("dividemix", GPU_A, 1, 400.0, 0.86), ("dividemix", GPU_B, 2, 200.0, 0.88),
    ("wrongevent", GPU_B, 1, 150.0, 0.85),
]


@pytest.fixture
def store(tmp_path):
    """One configuration per method, its seeds run on two GPU models (tags as the trainer writes them)."""
    client = MlflowClient(tracking_uri(tmp_path))
    exp = client.create_experiment("hw", artifact_location=(tmp_path / "art").as_uri())
    refs = {"ce": "CE", "dividemix": "DivideMix"}
    for method, hardware, seed, wall, acc in RUNS:
        tags = {"noise": "sym:0.4", "env.hardware": hardware, "env.gpu": hardware, "env.torch": "2.14.1",
                "env.cuda": "13.0", "env.cudnn": "92400", "env.python": "3.11.7", "env.deterministic": "off",
                "env.host": f"node-{hardware[7:11].lower()}", **({TAG_TIME_REFERENCE: refs[method]} if method in refs
                                                                else {})}
        rid = client.create_run(exp, tags=tags).info.run_id
        for k, v in {"method": method, "dataset": "cifar10", "seed": seed, "epochs": 10, "lr": 0.02}.items():
            client.log_param(rid, k, str(v))
        for k, v in {"best_test_acc": acc, "last_test_acc": acc, "wall_clock_s": wall}.items():
            client.log_metric(rid, k, v, step=10)
        client.set_terminated(rid, "FINISHED")
    return tmp_path


def table(tmp, *argv: str) -> str:
    return table_cli(tmp, "hw", *argv)


def csv(text: str) -> pd.DataFrame:
    return pd.read_csv(io.StringIO(text), index_col=0)


def test_time_rows_per_hardware_and_ratios_only_on_the_same_hardware(store):
    t = csv(table(store, "--time", "--format", "csv"))
    assert set(t.index) == {f"ce @ {GPU_A}", f"dividemix @ {GPU_A}", f"dividemix @ {GPU_B}", f"wrongevent @ {GPU_B}"}
    assert float(t.loc[f"dividemix @ {GPU_A}", "s/epoch sym:0.4"]) == pytest.approx(40.0)  # not (400 + 200) / 2
    assert float(t.loc[f"dividemix @ {GPU_B}", "s/epoch sym:0.4"]) == pytest.approx(20.0)
    assert float(t.loc[f"dividemix @ {GPU_A}", "/ CE"]) == pytest.approx(40.0 / 10.5, abs=1e-3)
    assert t.loc[f"dividemix @ {GPU_B}", "/ CE"] == "-"  # CE never ran on the H100: no ratio across cards
    assert float(t.loc[f"wrongevent @ {GPU_B}", "/ DivideMix"]) == pytest.approx(15.0 / 20.0, abs=1e-3)
    assert t.loc[f"wrongevent @ {GPU_B}", "/ CE"] == "-"
    assert "ratios only between runs on the same hardware" in table(store, "--time")


def test_accuracy_groups_by_configuration_unless_asked(store):
    t = csv(table(store, "--format", "csv"))
    assert set(t.index) == {"ce", "dividemix", "wrongevent"}
    assert t.loc["dividemix", "sym:0.4"].startswith("87.00 ± 1.41")  # seeds 1 and 2, whatever ran them
    split = csv(table(store, "--format", "csv", "--by-hardware"))
    assert set(split.index) == {f"ce @ {GPU_A}", f"dividemix @ {GPU_A}", f"dividemix @ {GPU_B}",
                                f"wrongevent @ {GPU_B}"}
    assert split.loc[f"dividemix @ {GPU_B}", "sym:0.4"].startswith("88.00")


def test_env_lists_the_environments_with_their_runs(store, tmp_path):
    env = csv(table(store, "--env", "--format", "csv"))
    assert list(env.index) == [GPU_A, GPU_B]
    assert env.loc[GPU_A, "runs"] == 3 and env.loc[GPU_A, "methods"] == 2
    assert env.loc[GPU_B, "runs"] == 2 and env.loc[GPU_B, "hosts"] == "node-h100"
    assert str(env.loc[GPU_A, "torch"]) == "2.14.1" and str(env.loc[GPU_A, "cuda"]) == "13.0"
    # runs logged before the tags existed are counted, as such
    client = MlflowClient(tracking_uri(store))
    rid = client.create_run(client.get_experiment_by_name("hw").experiment_id, tags={"noise": "sym:0.4"}).info.run_id
    for k, v in {"method": "ce", "dataset": "cifar10", "seed": "3", "epochs": "10", "lr": "0.02"}.items():
        client.log_param(rid, k, v)
    client.log_metric(rid, "best_test_acc", 0.8, step=10)
    client.set_terminated(rid, "FINISHED")
    text = table(store, "--env")
    assert "| not recorded | 1 | 1 |" in text and "'not recorded'" in text.splitlines()[0]
