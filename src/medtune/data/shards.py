"""Packed blocks on disk: memory-mapped token shards, written one shard at a time, read per step.

This module owns the layout of a build's ``shards/`` directory (nobody else builds these paths)::

    shards/index.json        format, block size, dtypes, sources, groups, blocks per shard, counts
    shards/NNNNN.ids.npy     (blocks, block_size) uint16 token ids (uint32 when the vocabulary is larger)
    shards/NNNNN.mask.npy    (blocks, block_size) uint8 bits: ATTEND (real token, EOS included), ANSWER
    shards/NNNNN.source.npy  (blocks, block_size) int8 / int16 source index, NO_SOURCE on EOS and padding

Shards are ``.npy`` files so ``numpy.load(mmap_mode="r")`` maps them without reading them (nanoGPT's
``np.memmap`` of uint16 ids, with numpy's own header giving dtype and shape). Each file is written
under a temporary name, fsynced and renamed, and ``index.json`` is written last: a directory without
it is an unfinished build. Memory while writing is one shard's buffer, whatever the build's size.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medtune import atomic
from medtune.data.mapped import Mapped
from medtune.data.mixing import MixPlan
from medtune.data.packing import ANSWER, ATTEND, NO_SOURCE, doc_stream
from medtune.errors import MedtuneError

FORMAT = "medtune-shards/1"
INDEX = "index.json"
KINDS = ("ids", "mask", "source")


def ids_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every token id fits (vocabulary up to 65,536), else uint32."""
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def source_dtype(n_sources: int) -> np.dtype:
    return np.dtype(np.int8 if n_sources < 1 << 7 else np.int16 if n_sources < 1 << 15 else np.int32)


def _save_npy(path: Path, array: np.ndarray) -> None:
    """``np.save`` to a temporary name, fsync, rename: the shard file is whole or absent."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as fh:
        np.save(fh, array, allow_pickle=False)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


@dataclass
class ShardCounts:
    """What the written blocks hold (EOS and padding belong to no source; see medtune.data.packing)."""

    blocks: int
    shards: int
    source_tokens: dict[str, int]
    eos_tokens: int
    pad_tokens: int
    tail_dropped_tokens: int


class ShardWriter:
    """Append documents (tokens back to back plus per-document lengths), get full shards on disk.

    The stream rule (an EOS after each document, the answer span) is :func:`doc_stream`, the same as
    the in-memory :func:`medtune.data.packing.pack`; so are the tail rules (cut or pad the last block).
    """

    def __init__(self, root: Path, *, block_size: int, vocab_size: int, sources: list[str], groups: dict[str, str],
                 eos_id: int, pad_id: int | None, drop_tail: bool, shard_tokens: int, bos_id: int | None = None) -> None:
        if not drop_tail and pad_id is None:
            raise MedtuneError("shards: pad_id is required to pad the last block (or set drop_tail=True)")
        self.root, self.block_size, self.eos_id, self.pad_id, self.drop_tail = root, block_size, eos_id, pad_id, drop_tail
        self.bos_id = bos_id
        self.sources, self.groups = sources, groups
        self.ids_dtype, self.src_dtype = ids_dtype(vocab_size), source_dtype(len(sources))
        self.shard_blocks = max(1, shard_tokens // block_size)
        self._pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._pending_n = 0
        self._shards: list[int] = []
        self._source_tokens = np.zeros(len(sources), np.int64)
        self._eos = self._pad = self._tail = 0
        root.mkdir(parents=True, exist_ok=True)

    def add(self, tokens: np.ndarray, lengths: np.ndarray, source: np.ndarray, answer_start: np.ndarray) -> None:
        """Documents ``(sum(lengths),)`` tokens back to back; ``lengths``, ``source``, ``answer_start`` per document."""
        if len(lengths) == 0:
            return
        ids, src, answer = doc_stream(tokens, lengths, source, answer_start, self.eos_id, self.ids_dtype, self.bos_id)
        mask = (ATTEND | np.where(answer, ANSWER, 0)).astype(np.uint8)
        self._pending.append((ids, mask, src.astype(self.src_dtype)))
        self._pending_n += len(ids)
        shard = self.shard_blocks * self.block_size
        while self._pending_n >= shard:
            self._write(*self._take(shard))

    def _take(self, n: int) -> tuple[np.ndarray, ...]:
        """The first ``n`` pending positions as three arrays; the rest stays pending."""
        joined = [np.concatenate([p[k] for p in self._pending]) for k in range(3)]
        rest = tuple(a[n:].copy() for a in joined)  # a copy: a view would keep all of ``joined`` alive
        self._pending = [rest] if len(rest[0]) else []  # type: ignore[list-item]
        self._pending_n = len(rest[0])
        return tuple(a[:n] for a in joined)

    def _write(self, ids: np.ndarray, mask: np.ndarray, src: np.ndarray) -> None:
        shape = (-1, self.block_size)
        name = f"{len(self._shards):05d}"
        for kind, array in zip(KINDS, (ids, mask, src)):
            _save_npy(self.root / f"{name}.{kind}.npy", array.reshape(shape))
        # Counted source by source: no int64 copy of the shard (8 bytes a token).
        for i in range(len(self.sources)):
            self._source_tokens[i] += int(np.count_nonzero(src == i))
        self._eos += int(np.count_nonzero((src == NO_SOURCE) & (mask != 0)))  # padding has mask 0
        self._shards.append(len(ids) // self.block_size)

    def close(self) -> ShardCounts:
        """Write the last shard (its partial last block cut or padded) and the index."""
        if self._pending_n:
            ids, mask, src = self._take(self._pending_n)
            tail = len(ids) % self.block_size
            if tail and self.drop_tail:
                ids, mask, src, self._tail = ids[:-tail], mask[:-tail], src[:-tail], tail
            elif tail:
                self._pad = self.block_size - tail
                ids = np.concatenate([ids, np.full(self._pad, self.pad_id, self.ids_dtype)])
                mask = np.concatenate([mask, np.zeros(self._pad, np.uint8)])
                src = np.concatenate([src, np.full(self._pad, NO_SOURCE, self.src_dtype)])
            if len(ids):
                self._write(ids, mask, src)
        counts = ShardCounts(sum(self._shards), len(self._shards), {s: int(n) for s, n in zip(self.sources, self._source_tokens)},
                             self._eos, self._pad, self._tail)
        atomic.write_json(self.root / INDEX, {
            "format": FORMAT, "block_size": self.block_size, "ids_dtype": self.ids_dtype.name,
            "source_dtype": self.src_dtype.name, "sources": self.sources, "groups": self.groups,
            "eos_id": int(self.eos_id), "bos_id": self.bos_id,
            "shards": [{"name": f"{i:05d}", "blocks": n} for i, n in enumerate(self._shards)],
            "counts": counts.__dict__,
        })
        return counts


TokenGetter = Callable[[int, int, int], np.ndarray]
"""``(source index, document index, n tokens) -> (n,)`` the document's first n tokens."""


def write_plan(writer: ShardWriter, plan: MixPlan, get_tokens: TokenGetter, answer_starts: dict[int, np.ndarray],
               batch_docs: int = 4096) -> ShardCounts:
    """Stream the planned documents, in plan order and in batches, into ``writer``.

    ``answer_starts`` maps a source index to its documents' answer starts (sources absent: 0, the
    general text, where every token counts).
    """
    for lo in range(0, len(plan.doc), batch_docs):
        src, doc, n = (a[lo : lo + batch_docs] for a in (plan.source, plan.doc, plan.length))
        parts = [get_tokens(s, d, k) for s, d, k in zip(src.tolist(), doc.tolist(), n.tolist())]
        starts = np.array([answer_starts[s][d] if s in answer_starts else 0 for s, d in zip(src.tolist(), doc.tolist())],
                          dtype=np.int64)
        writer.add(np.concatenate(parts) if parts else np.zeros(0, np.int64), n, src, starts)
    return writer.close()


class Blocks:
    """The packed blocks of a build, memory-mapped: :meth:`rows` reads only the blocks asked for."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        index_path = self.root / INDEX
        if not index_path.is_file():
            raise MedtuneError(f"{self.root}: no {INDEX}; not a finished data build (run `medtune data build`)")
        index = json.loads(index_path.read_text())
        if index.get("format") != FORMAT:
            raise MedtuneError(f"{index_path}: format {index.get('format')!r}, expected {FORMAT!r}")
        self.index = index
        self.block_size: int = index["block_size"]
        self.sources: list[str] = index["sources"]
        self.eos_id: int | None = index.get("eos_id")
        """The document separator (None in builds from before it was recorded: every real token of no source is one)."""
        self._files = {k: [Mapped(self.root / f"{s['name']}.{k}.npy") for s in index["shards"]] for k in KINDS}
        maps = {k: [m.array for m in files] for k, files in self._files.items()}
        for k, arrays in maps.items():
            for s, a in zip(index["shards"], arrays):
                if a.shape != (s["blocks"], self.block_size):
                    raise MedtuneError(f"{self.root / (s['name'] + '.' + k + '.npy')}: shape {a.shape}, "
                                       f"index says ({s['blocks']}, {self.block_size})")
        self._maps = maps
        self._starts = np.cumsum([0] + [s["blocks"] for s in index["shards"]])  # first block of each shard

    def __len__(self) -> int:
        return int(self._starts[-1])

    def _gather(self, kind: str, idx: np.ndarray) -> np.ndarray:
        idx = np.asarray(idx, dtype=np.int64)
        if len(idx) and (idx.min() < 0 or idx.max() >= len(self)):
            raise MedtuneError(f"{self.root}: block index out of range 0..{len(self) - 1}")
        shard = np.searchsorted(self._starts, idx, side="right") - 1
        rows = [self._maps[kind][s][i - self._starts[s]] for s, i in zip(shard.tolist(), idx.tolist())]
        out = np.stack(rows) if rows else np.zeros((0, self.block_size), np.int64)  # a copy
        for s in set(shard.tolist()):
            self._files[kind][s].release()
        return out

    def rows(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        """``input_ids``, ``attention_mask``, ``answer_mask`` (int64) and ``token_source`` of blocks ``idx``,
        each ``(len(idx), block_size)``, in the order asked. Copies: the pages read are let go after."""
        mask = self._gather("mask", idx)
        return {"input_ids": self._gather("ids", idx).astype(np.int64),
                "attention_mask": (mask & ATTEND).astype(np.int64), "answer_mask": ((mask & ANSWER) > 0).astype(np.int64),
                "token_source": self._gather("source", idx).astype(np.int32)}

    def all(self) -> dict[str, np.ndarray]:
        """Every block at once (small builds and tests; a large build should use :meth:`rows`)."""
        return self.rows(np.arange(len(self)))

    def shard_files(self) -> Iterator[Path]:
        for s in self.index["shards"]:
            for k in KINDS:
                yield self.root / f"{s['name']}.{k}.npy"
