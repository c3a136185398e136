"""Every method registered for the tests that go through the registry; the catalogue cache is a
temporary folder of the test session's own (``BENCH_CACHE_DIR``), built here once from the
registries just imported, so a test run never writes the user's cache and the subprocess tests
of tests/test_start.py find it built (they must not import torch to build it).

Runs log to MLflow from their own process (``BENCH_TRACKING=inline``): MLflow is imported in
the test process already, and a logging child per run would add seconds each. The child
(``TrackerProcess``) is tested where it matters: runs killed with SIGKILL
(tests/test_resume_kill.py) and the run of tests/test_run.py.

Pretrained weights are never downloaded (``HF_HUB_OFFLINE=1``); tests/test_weights.py serves a
stand-in hub of its own."""
import atexit
import os
import shutil
import tempfile

os.environ["BENCH_CACHE_DIR"] = tempfile.mkdtemp(prefix="bench-cache-")
atexit.register(shutil.rmtree, os.environ["BENCH_CACHE_DIR"], ignore_errors=True)
os.environ["BENCH_TRACKING"] = "inline"
# no test reaches the internet for weights: those that test downloading (test_weights.py, one in
# test_cli_errors.py) turn this off and serve the hub themselves or refuse every connection
os.environ["HF_HUB_OFFLINE"] = "1"

import methods  # noqa: E402

methods.load_all()

from bench.training.catalogue import catalogue  # noqa: E402

catalogue()  # milliseconds now that every method is imported
