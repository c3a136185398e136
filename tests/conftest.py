"""Every method registered for the tests that go through the registry; the committed catalogue
is never rewritten by a test run (a stale one must fail `test_catalogue`, not be mended)."""
import os

os.environ["BENCH_CATALOGUE_READONLY"] = "1"

import methods  # noqa: E402

methods.load_all()
