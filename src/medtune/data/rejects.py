"""Strict by default, or collect invalid rows into a rejects file with ``--skip-invalid``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medtune import atomic
from medtune.errors import DataError


@dataclass
class Rejects:
    """Where adapters send invalid rows.

    With ``skip_invalid=False`` (the default) the first invalid row raises its :class:`DataError`.
    With ``skip_invalid=True`` the row is kept here with its error, and :meth:`write` saves them all,
    so nothing is dropped silently.
    """

    skip_invalid: bool = False
    rows: list[dict[str, Any]] = field(default_factory=list)

    def reject(self, error: DataError, raw: Any = None) -> None:
        if not self.skip_invalid:
            raise error
        self.rows.append(
            {"file": error.path, "location": error.location, "field": error.field, "error": error.message, "raw": _jsonable(raw)}
        )

    def __len__(self) -> int:
        return len(self.rows)

    def write(self, path: str | Path) -> None:
        atomic.write_jsonl(path, self.rows)


def _jsonable(raw: Any) -> Any:
    if raw is None or isinstance(raw, (str, int, float, bool, list, dict)):
        return raw
    return repr(raw)
