"""``manifest.json`` of ``medtune data build``: what the build read, dropped, mixed and packed, as a typed
record with its load/save, owned by the data stage.

The fields later stages read (the realised mix, the packing, the leakage guard's count) are typed; the
rest of the manifest (sources with their sha256, decontamination findings, provenance) is kept as written.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from medtune import atomic
from medtune.records import ReadRecord


class MixFacts(ReadRecord):
    """The mix plan's report (:class:`~medtune.data.mixing.MixReport`)."""

    general_share_target: float


class PackingFacts(ReadRecord):
    """What the packed blocks hold."""

    blocks: int
    block_size: int
    source_tokens: dict[str, int]
    """Tokens per source in the packed blocks."""
    general_share: float
    """Realised share of general (replay) tokens."""


class LeakageFacts(ReadRecord):
    dropped_items: int
    """Training items dropped by the leakage guard."""


class DataManifest(ReadRecord):
    """A data build's ``manifest.json``."""

    sources: list[dict[str, Any]]
    leakage: LeakageFacts
    mix: MixFacts | None
    packing: PackingFacts

    @classmethod
    def load(cls, path: str | Path) -> "DataManifest | None":
        """The manifest of a data directory (or the file itself); None when the build has not finished."""
        path = Path(path)
        path = path / "manifest.json" if path.is_dir() else path
        return cls.model_validate(json.loads(path.read_text())) if path.is_file() else None

    def save(self, path: str | Path) -> None:
        atomic.write_json(path, self.model_dump(mode="json"))
