"""The data stage's reading: every source read, the leakage guard applied, the text tokenized.

QA sources (training and evaluation) are small and stay in memory as documents. Replay sources
can be a billion tokens: each is read document by document (:func:`medtune.data.registry.iter_source`,
a Hub dataset streamed with ``streaming: true``), tokenized in parallel batches
(:func:`medtune.data.tokens.encode`) and appended to a token cache on disk, stopping at the source's
``max_tokens`` / ``limit``. A progress bar shows tokens/s.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from medtune.data.adapters.chat import check_template, train_texts
from medtune.data.config import DataConfig
from medtune.data.decontam import DecontamReport, Screen
from medtune.data.leakage import GuardReport, guard
from medtune.data.mixing import Doc
from medtune.data.prompts import eval_prompt, get_train_template, training_text
from medtune.data.records import QARecord
from medtune.data.registry import CHAT_ADAPTERS, iter_source, load_source, no_items, resolve_path
from medtune.data.rejects import Rejects
from medtune.data.shards import ids_dtype
from medtune.data.spec import SourceConfig
from medtune.data.tokens import BATCH_CHARS, CacheWriter, TokenCache, encode, encodings, to_arrays

@dataclass
class SourceStats:
    role: Literal["train", "replay", "eval"]
    name: str
    adapter: str
    location: str
    items: int
    tokens: int
    labels: dict[str, int] = field(default_factory=dict)
    sha256: str | None = None


@dataclass
class Loaded:
    """Every source read and tokenized: domain documents in memory, replay sources as token caches."""

    sources: list[SourceStats]
    guard: GuardReport
    rejects: Rejects
    domain: dict[str, list[Doc]]
    general: dict[str, TokenCache]
    decontam: DecontamReport | None = None
    """What the n-gram check of training and replay documents against the evaluation splits found."""

    def lengths(self) -> dict[str, np.ndarray]:
        """Source -> (n_docs,) tokens per document, domain sources first (the mix's input)."""
        out = {s: np.fromiter((len(d.tokens) for d in docs), np.int64, len(docs)) for s, docs in self.domain.items()}
        return out | {s: c.lengths for s, c in self.general.items()}

    def groups(self) -> dict[str, str]:
        return dict.fromkeys(self.domain, "domain") | dict.fromkeys(self.general, "general")


def label_counts(records: Sequence[QARecord]) -> dict[str, int]:
    """Answer distribution: the answer words for PubMedQA, the option letters otherwise."""
    counts: Counter[str] = Counter()
    order: dict[str, int] = {}
    for r in records:
        names = r.options if r.dataset == "pubmedqa" else (r.option_labels or tuple("ABCDEFGHIJ"[: len(r.options)]))
        counts[names[r.answer]] += 1
        for i, n in enumerate(names):
            order.setdefault(n, i)
    return {k: counts[k] for k in sorted(counts, key=lambda k: (order[k], k))}


def _sha256(path: Path) -> str | None:
    if not path.is_file():
        return None
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _location(src: SourceConfig, root: Path) -> Path | None:
    if src.path is None:
        return None
    p = Path(src.path)
    return p if p.is_absolute() else root / p


def _tokenize(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    ids, lengths = encode(tokenizer, texts)
    return [a.tolist() for a in np.split(ids, np.cumsum(lengths)[:-1])] if texts else []


def _text_batches(docs: Iterator[Any], room: Callable[[], int | None]) -> Iterator[list[Any]]:
    """Documents in batches of about BATCH_CHARS characters; smaller near a ``max_tokens`` end (``room()``
    tokens left), so a capped stream reads little past its cap."""
    batch: list[Any] = []
    size = 0
    for d in docs:
        batch.append(d)
        size += len(d.text)
        left = room()
        if size >= (BATCH_CHARS if left is None else min(BATCH_CHARS, max(4096, 8 * left))):
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def stream_replay(src: SourceConfig, root: Path, rejects: Rejects, tokenizer: Any, path: Path, bar: Any,
                  screen: Screen | None = None, name: str | None = None) -> TokenCache:
    """Read, tokenize and cache one replay source; stops at ``src.max_tokens`` (and ``src.limit``).
    Each batch is checked against the evaluation splits by ``screen`` (decontamination, reported under
    ``name``, the source's unique name, by default its label) before it is
    tokenized, so a dropped document costs no tokens of the cap.

    Batch ``k + 1`` is tokenized in a background thread (the Rust encoder releases the GIL and uses
    every core) while this thread turns batch ``k`` into arrays, writes it and reads the batch after:
    those Python steps would otherwise leave the tokenizer's cores idle. Near ``max_tokens`` it reads
    ahead only while the batch in flight cannot fill the cap (:class:`_ReadAhead`), so the source is
    read no further than without the thread (unless a batch has more than twice the tokens per
    character of the text before it; the cache is exact either way)."""
    writer = CacheWriter(path, ids_dtype(len(tokenizer)), src.max_tokens)
    ahead = _ReadAhead(src.max_tokens, writer)
    rejected = len(rejects)
    batches = _text_batches(iter_source(src, root, rejects), ahead.room)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="medtune-tokenize") as pool:
        while not writer.full:
            if ahead.in_flight is not None and not ahead.may_read_on():
                ahead.take(bar)
                continue
            docs = next(batches, None)
            if docs is None:
                break
            texts = [d.text for d in (screen.check(name or src.label, docs) if screen is not None else docs)]
            if not texts:
                continue
            submitted = pool.submit(encodings, tokenizer, texts)
            if ahead.in_flight is not None:
                ahead.take(bar)  # while the new batch is being tokenized
            ahead.in_flight = _Batch(submitted, sum(map(len, texts)), len(texts))
        if ahead.in_flight is not None and not writer.full:
            ahead.take(bar)
    cache = writer.close()
    if screen is not None:
        screen.raise_if_found(name or src.label)
    if len(cache.lengths) == 0:  # as load_source: an empty replay source would silently replay nothing
        raise no_items(src, resolve_path(src, root), len(rejects) - rejected)
    return cache


@dataclass
class _Batch:
    encoded: Future[list[Any]]
    chars: int
    docs: int


@dataclass
class _ReadAhead:
    """The one batch being tokenized in the background, and whether reading past it is safe.

    With a cap, the next batch is read only while the batch in flight cannot reach it: its tokens are
    taken to be at most twice the source's tokens per character so far, plus one a document. Far from
    the cap that always leaves room; near it, the batch in flight is written first. Before the first
    batch is done nothing is known, so it is written before the second is read. The bound only decides
    how far the source is read: the cache holds exactly ``max_tokens`` either way."""

    cap: int | None
    writer: CacheWriter
    in_flight: _Batch | None = None
    chars: int = 0
    tokens: int = 0

    def _bound(self) -> int:
        b = self.in_flight
        return 0 if b is None else 2 * b.chars * self.tokens // max(self.chars, 1) + b.docs

    def room(self) -> int | None:
        """Tokens the cap leaves beyond what is written and the most the batch in flight may add."""
        return None if self.cap is None else self.cap - self.writer.tokens - self._bound()

    def may_read_on(self) -> bool:
        left = self.room()
        return left is None or (self.chars > 0 and left > 0)

    def take(self, bar: Any) -> None:
        """Wait for the batch in flight and write it to the cache."""
        assert self.in_flight is not None
        batch, self.in_flight = self.in_flight, None
        ids, lengths = to_arrays(batch.encoded.result())
        self.chars += batch.chars
        self.tokens += len(ids)
        before = self.writer.tokens
        self.writer.add(ids, lengths)
        bar.update(self.writer.tokens - before)


def load(cfg: DataConfig, tokenizer: Any, cache_dir: Path) -> Loaded:
    """Read every source, guard training against evaluation, tokenize; replay goes to ``cache_dir``."""
    from tqdm.auto import tqdm

    root = cfg.root()
    rejects = Rejects(skip_invalid=cfg.skip_invalid)
    template = get_train_template(cfg.template)
    stats: list[SourceStats] = []

    names = cfg.source_names()

    def describe(role: str, src: SourceConfig, name: str, items: int, tokens: int, labels: dict[str, int]) -> None:
        path = _location(src, root)
        stats.append(SourceStats(role, name, src.adapter, str(path) if path else f"hub:{src.hub}", items,  # type: ignore[arg-type]
                                 tokens, labels, _sha256(path) if path else None))

    # (name, records) pairs, not a dict: every eval set is guarded, whatever it is called
    eval_sets: list[tuple[str, list[QARecord]]] = []
    for name, src in zip(names.eval, cfg.eval):
        recs: list[QARecord] = load_source(src, root, rejects)  # type: ignore[assignment]
        eval_sets.append((name, recs))
        # Tokens of the zero-shot evaluation prompt: what scoring the split costs.
        describe("eval", src, name, len(recs),
                 sum(map(len, _tokenize(tokenizer, [eval_prompt(r).context for r in recs]))), label_counts(recs))

    train_records: list[list[QARecord]] = [load_source(src, root, rejects) for src in cfg.train]  # type: ignore[misc]
    report = guard([r for recs in train_records for r in recs if isinstance(r, QARecord)], eval_sets, drop=cfg.drop_leaked)
    if any(src.adapter in CHAT_ADAPTERS for src in cfg.train):
        check_template(tokenizer, cfg.chat_template)
    kept_ids = {id(r) for r in report.kept}
    screen = Screen(cfg.decontamination, eval_sets, drop=cfg.drop_leaked) \
        if cfg.decontamination.enabled and eval_sets else None
    domain: dict[str, list[Doc]] = {}
    for name, src, all_recs in zip(names.train, cfg.train, train_records):
        chat = src.adapter in CHAT_ADAPTERS  # conversations: one document per assistant turn, no answer labels
        recs = [r for r in all_recs if chat or id(r) in kept_ids]
        texts = train_texts(recs, tokenizer) if chat else [training_text(r, template) for r in recs]  # type: ignore[arg-type]
        if screen is not None:  # a training item that quotes an evaluation item (beyond its question string)
            clean = {id(t) for t in screen.check_all(name, texts)}
            recs = recs if chat else [r for r, t in zip(recs, texts) if id(t) in clean]
            texts = [t for t in texts if id(t) in clean]
            screen.raise_if_found(name)
        # Prompt and answer are tokenized apart (the answer starts with a space, a natural token
        # boundary) so answer-only loss knows where the answer begins.
        prompts = _tokenize(tokenizer, [t.prompt for t in texts])
        answers = _tokenize(tokenizer, [t.answer for t in texts])
        domain[name] = [Doc(name, "domain", p + a, t.id, answer_start=len(p)) for t, p, a in zip(texts, prompts, answers)]
        describe("train", src, name, len(texts) if chat else len(recs), sum(len(d.tokens) for d in domain[name]),
                 {} if chat else label_counts(recs))

    general: dict[str, TokenCache] = {}
    caps = [s.max_tokens for s in cfg.replay]
    with tqdm(total=sum(caps) if caps and None not in caps else None, desc="replay tokens", unit="tok",  # type: ignore[arg-type]
              unit_scale=True, disable=None, dynamic_ncols=True) as bar:
        for i, (name, src) in enumerate(zip(names.replay, cfg.replay)):
            cache = general[name] = stream_replay(src, root, rejects, tokenizer, cache_dir / f"{i:03d}.ids", bar,
                                                  screen, name)
            describe("replay", src, name, len(cache.lengths), int(cache.offsets[-1]), {})
    return Loaded(stats, report, rejects, domain, general, screen.report if screen is not None else None)
