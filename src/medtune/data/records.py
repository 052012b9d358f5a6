"""The record types every data adapter produces.

A QA benchmark item becomes a :class:`QARecord`; a general-domain text becomes a
:class:`TextDoc`. Records are frozen so a stage can never change what an earlier stage read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class QARecord:
    """One multiple-choice question, in the same shape whatever the source format."""

    id: str
    """Stable id inside its dataset (PubMedQA: the PMID; MedMCQA: its `id`; others: file + line)."""
    dataset: str
    """Adapter name that produced it, e.g. ``pubmedqa``."""
    question: str
    context: str | None
    """Passage the question is about (PubMedQA abstract sections joined by newlines), else None."""
    options: tuple[str, ...]
    """Answer choices in display order (PubMedQA: ``("yes", "no", "maybe")``)."""
    answer: int
    """0-based index of the correct option."""
    context_parts: tuple[str, ...] = ()
    """The context as the source split it (PubMedQA ``CONTEXTS``); lm-eval prompts join these."""
    option_labels: tuple[str, ...] = ()
    """Labels shown before each option (``A``, ``B``, ... or ARC's own ``1``..``4``)."""
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    """Source-specific extras: MedMCQA ``subject``/``topic``, MMLU ``subject``, ``split``, ``source``."""

    @property
    def answer_text(self) -> str:
        return self.options[self.answer]


@dataclass(frozen=True)
class TextDoc:
    """One general-domain document (replay or perplexity text)."""

    id: str
    dataset: str
    text: str
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class ChatRecord:
    """One conversation of instruction data (alpaca, sharegpt or OpenAI-style ``messages``), as turns."""

    id: str
    dataset: str
    messages: tuple[tuple[str, str], ...]
    """``(role, content)`` per turn, role ``system`` / ``user`` / ``assistant``; at least one assistant turn."""
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
