"""Passwords in storage and tracking URLs never reach logs, MLflow or reports."""

from __future__ import annotations

import pytest

from sweeper.redact import redact


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("postgresql+psycopg://bob:hunter2@db:5432/optuna", "postgresql+psycopg://bob:***@db:5432/optuna"),
        ("http://u:p%40ss@mlflow:5000", "http://u:***@mlflow:5000"),
        ("failed: postgresql://x:y@h/d?password=z", "failed: postgresql://x:***@h/d?password=***"),
        ("sqlite:///sweeper.db", "sqlite:///sweeper.db"),
    ],
)
def test_passwords_in_urls_are_redacted(text, shown):
    assert redact(text) == shown
