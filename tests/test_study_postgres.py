"""Studies shared by several workers through PostgreSQL: exactly the requested number of
finished trials, none lost or run twice, and a worker killed mid-trial leaves a study that
restarted workers finish.

Needs a server: ``BENCH_TEST_POSTGRES=postgresql://USER@HOST:PORT/DB`` (``.ci/run`` starts a
throwaway one with ``.ci/postgres``). Without it these tests skip, saying how to enable them;
with ``BENCH_REQUIRE_POSTGRES=1`` (CI) a missing server is a failure, not a skip.
"""
from __future__ import annotations

import os
import signal
import socket
import uuid

import pytest
import sqlalchemy
from mlflow.tracking import MlflowClient

from bench.drivers.study import pg_engine_kwargs
from tests.test_study import check_killed_and_continued, mlflow_uri, trials_of, wait_for, worker

SERVER = os.environ.get("BENCH_TEST_POSTGRES")


@pytest.fixture
def pg_url():
    """A fresh database on the test server, dropped afterwards."""
    if not SERVER:
        message = ("no PostgreSQL server: set BENCH_TEST_POSTGRES=postgresql://USER@127.0.0.1:PORT/DB "
                   "to run the distributed-study tests (`. .ci/postgres` starts a throwaway one)")
        if os.environ.get("BENCH_REQUIRE_POSTGRES") == "1":
            pytest.fail(message)
        pytest.skip(message)
    name = f"bench_test_{uuid.uuid4().hex[:8]}"
    admin = sqlalchemy.create_engine(SERVER, isolation_level="AUTOCOMMIT", poolclass=sqlalchemy.pool.NullPool,
                                     **pg_engine_kwargs())
    with admin.connect() as c:
        c.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))
    yield SERVER.rsplit("/", 1)[0] + "/" + name
    with admin.connect() as c:
        c.execute(sqlalchemy.text(f"DROP DATABASE {name} WITH (FORCE)"))
    admin.dispose()


def test_two_workers_at_once_finish_exactly_the_requested_trials(tmp_path, pg_url):
    url, wanted = pg_url, 4
    workers = [worker(tmp_path, url, wanted) for _ in range(2)]
    assert [w.wait(timeout=400) for w in workers] == [0, 0]
    trials = trials_of(url)
    assert [t.state.name for t in trials] == ["COMPLETE"] * wanted  # none lost, none extra, none failed
    assert sorted(t.number for t in trials) == list(range(wanted))
    # every trial was run by one of the two workers (which of them is up to timing)
    assert {t.user_attrs["worker"] for t in trials} <= {f"{socket.gethostname()}:{w.pid}" for w in workers}
    assert len({t.user_attrs["run_dir"] for t in trials}) == wanted
    client = MlflowClient(mlflow_uri(tmp_path))
    runs = client.search_runs([client.get_experiment_by_name("study-s").experiment_id])
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    assert sorted(int(r.data.tags["trial"]) for r in children) == list(range(wanted))  # each trial ran once
    assert len([r for r in runs if r.data.tags.get("role") == "study"]) == 1  # one parent run, not one per worker


def test_killing_one_worker_mid_trial_and_restarting_it_finishes_the_study(tmp_path, pg_url):
    url_study, wanted, name = pg_url, 4, "s"
    a = worker(tmp_path, url_study, wanted, name=name)
    b = worker(tmp_path, url_study, wanted, name=name)
    mine = f"{socket.gethostname()}:{a.pid}"

    def a_is_past_an_epoch() -> bool:
        return any(t.state.name == "RUNNING" and t.intermediate_values and t.user_attrs.get("worker") == mine
                   for t in trials_of(url_study, name))

    try:
        wait_for(a_is_past_an_epoch, 300, "worker A inside a trial")
    finally:
        a.send_signal(signal.SIGKILL)
        a.wait()
    restarted = worker(tmp_path, url_study, wanted, name=name)
    assert restarted.wait(timeout=400) == 0 and b.wait(timeout=400) == 0
    check_killed_and_continued(tmp_path, url_study, trials_of(url_study, name), wanted)
