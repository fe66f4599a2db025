"""User-facing errors: one line on stderr, exit code 2, no traceback."""


class UsageError(Exception):
    """Bad input from the user. The message names the problem and what to do about it."""
