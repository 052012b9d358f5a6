"""Errors that tell the user exactly where bad input is."""

from __future__ import annotations

from pathlib import Path


class MedtuneError(Exception):
    """Base class: any error medtune raises on purpose. The CLI prints these without a traceback."""


class DataError(MedtuneError):
    """A source row (or a whole file) is unreadable or invalid.

    ``location`` is ``line N`` for line-based files, ``key K`` for JSON objects keyed by id,
    ``row N`` for CSV rows (1-based, header excluded), or None for file-level problems.
    """

    def __init__(self, path: str | Path, location: str | None, field: str | None, message: str):
        self.path = str(path)
        self.location = location
        self.field = field
        self.message = message
        where = self.path + (f", {location}" if location else "") + (f", field '{field}'" if field else "")
        super().__init__(f"{where}: {message}")


class ConfigError(MedtuneError):
    """A config file or value is invalid; the message names the key path and the allowed values."""


class ModelError(MedtuneError):
    """A model spec cannot be resolved or loaded safely."""


class LeakageError(MedtuneError):
    """Training data overlaps an evaluation split."""
