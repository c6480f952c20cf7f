"""One exception type for problems the user can fix (bad paths, bad configs, bad data).

The command-line scripts catch it, print its message once and exit with status 2; anything else
is a bug and keeps its traceback.
"""

import sys
from contextlib import contextmanager


class UserError(Exception):
    """A problem with the user's input, explained in the message."""

    exit_code = 2


class DataError(UserError):
    """The dataset could not be found, read or understood."""


class ConfigError(UserError):
    """A configuration file or flag is invalid."""


@contextmanager
def exit_on_user_error():
    """Turn a UserError into one 'error: ...' line on stderr and its exit status (2 unless it says)."""
    try:
        yield
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(exc.exit_code) from None
