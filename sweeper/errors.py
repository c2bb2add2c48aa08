"""The one error type users see: bad input, said once, exit code 2."""

from __future__ import annotations


class UserError(Exception):
    """Bad input (spec, path, model name, storage URL): the message says what and what is allowed.

    The CLI prints the message alone (no traceback) and exits with ``exit_code``.
    """

    exit_code = 2
