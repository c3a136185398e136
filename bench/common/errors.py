"""The one error type the command line turns into a one-line message and exit code 2."""


class UsageError(Exception):
    """Bad input from the user: the message says what is wrong and what is valid."""

# `bench run`'s exit code for a run stopped by a non-finite loss or logits (bench/training/health.py):
# distinct from success (0), usage errors (2) and interrupts (130)
EXIT_DIVERGED = 3
