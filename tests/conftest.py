"""Every method registered for the tests that go through the registry; the committed catalogue
is never rewritten by a test run (a stale one must fail tests/test_start.py, not be mended).

Runs log to MLflow from their own process (``BENCH_TRACKING=inline``): MLflow is imported in
the test process already, and a logging child per run would add seconds each. The child
(``TrackerProcess``) is tested where it matters: runs killed with SIGKILL
(tests/test_resume_kill.py) and the run of tests/test_run.py.

Pretrained weights are never downloaded (``HF_HUB_OFFLINE=1``); tests/test_weights.py serves a
stand-in hub of its own."""
import os

os.environ["BENCH_CATALOGUE_READONLY"] = "1"
os.environ["BENCH_TRACKING"] = "inline"
# no test reaches the internet for weights: those that test downloading (test_weights.py, one in
# test_cli_errors.py) turn this off and serve the hub themselves or refuse every connection
os.environ["HF_HUB_OFFLINE"] = "1"

import methods  # noqa: E402

methods.load_all()
