"""The one table of data adapters, and :func:`load_source`, which every stage uses to read a source."""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from itertools import islice
from pathlib import Path

from medtune.data.adapters import arc, chat, medmcqa, medqa, mmlu, pubmedqa, qa, text
from medtune.data.records import ChatRecord, QARecord, TextDoc
from medtune.data.rejects import Rejects
from medtune.data.spec import ADAPTER_NAMES, SourceConfig
from medtune.errors import ConfigError, DataError

Records = list[QARecord] | list[TextDoc] | list[ChatRecord]
Adapter = Callable[[SourceConfig, Path | None, Rejects], Records]
"""``(src, resolved local path or None for Hub adapters, rejects) -> records``."""

ADAPTERS: dict[str, Adapter] = {
    "pubmedqa": pubmedqa.load_pubmedqa,
    "pubmedqa_hub": pubmedqa.load_pubmedqa_hub,
    "medmcqa": medmcqa.load_medmcqa,  # official JSON-lines, cop 1-based
    "medmcqa_hub": medmcqa.load_medmcqa_hub,  # openlifescienceai/medmcqa, cop 0-based
    "medqa": medqa.load_medqa,
    "medqa_hub": medqa.load_medqa_hub,
    "arc": arc.load_arc,
    "arc_hub": arc.load_arc_hub,
    "mmlu": mmlu.load_mmlu,
    "qa": qa.load_qa,  # a user's own bank: JSON / JSON-lines / CSV / Parquet through a `fields` mapping
    "qa_hub": qa.load_qa_hub,
    "chat": chat.load_chat,  # instruction data: alpaca, sharegpt or messages rows, trained through the chat template
    "text": text.load_text,
    "text_hub": text.load_text_hub,
}
if set(ADAPTERS) != ADAPTER_NAMES:  # a config validates names against ADAPTER_NAMES: the two lists must agree
    raise RuntimeError(f"medtune.data.registry.ADAPTERS and medtune.data.spec.ADAPTER_NAMES differ: "
                       f"{sorted(set(ADAPTERS) ^ ADAPTER_NAMES)}")

TEXT_STREAMS: dict[str, Callable[[SourceConfig, Path | None, Rejects], Iterator[TextDoc]]] = {
    "text": text.iter_text,
    "text_hub": text.iter_text_hub,
}
"""The text adapters' lazy readers: a replay source of any size is read document by document."""

TEXT_ADAPTERS = frozenset({"text", "text_hub"})
"""Adapters that return :class:`TextDoc`; all others return :class:`QARecord` (chat: :class:`ChatRecord`)."""
CHAT_ADAPTERS = frozenset({"chat"})
"""Adapters that return :class:`ChatRecord`: training sources rendered with the model's chat template."""
QA_ADAPTERS = frozenset(ADAPTERS) - TEXT_ADAPTERS - CHAT_ADAPTERS
HUB_ADAPTERS = frozenset(name for name in ADAPTERS if name.endswith("_hub"))
"""Adapters that read ``hub`` (a Hub id or a local directory in Hub layout) instead of ``path``."""
SUBJECT_ADAPTERS = frozenset({"mmlu", "medmcqa", "medmcqa_hub", "qa", "qa_hub"})
"""Adapters whose records carry ``meta["subject"]``, so ``subjects``/``exclude_subjects`` apply (``qa``: when
its ``fields`` map a subject)."""

def get_adapter(name: str) -> Adapter:
    if name not in ADAPTERS:
        raise ConfigError(f"unknown adapter {name!r} (valid: {', '.join(sorted(ADAPTERS))})")
    return ADAPTERS[name]


def resolve_path(src: SourceConfig, data_root: Path | None) -> Path | None:
    """The local file or directory for ``src`` (None for Hub adapters); it must exist."""
    if src.adapter in HUB_ADAPTERS:
        if src.hub is None:
            raise ConfigError(f"adapter {src.adapter!r} reads a Hub dataset: give 'hub', not 'path'")
        return None
    if src.path is None:
        raise ConfigError(f"adapter {src.adapter!r} reads local files: give 'path', not 'hub' "
                          f"(Hub adapters: {', '.join(sorted(HUB_ADAPTERS))})")
    path = Path(src.path).expanduser()
    if not path.is_absolute() and data_root is not None:
        path = Path(data_root) / path
    if not path.exists():
        relative = data_root is not None and not Path(src.path).is_absolute()
        hint = f" (relative to data_root {data_root})" if relative else ""
        raise DataError(path, None, None, f"file not found{hint}")
    return path


def filter_subjects(records: Records, src: SourceConfig) -> Records:
    """Apply ``subjects`` / ``exclude_subjects``; a requested subject that is absent is an error."""
    if src.subjects is None and src.exclude_subjects is None:
        return records
    if src.adapter not in SUBJECT_ADAPTERS:
        raise ConfigError(f"subjects/exclude_subjects apply only to adapters {', '.join(sorted(SUBJECT_ADAPTERS))}, "
                          f"not {src.adapter!r}")
    present = {r.meta.get("subject") for r in records}
    if src.subjects is not None:
        missing = sorted(set(src.subjects) - present)
        if missing:
            raise ConfigError(f"subjects: {', '.join(missing)} not found in source {src.label} "
                              f"(available: {', '.join(sorted(str(s) for s in present))})")
    keep = set(src.subjects) if src.subjects is not None else present
    drop = set(mmlu.MEDICAL_MMLU_SUBJECTS if src.exclude_subjects == "medical" else src.exclude_subjects or ())
    return [r for r in records if r.meta.get("subject") in keep - drop]  # type: ignore[return-value]


def fold_mask(ids: list[str], strata: list[str], share: float, salt: str) -> list[bool]:
    """True for the items in the held-out fold: per stratum, the round(share x n) smallest sha256(salt:id)."""
    import hashlib

    held = [False] * len(ids)
    by_stratum: dict[str, list[int]] = {}
    for i, s in enumerate(strata):
        by_stratum.setdefault(s, []).append(i)
    for members in by_stratum.values():
        ranked = sorted(members, key=lambda i: hashlib.sha256(f"{salt}:{ids[i]}".encode()).hexdigest())
        for i in ranked[: round(share * len(members))]:
            held[i] = True
    return held


def strata_of(records: Records, stratify: str | None) -> list[str]:
    """Each record's stratum for a fold: its subject, its answer, or one stratum for all."""
    if stratify == "subject":
        return [str(r.meta.get("subject", "")) for r in records]
    if stratify == "answer":
        return [str(getattr(r, "answer", "")) for r in records]
    return [""] * len(records)


def stratum_skew(whole: list[str], part: list[str]) -> float:
    """The largest difference between a stratum's share in ``part`` and in ``whole`` (0 = the same mix)."""
    w, p = Counter(whole), Counter(part)
    return max(abs(p[k] / max(len(part), 1) - w[k] / max(len(whole), 1)) for k in w.keys() | p.keys())


SKEW_WARN = 0.15
"""A ``limit`` after a stratified fold warns when a stratum's share moves by more than this."""


class SubsampleWarning(UserWarning):
    """A subsample whose mix differs from the fold it was taken from (see :func:`limit_records`)."""


def limit_records(records: Records, src: SourceConfig, path: Path | None) -> Records:
    """The first ``src.limit`` records. ``limit`` keeps file order, so after a fold stratified by
    answer or subject it is stratified only if the file is shuffled; a file sorted by label (the
    PubMedQA test file lists its "yes" items first) gives a subset of one label. That is warned
    about, with both mixes, rather than silently changed: a smaller fold share is the stratified way."""
    if src.limit is None or src.limit >= len(records):
        return records
    kept = records[: src.limit]
    if src.fold is not None and src.fold.stratify is not None:
        whole, part = strata_of(records, src.fold.stratify), strata_of(kept, src.fold.stratify)
        if stratum_skew(whole, part) > SKEW_WARN:
            def mix(rs: Records) -> str:  # answers by their label (A, B, ...) or text (yes, no, maybe)
                shown = [(r.option_labels or r.options)[r.answer] for r in rs] if src.fold.stratify == "answer" \
                    else strata_of(rs, src.fold.stratify)  # type: ignore[union-attr]
                return ", ".join(f"{k} {v}" for k, v in Counter(shown).most_common(6))

            warnings.warn(SubsampleWarning(
                f"source {src.label} ({path or src.hub}): limit {src.limit} keeps the first {src.limit} of the "
                f"{len(records)} fold items in file order, and their {src.fold.stratify} mix ({mix(kept)}) is not the "
                f"fold's ({mix(records)}); for a stratified subset of about that size use fold share "
                f"{src.fold.share * src.limit / len(records):.3g} without limit"), stacklevel=2)
    return kept


def apply_fold(records: Records, src: SourceConfig) -> Records:
    """Keep the held-out fold or the rest of it, as ``src.fold`` says (records keep their order)."""
    fold = src.fold
    if fold is None:
        return records
    if len({r.id for r in records}) != len(records):
        raise ConfigError(f"fold: source {src.label} has repeated item ids, so a fold by id is not well defined")
    strata = strata_of(records, fold.stratify)
    held = fold_mask([r.id for r in records], strata, fold.share, fold.salt)
    want = fold.take == "held_out"
    return [r for r, h in zip(records, held) if h == want]  # type: ignore[return-value]


def no_items(src: SourceConfig, path: Path | None, rejected: int) -> DataError:
    """The error for a source that yielded nothing (``rejected``: its invalid rows)."""
    why = f"all {rejected} rows were invalid (see the rejects)" if rejected else "the source is empty"
    return DataError(path if path is not None else str(src.hub), None, None, f"no items in source {src.label}: {why}")


def load_source(src: SourceConfig, data_root: Path | None, rejects: Rejects) -> Records:
    """Read one source with its adapter, then apply subject filters, the fold and ``limit``.

    A source that yields no items is an error naming it, and so is a filter or fold that empties it:
    an empty task would score NaN, an empty training source would silently train on the others.
    """
    adapter, path, before = get_adapter(src.adapter), resolve_path(src, data_root), len(rejects)
    records = adapter(src, path, rejects)
    if not records:
        raise no_items(src, path, len(rejects) - before)
    n = len(records)
    records = filter_subjects(records, src)
    if not records:
        raise ConfigError(f"subjects/exclude_subjects: selected 0 of {n} items of source {src.label} ({path or src.hub})")
    n = len(records)
    records = apply_fold(records, src)
    if not records:
        assert src.fold is not None
        raise ConfigError(f"fold (share {src.fold.share}, take {src.fold.take}): selected 0 of {n} items of source "
                          f"{src.label} ({path or src.hub}); use a larger share or a larger source")
    return limit_records(records, src, path)


def iter_source(src: SourceConfig, data_root: Path | None, rejects: Rejects) -> Iterator[TextDoc]:
    """A text source document by document (``limit`` stops the stream). A fold needs every id at
    once, so a folded source is read whole through :func:`load_source`."""
    if src.adapter not in TEXT_STREAMS:
        raise ConfigError(f"adapter {src.adapter!r} is not a text adapter (valid: {', '.join(sorted(TEXT_STREAMS))})")
    if src.fold is not None or src.subjects is not None or src.exclude_subjects is not None:
        return iter(load_source(src, data_root, rejects))  # type: ignore[arg-type]
    docs = TEXT_STREAMS[src.adapter](src, resolve_path(src, data_root), rejects)
    return islice(docs, src.limit) if src.limit is not None else docs
