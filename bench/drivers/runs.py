"""One run, and the runs of an experiment: the one implementation behind ``bench run`` and the
Python face (:func:`bench.run`, :func:`bench.load_runs`), so that a run started from Python is
resolved, checked, recorded and summarised exactly as one started from the command line.

Progress (the run folder, the backbone's weights, the setup time, one line per epoch, resume
and stop notes) goes to the ``bench`` logger at INFO. The command line writes it to stderr with
:func:`progress_to_stderr`; a library caller sees it only where it configures logging
(``logging.basicConfig(level=logging.INFO)``, say). Only the standard library is imported
here at first: the command line imports this module before every command.
"""
from __future__ import annotations

import contextlib
import json
import logging
import shutil
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from bench.common.errors import UsageError

LOG = logging.getLogger("bench")


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM during a run's training: its last finished epoch is checkpointed (and
    said so) where there is one; the command line exits with 130 without a second line."""


class StderrHandler(logging.Handler):
    """Each message as it is, one line, on the ``sys.stderr`` of the moment it is logged (not of
    the moment the handler was made: tests and callers redirect stderr around a command)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = sys.stderr
            stream.write(self.format(record) + "\n")
            stream.flush()  # a line per epoch shows as the epoch ends, under a batch system too
        except Exception:
            self.handleError(record)


@contextlib.contextmanager
def progress_to_stderr() -> Iterator[None]:
    """The ``bench`` logger's INFO messages on stderr, as they are, while the block runs (a
    command); then the logger as it was, so a library caller's configuration is left alone. Not
    propagated meanwhile: a root handler someone configured would print each line twice."""
    handler = StderrHandler(logging.INFO)
    level, propagate = LOG.level, LOG.propagate
    LOG.addHandler(handler)
    LOG.setLevel(logging.INFO)
    LOG.propagate = False
    try:
        yield
    finally:
        LOG.removeHandler(handler)
        LOG.setLevel(level)
        LOG.propagate = propagate


def run_request(request: Mapping[str, Any], *, resume: str | Path | None = None, stop_after: int | None = None,
                started: float | None = None, tracker: Any = None) -> dict[str, Any]:
    """Run ``request`` (run options as :func:`bench.training.resolve.resolve` takes them) to its
    end, or continue the run in folder ``resume`` (``request`` then may change only where it
    runs); its summary (what ``bench run`` prints as its last line; NaN where a value is
    missing). ``stop_after``: stop, resumably, once that many epochs are done. ``started``:
    ``time.perf_counter()`` when the caller started (setup_time_s counts from there).
    ``tracker``: an MLflow logger the caller started early, else the trainer starts one. A
    usage error is one :class:`UsageError` line, raised before anything is written where it can
    be found before; a run that fails before its first checkpoint leaves no folder behind."""
    from bench.training.resolve import resolve, resolve_resume

    if stop_after is not None and (isinstance(stop_after, bool) or not isinstance(stop_after, int)):
        raise UsageError(f"--stop-after {stop_after!r}: an integer number of epochs")
    if resume is not None:
        run_dir = Path(resume)
        spec = resolve_resume(run_dir, request)
        if (run_dir / "summary.json").exists():
            LOG.info(f"run in {run_dir} has already finished; its summary follows")
            return json.loads((run_dir / "summary.json").read_text())
        from bench.training.trainer import Trainer

        trainer = Trainer(spec, run_dir, stop_after=stop_after, started=started, tracker=tracker)
        summary = _run_trainer(trainer, True)
    else:
        spec = resolve(request)
        from bench.training.trainer import Trainer, new_run_dir

        run_dir = new_run_dir(spec)
        trainer = Trainer(spec, run_dir, stop_after=stop_after, started=started, tracker=tracker)
        try:
            summary = _run_trainer(trainer, False)
        except UsageError:
            # failed before its first checkpoint (e.g. weights not found): leave nothing behind
            if not any(run_dir.glob("checkpoint.pt")):
                shutil.rmtree(run_dir, ignore_errors=True)
            raise
    if summary["status"] == "stopped":
        LOG.info(f"stopped after epoch {summary['epochs_done']}; continue with: "
                 f"python -m bench run --resume {run_dir}")
    return summary


def _run_trainer(trainer: Any, resume: bool) -> dict[str, Any]:
    try:
        return trainer.run(resume=resume)
    except KeyboardInterrupt:
        if (trainer.run_dir / "checkpoint.pt").exists():
            LOG.info(f"bench: interrupted; the last finished epoch is checkpointed: continue with "
                     f"python -m bench run --resume {trainer.run_dir}")
        raise Interrupted from None


def load_runs(experiment: str, tracking_uri: str | None = None) -> Any:
    """The finished runs of ``experiment`` as a pandas DataFrame, one row per run, as the
    tables read them (:func:`bench.records.reports.load_runs`): its method, data set, setting,
    seed, summary metrics, parameters (the ``params`` column, a dict) and grouping keys."""
    from bench.records.reports import load_runs as read

    return read(tracking_uri, experiment)
