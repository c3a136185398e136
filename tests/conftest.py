"""Every method registered for the tests that go through the registry; the committed catalogue
is never rewritten by a test run (a stale one must fail tests/test_start.py, not be mended).

Runs log to MLflow from their own process (``BENCH_TRACKING=inline``): MLflow is imported in
the test process already, and a logging child per run would add seconds each. The child
(``TrackerProcess``) is tested where it matters: runs killed with SIGKILL
(tests/test_resume_kill.py) and the run of tests/test_run.py."""
import os

os.environ["BENCH_CATALOGUE_READONLY"] = "1"
os.environ["BENCH_TRACKING"] = "inline"

import methods  # noqa: E402

methods.load_all()
