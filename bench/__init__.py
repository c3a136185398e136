"""The Python face of the harness: :func:`run` (one run, as ``bench run``) and :func:`load_runs`
(an experiment's runs from MLflow, as ``bench table`` reads them).

Nothing is imported here until a function is called, so ``import bench`` (and every
``python -m bench`` command, ``list`` above all) stays fast and free of torch. Progress goes to
the ``bench`` logger at INFO level: call ``logging.basicConfig(level=logging.INFO)`` to see it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

PROGRESS = {"auto": None, "bar": True, "lines": False}  # --progress, as the run option takes it


def run(*, resume: str | Path | None = None, stop_after: int | None = None, **options: Any) -> dict[str, Any]:
    """Train one method on one data set and noise setting, as ``python -m bench run`` does; its
    summary (the dict ``bench run`` prints as its last line, NaN where it prints null).

    ``options`` are the ``bench run`` flags with underscores, ``method="ce"``, ``noise_rate=0.4``,
    ``tracking_uri=...``, with ``sets={"key": value}`` for ``--set`` (a dict or ``["k=v"]``),
    ``pretrained``/``offline`` True or False and ``progress`` one of auto, bar, lines (or a
    bool). They are resolved and checked by the same code as the command line's
    (:func:`bench.training.resolve.resolve`): a preset, then the data set's protocol defaults,
    then the generic ones. ``resume``: a run folder to continue (then ``options`` may change
    only where it runs); ``stop_after``: stop, resumably, once that many epochs are done.
    Bad input raises :class:`bench.common.errors.UsageError` with the command line's one-line
    message, before anything is written."""
    import time

    started = time.perf_counter()  # setup_time_s counts from here, as the command line's from its start
    from bench.common.errors import UsageError
    from bench.common.registry import UnknownNameError
    from bench.drivers.runs import run_request

    progress = options.get("progress")
    if isinstance(progress, str):
        if progress not in PROGRESS:
            raise UsageError(f"--progress {progress}: valid values are {', '.join(PROGRESS)}")
        options["progress"] = PROGRESS[progress]
    try:
        return run_request(options, resume=resume, stop_after=stop_after, started=started)
    except UnknownNameError as exc:  # a mistyped name: the same line as the command line's, one type to catch
        raise UsageError(str(exc)) from None


def load_runs(experiment: str, tracking_uri: str | None = None) -> Any:
    """The finished runs of MLflow experiment ``experiment`` as a pandas DataFrame, one row per
    run: ``run_id``, ``method``, ``dataset``, ``setting``, ``seed``, ``best_test_acc``,
    ``last_test_acc``, ``wall_clock_s``, ``epochs``, ``epoch_s``, ``clean_auc``, ``t_error``,
    ``params`` (every logged parameter, a dict) and the keys tables group by. ``tracking_uri``:
    the store (default: ``$MLFLOW_TRACKING_URI`` or ``sqlite:///results/mlflow.db``). An unknown
    experiment, or one without finished runs, raises :class:`bench.common.errors.UsageError`."""
    from bench.drivers.runs import load_runs as read

    return read(experiment, tracking_uri)
