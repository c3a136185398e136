"""Placeholder: being written (issue 16). Registers nothing yet."""
