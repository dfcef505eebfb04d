"""Errors of the data layer."""

from __future__ import annotations

from usjepa.errors import UsjepaError


class DataError(UsjepaError, RuntimeError):
    """The data cannot be used as configured (too many bad items, leaking splits, a broken manifest...)."""


class BadItem(Exception):
    """One item cannot be read; the dataset turns this into a `None` item and a line in the bad-item report."""

    def __init__(self, reason: str, path: str = ""):
        super().__init__(f"{path}: {reason}" if path else reason)
        self.reason = reason
        self.path = path
