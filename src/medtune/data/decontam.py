"""Decontamination: no training or replay document may quote an evaluation item.

The leakage guard (:mod:`medtune.data.leakage`) compares whole questions. Text leaks in other ways:
PubMedQA's contexts *are* PubMed abstracts, so a PubMed pretraining corpus, or web text that quotes
benchmark items, trains on the test set with no question string in common. As GPT-3 (Brown et al.,
2020, appendix C) and lm-eval's decontamination do, a document is contaminated when it shares an
n-gram of words (13 by default) with an evaluation item's text (its question, context and options),
after normalising both: case folded, punctuation and symbols deleted, whitespace collapsed.

The evaluation side is indexed once: each n-gram is hashed to 64 bits and kept in one sorted array,
so memory depends on the evaluation sets only, never on the corpus. Training documents are checked
a batch at a time (word hashes, rolling n-gram hashes and one ``searchsorted`` in numpy), streamed
with the replay reading, so a corpus of any size is checked at the memory of one batch.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import numpy as np
from pydantic import Field

from medtune.config import StrictModel
from medtune.data.records import QARecord
from medtune.errors import LeakageError


class DecontamConfig(StrictModel):
    """The n-gram check of every training and replay document against every evaluation split."""

    enabled: bool = True
    """Check (with evaluation sources in `eval`); false skips the check."""
    ngram: int = Field(13, ge=4)
    """Words per n-gram (13: GPT-3's and lm-eval's decontamination)."""
    threshold: int = Field(1, ge=1)
    """A document is contaminated when at least this many of its n-grams occur in one evaluation split."""
    examples: int = Field(5, ge=0)
    """Contaminated documents shown per source in the report (with the n-gram they share)."""


_PUNCTUATION = re.compile(r"[^\w\s]|_")
_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)  # odd: the rolling hash is a bijection per step


def words(text: str) -> list[str]:
    """The normalised words of ``text``: case folded, punctuation and symbols deleted (so "anti-platelet"
    and "antiplatelet" agree), split on whitespace."""
    return _PUNCTUATION.sub("", text.casefold()).split()


def _word_hashes(ws: list[str]) -> np.ndarray:
    """(len(ws),) uint64: Python's string hash, fixed within a process (the index and the check share one)."""
    return np.fromiter(map(hash, ws), np.int64, len(ws)).view(np.uint64)


def ngram_hashes(h: np.ndarray, n: int) -> np.ndarray:
    """(len(h) - n + 1,) uint64: a hash of each run of n word hashes (polynomial, wrapping at 2^64)."""
    m = len(h) - n + 1
    if m <= 0:
        return np.empty(0, np.uint64)
    g = h[:m].copy()
    for j in range(1, n):
        g *= _MULTIPLIER
        g += h[j : j + m]
    return g


@dataclass(frozen=True)
class Hit:
    """One contaminated document: which evaluation item it shares an n-gram with, and the n-gram."""

    doc_id: str
    eval_set: str
    eval_id: str
    ngram: str
    matches: int
    """The document's n-grams found in that evaluation split."""


@dataclass
class SourceFindings:
    """What the check found in one training or replay source."""

    checked: int = 0
    contaminated: int = 0
    per_eval_set: dict[str, int] = field(default_factory=dict)
    examples: list[Hit] = field(default_factory=list)


@dataclass
class DecontamReport:
    """Per source, the documents that share an n-gram with an evaluation split; ``dropped``: removed from
    the build (``drop_leaked``) rather than refused."""

    ngram: int
    threshold: int
    eval_ngrams: int
    dropped: bool
    sources: dict[str, SourceFindings] = field(default_factory=dict)


class _Doc(Protocol):
    @property
    def id(self) -> str: ...

    @property
    def text(self) -> str: ...


D = TypeVar("D", bound=_Doc)


def eval_texts(record: QARecord) -> list[str]:
    """The texts of an evaluation item that a training document must not quote: its context, and its
    question followed by its options (a quoted item with its options is caught across the boundary)."""
    return [t for t in (record.context, " ".join((record.question, *record.options))) if t]


class Screen:
    """The hashed n-gram index of the evaluation splits, and the check of training documents against it."""

    def __init__(self, cfg: DecontamConfig, eval_sets: Iterable[tuple[str, Sequence[QARecord]]], drop: bool):
        """``eval_sets``: (name, records) pairs, every split the build guards."""
        self.cfg, self.drop = cfg, drop
        self.items: list[tuple[str, str]] = []  # owner -> (eval set, eval id)
        keys, owners = [], []
        for name, records in eval_sets:
            for rec in records:
                for text in eval_texts(rec):
                    g = ngram_hashes(_word_hashes(words(text)), cfg.ngram)
                    keys.append(g)
                    owners.append(np.full(len(g), len(self.items), np.int64))
                self.items.append((name, rec.id))
        all_keys = np.concatenate(keys) if keys else np.empty(0, np.uint64)
        all_owners = np.concatenate(owners) if owners else np.empty(0, np.int64)
        self.keys, first = np.unique(all_keys, return_index=True)  # sorted; an n-gram owned by its first item
        self.owners = all_owners[first]
        self.report = DecontamReport(cfg.ngram, cfg.threshold, len(self.keys), drop)

    def check(self, source: str, docs: Sequence[D]) -> list[D]:
        """Check a batch of one source's documents; returns the clean ones when dropping, else all of them
        (:meth:`raise_if_found` refuses the build once the source is read)."""
        found = self.report.sources.setdefault(source, SourceFindings())
        found.checked += len(docs)
        if not len(self.keys) or not docs:
            return list(docs)
        n = self.cfg.ngram
        doc_words = [words(d.text) for d in docs]
        h = _word_hashes([w for ws in doc_words for w in ws])
        g = ngram_hashes(h, n)
        starts = np.cumsum([0] + [len(ws) for ws in doc_words])  # (docs + 1,) word offsets
        pos = np.minimum(np.searchsorted(self.keys, g), len(self.keys) - 1)
        hit = self.keys[pos] == g
        hit_at = np.flatnonzero(hit)
        if not len(hit_at):
            return list(docs)
        doc_of = np.searchsorted(starts, hit_at, side="right") - 1
        inside = hit_at + n <= starts[doc_of + 1]  # an n-gram across two documents is no match
        hit_at, doc_of = hit_at[inside], doc_of[inside]
        bad: set[int] = set()
        for d in np.unique(doc_of):
            at = hit_at[doc_of == d]
            owners = self.owners[pos[at]]
            sets = [self.items[o][0] for o in owners]
            best = max(set(sets), key=sets.count)
            if sets.count(best) < self.cfg.threshold:
                continue
            bad.add(int(d))
            found.contaminated += 1
            found.per_eval_set[best] = found.per_eval_set.get(best, 0) + 1
            if len(found.examples) < self.cfg.examples:
                first = int(at[sets.index(best)])
                k = first - int(starts[d])
                found.examples.append(Hit(docs[d].id, best, self.items[int(owners[sets.index(best)])][1],
                                          " ".join(doc_words[d][k : k + n]), sets.count(best)))
        return [doc for i, doc in enumerate(docs) if i not in bad] if self.drop else list(docs)

    def check_all(self, source: str, docs: Iterable[D], batch: int = 256) -> list[D]:
        """:meth:`check` over ``docs`` in batches of ``batch``."""
        out: list[D] = []
        chunk: list[D] = []
        for doc in docs:
            chunk.append(doc)
            if len(chunk) == batch:
                out += self.check(source, chunk)
                chunk = []
        return out + self.check(source, chunk)

    def raise_if_found(self, source: str) -> None:
        """Refuse the build (unless dropping) when ``source`` has contaminated documents, with examples."""
        found = self.report.sources.get(source)
        if self.drop or found is None or not found.contaminated:
            return
        per = ", ".join(f"{k}: {v}" for k, v in found.per_eval_set.items())
        shown = "; ".join(f"{h.doc_id} ~ {h.eval_set}:{h.eval_id} \"{h.ngram}\"" for h in found.examples[:3])
        raise LeakageError(
            f"decontamination: {found.contaminated} of {found.checked} documents of source {source} share a "
            f"{self.cfg.ngram}-gram with an evaluation split ({per}), e.g. {shown}. Remove them from the source, or "
            "set drop_leaked: true to drop them (reported in manifest.json)")
