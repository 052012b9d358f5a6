"""The leakage guard: no training item may be an evaluation item.

A training item leaks into an eval set when

* ``id``: its id equals an eval item's id within the same dataset family, for datasets whose ids
  name the item itself (:data:`ID_KEYED_DATASETS`: PubMedQA PMIDs, MedMCQA question ids). Ids made
  of file + line (MedQA, MMLU, ARC) repeat across splits, so they are never compared;
* ``exact``: its question string equals an eval question;
* ``normalized``: the questions are equal after :func:`normalize_text` (case, Unicode form,
  punctuation, whitespace).

Every eval set is indexed once into hash sets, so the check is O(train + eval). Eval sets are
given as (name, records) pairs (or a mapping): each set is checked, even two under one name.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from medtune.data.records import QARecord
from medtune.errors import LeakageError

LeakKind = Literal["id", "exact", "normalized"]

ID_KEYED_DATASETS = frozenset({"pubmedqa", "medmcqa"})
"""Dataset families whose record ids identify the item (PMID, MedMCQA uuid), so equal ids leak."""

EvalSets = Mapping[str, Sequence[QARecord]] | Sequence[tuple[str, Sequence[QARecord]]]
"""Named eval sets: a mapping, or (name, records) pairs, which cannot lose a set to a repeated name."""

MAX_EXAMPLES = 5
"""How many leaking ids a :class:`LeakageError` shows."""


@dataclass(frozen=True)
class Leak:
    """One training item found in one eval set (the strongest match: id, then exact, then normalized)."""

    train_id: str
    eval_set: str
    eval_id: str
    how: LeakKind


@dataclass
class GuardReport:
    """What :func:`guard` kept and dropped."""

    kept: list[QARecord]
    dropped: list[Leak]
    """One entry per (training item, eval set) pair that matched."""
    counts: dict[str, int] = field(default_factory=dict)
    """Per eval set name: how many training items leak into it (0 for clean sets; sets sharing a name add up)."""
    n_dropped: int = 0
    """Distinct training items dropped (an item leaking into two sets counts once)."""


def normalize_text(s: str) -> str:
    """Unicode NFKC, casefold, delete punctuation, collapse whitespace to single spaces, strip."""
    s = unicodedata.normalize("NFKC", s).casefold()
    s = "".join(ch for ch in s if not unicodedata.category(ch).startswith("P"))
    return " ".join(s.split())


def family(dataset: str) -> str:
    """Dataset family of an adapter name: ``pubmedqa_hub`` and ``pubmedqa`` share PMIDs."""
    return dataset.removesuffix("_hub")


@dataclass(frozen=True)
class _Index:
    """Hash lookups for one eval set: key -> the first eval id with that key."""

    ids: dict[tuple[str, str], str]
    exact: dict[str, str]
    normalized: dict[str, str]


def _index(records: Sequence[QARecord]) -> _Index:
    ids: dict[tuple[str, str], str] = {}
    exact: dict[str, str] = {}
    normalized: dict[str, str] = {}
    for r in records:
        fam = family(r.dataset)
        if fam in ID_KEYED_DATASETS:
            ids.setdefault((fam, r.id), r.id)
        if r.question.strip():
            exact.setdefault(r.question, r.id)
        norm = normalize_text(r.question)
        if norm:  # a question of only punctuation must not match every other such question
            normalized.setdefault(norm, r.id)
    return _Index(ids, exact, normalized)


def _match(r: QARecord, norm: str, index: _Index) -> tuple[str, LeakKind] | None:
    eval_id = index.ids.get((family(r.dataset), r.id))
    if eval_id is not None:
        return eval_id, "id"
    eval_id = index.exact.get(r.question)
    if eval_id is not None:
        return eval_id, "exact"
    eval_id = index.normalized.get(norm) if norm else None
    if eval_id is not None:
        return eval_id, "normalized"
    return None


def _pairs(eval_sets: EvalSets) -> list[tuple[str, Sequence[QARecord]]]:
    return list(eval_sets.items()) if isinstance(eval_sets, Mapping) else list(eval_sets)


def _scan(train: Sequence[QARecord], eval_sets: EvalSets) -> list[tuple[int, Leak]]:
    """(position in ``train``, leak) pairs; positions, not ids, say which records to drop."""
    indexes = [(name, _index(records)) for name, records in _pairs(eval_sets)]
    found: list[tuple[int, Leak]] = []
    for i, r in enumerate(train):
        norm = normalize_text(r.question)
        for name, index in indexes:
            hit = _match(r, norm, index)
            if hit is not None:
                found.append((i, Leak(train_id=r.id, eval_set=name, eval_id=hit[0], how=hit[1])))
    return found


def find_leaks(train: Sequence[QARecord], eval_sets: EvalSets) -> list[Leak]:
    """Every (training item, eval set) overlap, in training order, then eval-set order."""
    return [leak for _, leak in _scan(train, eval_sets)]


def _counts(leaks: Sequence[Leak], eval_sets: EvalSets) -> dict[str, int]:
    counts = dict.fromkeys((name for name, _ in _pairs(eval_sets)), 0)
    for leak in leaks:
        counts[leak.eval_set] += 1
    return counts


def leak_message(leaks: Sequence[Leak], counts: Mapping[str, int], n_items: int) -> str:
    """The refusal text: how many leak, into which sets, a few examples, and how to drop them."""
    sets = ", ".join(f"{name} ({n})" for name, n in counts.items() if n)
    examples = "; ".join(f"train id {leak.train_id!r} = {leak.eval_set} id {leak.eval_id!r} ({leak.how} match)"
                         for leak in leaks[:MAX_EXAMPLES])
    more = f" (and {len(leaks) - MAX_EXAMPLES} more)" if len(leaks) > MAX_EXAMPLES else ""
    return (f"{n_items} training item(s) leak into eval sets: {sets}. Examples: {examples}{more}. "
            "To drop them from training instead, set `drop_leaked: true` in the config "
            "or pass --drop-leaked.")


def guard(train: Sequence[QARecord], eval_sets: EvalSets, drop: bool) -> GuardReport:
    """Refuse (``drop=False``: raise :class:`LeakageError`) or drop leaking training items.

    Without leaks both modes return every training record and zero counts.
    """
    found = _scan(train, eval_sets)
    leaks = [leak for _, leak in found]
    counts = _counts(leaks, eval_sets)
    leaked = {i for i, _ in found}
    if leaks and not drop:
        raise LeakageError(leak_message(leaks, counts, len(leaked)))
    kept = [r for i, r in enumerate(train) if i not in leaked]
    return GuardReport(kept=kept, dropped=leaks, counts=counts, n_dropped=len(leaked))
