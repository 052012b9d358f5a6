"""Replay mixing: add general ("replay") text to the domain text by token share.

Inputs are tokenized documents grouped by source; each source belongs to the ``domain`` or the
``general`` group. With domain token count ``D`` and target general share ``s``, the general group's
budget is ``G = round(s / (1 - s) * D)`` tokens, so general tokens make up ``s`` of the mix.
``s = 1`` is the general-text *control*: ``G = D`` general tokens and no domain token, the same token
budget as the domain text alone, so a model trained on it separates what training on any text does
from what the domain text does.
Shares are counted in document tokens (no EOS; see :mod:`medtune.data.packing`).

Strategies (:data:`STRATEGIES`):

* ``fixed_share``: every domain document once; ``G`` split across general sources in proportion to
  their size; each general source down-sampled (a seeded random subset of documents) or up-sampled
  (whole extra passes, each in a fresh seeded order).
* ``temperature``: like ``fixed_share``, but in both groups a group's budget is split with
  ``p_i ∝ n_i ** (1 / T)`` (``n_i`` = tokens of source ``i``, ``T`` = ``mix_temperature``), so small sources are up-sampled and
  large ones down-sampled; the domain total stays ``D``.
* ``concat``: no resampling: domain documents in order, then general documents in source and file
  order until ``G`` is reached. Not shuffled (the trainer's block shuffle mixes); when general text
  runs out the mix realises less and says so in ``warnings``.

A source's last document is cut when needed to hit its allocation exactly; the cut-off tokens are
reported in ``cut_tokens``. Fixed and temperature mixes are shuffled with ``seed``.

The report's ``warnings`` also name a general source repeated more than :data:`REPLAY_EPOCHS_WARN`
times, and general sources left unused because the share asks for no general tokens.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np

from medtune.errors import MedtuneError

REPLAY_EPOCHS_WARN = 10.0
"""A general source repeated more than this many times (``epochs``) is warned about. Repeated tokens
are worth less than fresh ones and soon worth little (Muennighoff et al., 2023, "Scaling
Data-Constrained Language Models": about 4 epochs are nearly as good as new data, returns fall off
fast beyond that), and a small text repeated hundreds of times is memorised rather than replayed; 10
leaves room for ordinary up-sampling of a modest replay set while catching a share that a tiny source
cannot honestly fill."""

Group = Literal["domain", "general"]
GROUPS: tuple[Group, ...] = ("domain", "general")


@dataclass(frozen=True)
class Doc:
    """One tokenized document."""

    source: str
    group: Group
    tokens: list[int]
    """Token ids, no BOS/EOS (packing adds the EOS)."""
    id: str = ""
    answer_start: int = 0
    """Index of the first answer token (answer-only loss trains on tokens from here on, plus the EOS);
    0 for general text, where every token counts."""


@dataclass
class MixReport:
    """What a mix asked for and what it realised (token counts exclude EOS)."""

    strategy: str
    seed: int
    general_share_target: float
    general_share_realised: float
    available_tokens: dict[str, int]
    """Tokens per source before mixing."""
    target_tokens: dict[str, int]
    """Tokens asked of each source (``concat``: the general budget still open when it was reached)."""
    tokens: dict[str, int]
    """Tokens per source in the mix."""
    docs: dict[str, int]
    """Documents per source in the mix (a repeated document counts each time, a cut one once)."""
    epochs: dict[str, float]
    """``tokens / available_tokens``: above 1 means up-sampled."""
    passes: dict[str, int]
    """Passes over the source started (1: no document repeated; 3: up to three copies of each)."""
    cut_tokens: dict[str, int]
    """Tokens cut off the last document of each source to hit its allocation (left out of the mix)."""
    warnings: list[str] = field(default_factory=list)

    @property
    def upsampled(self) -> dict[str, int]:
        """Per source: extra passes beyond the first (0 when nothing was repeated)."""
        return {s: max(p - 1, 0) for s, p in self.passes.items()}


@dataclass
class MixResult:
    docs: list[Doc]
    report: MixReport


@dataclass
class MixPlan:
    """A mix as positions, not tokens: which document of which source, how many of its tokens, in
    training order. The in-memory :func:`mix` and the streamed shard build both apply it."""

    sources: list[str]
    """Source names; ``source`` indexes into this list."""
    source: np.ndarray
    """(n_entries,) int32 source index of each mixed document."""
    doc: np.ndarray
    """(n_entries,) int64 document index inside its source."""
    length: np.ndarray
    """(n_entries,) int64 tokens taken from the document's start (less than its length when cut)."""
    report: MixReport


@dataclass
class _Taken:
    """What one source contributed: document indices and token counts, asked-for and realised tokens."""

    doc: np.ndarray
    length: np.ndarray
    target: int
    tokens: int
    passes: int
    cut_tokens: int


Lengths = Mapping[str, np.ndarray]
"""Source name -> (n_docs,) int64 token count of each document."""
Strategy = Callable[[Lengths, Mapping[str, str], int, np.random.Generator, float], tuple[dict[str, _Taken], list[str]]]
"""``(lengths_by_source, groups, general budget G, rng, mix_temperature) -> (taken per source, warnings)``."""


def general_budget(domain_tokens: int, share: float) -> int:
    """``G`` such that ``G / (D + G) == share`` (rounded to whole tokens); at ``share == 1`` (the control,
    general text in place of the domain text) ``G = D``."""
    return domain_tokens if share >= 1.0 else round(share / (1.0 - share) * domain_tokens)


def allocate(budget: int, sizes: Mapping[str, int], exponent: float = 1.0) -> dict[str, int]:
    """Split ``budget`` over sources with ``p_i ∝ sizes[i] ** exponent``, summing exactly to ``budget``.

    Largest-remainder rounding; ties go to the earlier source. Empty sources get 0.
    """
    weights = {s: (n ** exponent if n > 0 else 0.0) for s, n in sizes.items()}
    total = sum(weights.values())
    if total == 0:
        return dict.fromkeys(sizes, 0)
    exact = {s: budget * w / total for s, w in weights.items()}
    out = {s: math.floor(x) for s, x in exact.items()}
    short = budget - sum(out.values())
    by_remainder = sorted(exact, key=lambda s: -(exact[s] - out[s]))  # stable: ties keep order
    for s in by_remainder[:short]:
        out[s] += 1
    return out


def take_tokens(lengths: np.ndarray, target: int, rng: np.random.Generator | None) -> _Taken:
    """Documents adding up to exactly ``target`` tokens, cutting the last one.

    With ``rng``: passes over the documents in fresh random orders (one pass = a random subset when
    ``target`` is smaller than the source; more passes repeat whole documents). Without: file order,
    a single pass, so fewer tokens come back when the source is too small. Empty documents are skipped.
    Vectorised per pass (a cumulative sum), so a source of millions of documents costs no Python loop.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    docs: list[np.ndarray] = []
    taken: list[np.ndarray] = []
    remaining, passes, cut = target, 0, 0
    while remaining > 0 and lengths.sum() > 0:
        passes += 1
        order = rng.permutation(len(lengths)) if rng is not None else np.arange(len(lengths))
        order = order[lengths[order] > 0]
        n = lengths[order]
        ends = np.cumsum(n)
        if ends[-1] <= remaining:  # the whole pass fits
            docs.append(order)
            taken.append(n)
            remaining -= int(ends[-1])
        else:
            k = int(np.searchsorted(ends, remaining))  # first document that reaches the target
            part = n[: k + 1].copy()
            part[k] = remaining - (int(ends[k - 1]) if k else 0)
            cut, remaining = int(n[k] - part[k]), 0
            docs.append(order[: k + 1])
            taken.append(part)
        if rng is None:
            break
    return _Taken(_cat(docs), _cat(taken), target=target, tokens=target - remaining, passes=passes, cut_tokens=cut)


def _cat(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)


def keep_all(lengths: np.ndarray) -> _Taken:
    """Every document once, in order."""
    lengths = np.asarray(lengths, dtype=np.int64)
    n = int(lengths.sum())
    return _Taken(np.arange(len(lengths), dtype=np.int64), lengths, target=n, tokens=n, passes=1 if n else 0,
                  cut_tokens=0)


def _sizes(lengths: Lengths, groups: Mapping[str, str], group: str) -> dict[str, int]:
    return {s: int(np.sum(n)) for s, n in lengths.items() if groups[s] == group}


def _resample(lengths: Lengths, alloc: Mapping[str, int], rng: np.random.Generator) -> dict[str, _Taken]:
    return {s: take_tokens(lengths[s], n, rng) for s, n in alloc.items()}


def _fixed_share(lengths: Lengths, groups: Mapping[str, str], budget: int,
                 rng: np.random.Generator, mix_temperature: float) -> tuple[dict[str, _Taken], list[str]]:
    taken = {s: keep_all(lengths[s]) for s in _sizes(lengths, groups, "domain")}
    taken |= _resample(lengths, allocate(budget, _sizes(lengths, groups, "general")), rng)
    return taken, []


def _temperature(lengths: Lengths, groups: Mapping[str, str], budget: int,
                 rng: np.random.Generator, mix_temperature: float) -> tuple[dict[str, _Taken], list[str]]:
    domain = _sizes(lengths, groups, "domain")
    exponent = 1.0 / mix_temperature
    taken = _resample(lengths, allocate(sum(domain.values()), domain, exponent), rng)
    taken |= _resample(lengths, allocate(budget, _sizes(lengths, groups, "general"), exponent), rng)
    return taken, []


def _concat(lengths: Lengths, groups: Mapping[str, str], budget: int,
            rng: np.random.Generator, mix_temperature: float) -> tuple[dict[str, _Taken], list[str]]:
    taken = {s: keep_all(lengths[s]) for s in _sizes(lengths, groups, "domain")}
    remaining = budget
    for s in _sizes(lengths, groups, "general"):
        taken[s] = take_tokens(lengths[s], remaining, None)
        remaining -= taken[s].tokens
    warnings = []
    if remaining > 0:
        warnings.append(f"concat: general text ran out: realised {budget - remaining} of {budget} general "
                        f"tokens; use strategy fixed_share or temperature to up-sample, or add general text")
    return taken, warnings


STRATEGIES: dict[str, Strategy] = {
    "fixed_share": _fixed_share,
    "temperature": _temperature,
    "concat": _concat,
}


def get_strategy(name: str) -> Strategy:
    if name not in STRATEGIES:
        raise MedtuneError(f"unknown mixing strategy {name!r} (valid: {', '.join(STRATEGIES)})")
    return STRATEGIES[name]


def _check_docs(docs_by_source: Mapping[str, Sequence[Doc]], groups: Mapping[str, str]) -> None:
    for source, docs in docs_by_source.items():
        group = groups.get(source)
        if group not in GROUPS:
            raise MedtuneError(f"source {source!r}: group must be one of {', '.join(GROUPS)}, got {group!r}")
        bad = next((d for d in docs if d.source != source or d.group != group), None)
        if bad is not None:
            raise MedtuneError(f"source {source!r} ({group}) holds a document labelled "
                               f"{bad.source!r} ({bad.group}), id {bad.id!r}")


def _check(lengths: Lengths, groups: Mapping[str, str], general_share: float, mix_temperature: float) -> None:
    if not (0.0 <= general_share <= 1.0):
        raise MedtuneError(f"general_share must be in [0, 1], got {general_share}")
    if not (mix_temperature > 0 and math.isfinite(mix_temperature)):
        raise MedtuneError(f"mix_temperature must be a positive number, got {mix_temperature}")
    _check_docs(dict.fromkeys(lengths, ()), groups)


def mix_plan(lengths: Lengths, groups: Mapping[str, str], general_share: float, strategy: str, seed: int,
             mix_temperature: float = 2.0) -> MixPlan:
    """Plan a mix from document lengths alone, so general tokens are ``general_share`` of the result."""
    run = get_strategy(strategy)
    _check(lengths, groups, general_share, mix_temperature)
    domain_tokens = sum(_sizes(lengths, groups, "domain").values())
    general_tokens = sum(_sizes(lengths, groups, "general").values())
    if domain_tokens == 0:
        raise MedtuneError("no domain tokens to mix: the general share is relative to the domain text")
    budget = general_budget(domain_tokens, general_share)
    if budget > 0 and general_tokens == 0 and strategy != "concat":
        raise MedtuneError(f"general_share {general_share} needs {budget} general tokens but the general "
                           "sources are empty; set general_share: 0 or add general text")
    rng = np.random.default_rng(seed)
    taken, warnings = run(lengths, groups, budget, rng, mix_temperature)
    if general_share >= 1.0:  # the control: the domain text only sets the budget
        if general_tokens == 0:
            raise MedtuneError("general_share 1 (the general-text control) needs general sources to train on")
        taken |= {s: _Taken(_cat([]), _cat([]), target=0, tokens=0, passes=0, cut_tokens=0)
                  for s in _sizes(lengths, groups, "domain")}
    names = list(lengths)
    index = {s: i for i, s in enumerate(names)}
    source = np.concatenate([np.full(len(t.doc), index[s], np.int32) for s, t in taken.items()] or [np.zeros(0, np.int32)])
    doc, length = _cat([t.doc for t in taken.values()]), _cat([t.length for t in taken.values()])
    if strategy != "concat":
        perm = rng.permutation(len(doc))
        source, doc, length = source[perm], doc[perm], length[perm]
    report = _report(lengths, groups, taken, strategy, seed, general_share, warnings)
    report.warnings += replay_warnings(report, groups, budget)
    return MixPlan(names, source, doc, length, report)


def mix(docs_by_source: Mapping[str, Sequence[Doc]], groups: Mapping[str, str], general_share: float,
        strategy: str, seed: int, mix_temperature: float = 2.0) -> MixResult:
    """Mix domain and general documents in memory: :func:`mix_plan`, then the planned documents."""
    get_strategy(strategy)
    _check_docs(docs_by_source, groups)
    lengths = {s: np.fromiter((len(d.tokens) for d in docs), np.int64, len(docs)) for s, docs in docs_by_source.items()}
    plan = mix_plan(lengths, groups, general_share, strategy, seed, mix_temperature)
    out = []
    for s, i, n in zip(plan.source.tolist(), plan.doc.tolist(), plan.length.tolist()):
        d = docs_by_source[plan.sources[s]][i]
        out.append(d if n == len(d.tokens) else replace(d, tokens=list(d.tokens[:n])))
    return MixResult(out, plan.report)


def replay_warnings(report: MixReport, groups: Mapping[str, str], budget: int) -> list[str]:
    """General sources given but unused (a budget of 0 general tokens), or repeated more than
    :data:`REPLAY_EPOCHS_WARN` times to fill the budget."""
    general = [s for s in report.available_tokens if groups[s] == "general" and report.available_tokens[s] > 0]
    if general and budget == 0:
        return [f"general_share {report.general_share_target} asks for no general tokens, so replay source(s) "
                f"{', '.join(general)} ({sum(report.available_tokens[s] for s in general)} tokens) are not used; "
                "raise general_share to mix them in, or leave them out"]
    return [f"replay source {s} is repeated {report.epochs[s]:.1f} times (epochs; the warning threshold is "
            f"{REPLAY_EPOCHS_WARN:g}) to fill general_share {report.general_share_target}: its "
            f"{report.available_tokens[s]} tokens are memorised rather than replayed; add general text or lower general_share"
            for s in general if report.epochs[s] > REPLAY_EPOCHS_WARN]


def _report(lengths: Lengths, groups: Mapping[str, str], taken: Mapping[str, _Taken],
            strategy: str, seed: int, share: float, warnings: list[str]) -> MixReport:
    available = {s: int(np.sum(n)) for s, n in lengths.items()}
    tokens = {s: taken[s].tokens for s in lengths}
    total = sum(tokens.values())
    general = sum(n for s, n in tokens.items() if groups[s] == "general")
    return MixReport(
        strategy=strategy, seed=seed, general_share_target=share,
        general_share_realised=general / total if total else 0.0,
        available_tokens=available, target_tokens={s: taken[s].target for s in lengths}, tokens=tokens,
        docs={s: len(taken[s].doc) for s in lengths},
        epochs={s: tokens[s] / available[s] if available[s] else 0.0 for s in lengths},
        passes={s: taken[s].passes for s in lengths},
        cut_tokens={s: taken[s].cut_tokens for s in lengths},
        warnings=warnings,
    )
