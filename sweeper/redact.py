"""Passwords in storage or tracking URLs never reach logs, MLflow or reports."""

from __future__ import annotations

import re

_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<user>[^:/@\s]*):(?P<secret>[^@\s]*)@")
_QUERY_SECRET = re.compile(r"(?i)([?&](?:password|passwd|pwd|token|secret)=)[^&\s]*")


def redact(text: str) -> str:
    """Replace the password of every URL in ``text`` by ``***``.

    >>> redact("postgresql+psycopg://bob:hunter2@db:5432/optuna")
    'postgresql+psycopg://bob:***@db:5432/optuna'
    """
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)
    return _QUERY_SECRET.sub(r"\1***", text)
