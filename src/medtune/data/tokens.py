"""Tokenizing text in parallel batches into flat token arrays, and the on-disk token cache of a source.

Why not ``tokenizer(texts)``: it builds a Python ``BatchEncoding`` of lists (attention masks included)
for every batch, which is most of its cost. The fast tokenizer's own batch encoder
(``backend_tokenizer.encode_batch_fast``) runs on all cores in Rust threads and gives the same ids;
we turn them into one flat numpy array per batch at once. On the 2-core machine this is 2.4x
``tokenizer(texts)`` in one thread (see bench/JOURNAL.md §5). ``TOKENIZERS_PARALLELISM=false`` in the
environment is respected (one thread).

A replay source of any size is tokenized batch by batch into a :class:`TokenCache` (ids back to back
in a raw file plus per-document offsets), so only two batches of text are in memory at a time: the
one being tokenized (:func:`encodings`, in a background thread: it releases the GIL) and the one
being written (:func:`to_arrays`, which needs the GIL); see ``medtune.data.reading.stream_replay``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np


def bos_id(tokenizer: Any) -> int | None:
    """The BOS id where the tokenizer starts every encoding with it (as evaluation encodes contexts), else None:
    the packer then leads every training document with it (``medtune.data.packing``)."""
    bos = tokenizer.bos_token_id
    return bos if bos is not None and tokenizer.encode("a")[:1] == [bos] else None


BATCH_CHARS = 4 << 20
"""Characters of text per tokenizer batch (about 1M tokens): big enough to keep every thread busy."""


@contextlib.contextmanager
def rust_threads() -> Iterator[None]:
    """Let the tokenizer use its Rust thread pool inside the block, unless the user switched it off."""
    key = "TOKENIZERS_PARALLELISM"
    before = os.environ.get(key)
    if before is None:
        os.environ[key] = "true"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(key, None)


def encode(tokenizer: Any, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """``(ids (sum(lengths),) int64, lengths (len(texts),) int64)``: the ids of
    ``tokenizer(texts, add_special_tokens=False)``, back to back."""
    return to_arrays(encodings(tokenizer, texts))


def encodings(tokenizer: Any, texts: list[str]) -> list[Any]:
    """The first half of :func:`encode`: the fast tokenizer's ``Encoding`` objects, made in Rust threads
    with the GIL released (so another Python thread can work meanwhile), or a slow tokenizer's id lists."""
    if not texts:
        return []
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and hasattr(backend, "encode_batch_fast"):
        with rust_threads():
            return backend.encode_batch_fast(texts, add_special_tokens=False)
    return tokenizer(texts, add_special_tokens=False)["input_ids"]  # a slow (Python) tokenizer has no batch encoder


def to_arrays(encoded: list[Any]) -> tuple[np.ndarray, np.ndarray]:
    """The second half of :func:`encode`: ``Encoding`` objects (or id lists) as ``(ids, lengths)``; this
    half holds the GIL (it builds one Python int per token), about 60 ns a token."""
    lists = [getattr(e, "ids", e) for e in encoded]
    lengths = np.fromiter(map(len, lists), dtype=np.int64, count=len(lists))
    return np.fromiter(chain.from_iterable(lists), dtype=np.int64, count=int(lengths.sum())), lengths


@dataclass
class TokenCache:
    """One source's tokens on disk: ``ids`` back to back (a raw uint16/uint32 file)
    and ``offsets`` ``(n_docs + 1,)``, document ``i`` being ``ids[offsets[i]:offsets[i + 1]]``."""

    path: Path
    dtype: np.dtype
    offsets: np.ndarray

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def reader(self) -> CacheReader:
        return CacheReader(self)


class CacheReader:
    """Documents of a :class:`TokenCache` read with positioned reads (``os.pread``), not a memory map:
    the mix visits documents in random order, and every fault on a map brings in its neighbour pages
    too (the kernel's fault-around), so a map would hold most of the cache resident between releases."""

    def __init__(self, cache: TokenCache) -> None:
        self.cache = cache
        self._fd = os.open(cache.path, os.O_RDONLY)
        self._item = cache.dtype.itemsize

    def read(self, doc: int, n: int) -> np.ndarray:
        """The first ``n`` tokens of document ``doc``."""
        start = int(self.cache.offsets[doc])
        return np.frombuffer(os.pread(self._fd, n * self._item, start * self._item), dtype=self.cache.dtype)

    def all(self) -> np.ndarray:
        return self.read(0, int(self.cache.offsets[-1])) if len(self.cache.lengths) else np.zeros(0, self.cache.dtype)

    def close(self) -> None:
        os.close(self._fd)


class CacheWriter:
    """Append batches of documents to a :class:`TokenCache`, stopping at exactly ``max_tokens``."""

    def __init__(self, path: Path, dtype: np.dtype, max_tokens: int | None = None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.dtype, self.max_tokens = path, dtype, max_tokens
        self._fh = path.open("wb")
        self._lengths: list[np.ndarray] = []
        self.tokens = self.docs = 0

    @property
    def full(self) -> bool:
        return self.max_tokens is not None and self.tokens >= self.max_tokens

    def add(self, ids: np.ndarray, lengths: np.ndarray) -> None:
        """Documents ``lengths`` long, ``ids`` back to back; documents of no tokens are dropped here."""
        lengths = lengths[lengths > 0]  # an empty document has no ids, so ``ids`` is unchanged
        if self.max_tokens is not None:
            room = self.max_tokens - self.tokens
            ends = np.cumsum(lengths)
            if len(ends) and ends[-1] > room:
                k = int(np.searchsorted(ends, room))  # the document that crosses max_tokens
                before = int(ends[k - 1]) if k else 0
                lengths = np.append(lengths[:k], room - before) if room > before else lengths[:k]
                ids = ids[:room]
        self._fh.write(np.ascontiguousarray(ids, dtype=self.dtype).tobytes())
        self._lengths.append(lengths.astype(np.int64))
        self.tokens += int(lengths.sum())
        self.docs += len(lengths)

    def close(self) -> TokenCache:
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        lengths = np.concatenate(self._lengths) if self._lengths else np.zeros(0, np.int64)
        return TokenCache(self.path, self.dtype, np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))
