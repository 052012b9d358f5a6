"""A model spec after resolution: a record of its own, so the adapter checks can name it without importing
the loader (:mod:`medtune.models` resolves specs; :mod:`medtune.lora_adapter` checks an adapter's base)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class ResolvedModel:
    """Where a spec's weights are, after resolution (and conversion, for GGUF)."""

    spec: str
    kind: Literal["embedded", "gguf", "local", "hub"]
    path: str
    """A local directory for embedded/gguf/local; the Hub id for hub."""
